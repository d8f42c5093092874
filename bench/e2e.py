"""End-to-end benchmark: N notifications published to JetStream, through a
running engine (Ingestor → UserShards → ChannelShards → Recorder), delivered to
loopback sinks running in their own processes, tracked in PostgreSQL.

    python -m bench.e2e --n 100000                    # backlog: throughput
    python -m bench.e2e --n 20000 --rate 2000         # paced: latency under load

Prints notifications/s and latency percentiles from the JetStream publish
timestamp to (a) the provider call's completion and (b) the tracking row's
commit. NATS and PostgreSQL: TIDINGS_NATS_URL / TIDINGS_DATABASE_URL, else
embedded under engine.home. Bounded: stops after --timeout seconds whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid

import msgspec
import uvloop
from rich.console import Console
from rich.table import Table

from engine import config, streams
from engine.embedded import free_port
from engine.demo import watch_rows
from engine.runtime import Engine
from engine.sinks import SinkProcess
from engine.tuning import with_provider_settings, with_section

console = Console()
SECRET = "bench-secret"

STATS_SQL = """
SELECT count(*) AS rows,
  extract(epoch FROM max(completed_at) - min(accepted_at)) AS wall_s,
  extract(epoch FROM max(created_at) - min(accepted_at)) AS wall_durable_s,
  percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - accepted_at)) AS sent,
  percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM created_at - accepted_at)) AS durable,
  max(extract(epoch FROM created_at - accepted_at)) AS durable_max
FROM delivery_tracking
"""


def bench_config(args, hook_port: int, smtp_port: int) -> config.Config:
    run = uuid.uuid4().hex[:8]
    cfg = config.load(profile="bench", overrides={
        "nats": {"prefix": f"bench{run}", "stream": f"BENCH{run}", "consumer": f"bench{run}"},
        "database": {"schema": f"bench_{run}"},
    })
    cfg = with_section(cfg, "engine", user_shards=args.user_shards)
    cfg = with_provider_settings(cfg, "webhook", url=f"http://127.0.0.1:{hook_port}/hook", secret=SECRET)
    cfg = with_provider_settings(cfg, "email", host="127.0.0.1", port=smtp_port)
    channels = {name: ch for name, ch in cfg.channels.items() if name in args.channels}
    return msgspec.structs.replace(cfg, channels=channels)


async def publish(engine: Engine, n: int, rate: float, channels: list[str], users: int) -> float:
    """Publish n notifications (paced at ``rate``/s when > 0); returns seconds taken."""
    js, nats_cfg = engine.js, engine.cfg.nats
    subject = streams.notify_subject(nats_cfg, "job_alerts")
    enc = msgspec.json.Encoder()
    started = time.perf_counter()
    futures = []
    for i in range(n):
        body = {"id": str(uuid.uuid4()), "user_id": f"b{i % users}", "category": "job_alerts",
                "channels": channels, "content": {"subject": f"Job {i}", "text": "A new job matches your search."}}
        futures.append(await js.publish_async(subject, enc.encode(body)))
        if rate > 0 and i % 100 == 99:
            ahead = (i + 1) / rate - (time.perf_counter() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    await asyncio.gather(*futures)
    return time.perf_counter() - started


async def seed_users(engine: Engine, users: int) -> None:
    from engine.http import save_profiles
    from policy.types import UserProfile

    people = [UserProfile(user_id=f"b{i}", addresses={"email": f"b{i}@bench.test"}) for i in range(users)]
    for i in range(0, users, 2000):
        await save_profiles(engine, people[i:i + 2000], "bench")


async def run(args) -> dict:
    sinks = {"webhook": SinkProcess("webhook", secret=SECRET).start()}
    if "email" in args.channels:
        sinks["smtp"] = SinkProcess("smtp").start()
    smtp_port = sinks["smtp"].port if "smtp" in sinks else free_port()
    cfg = bench_config(args, sinks["webhook"].port, smtp_port)
    engine = await Engine(cfg).start()
    try:
        if "email" in args.channels:
            await seed_users(engine, args.users)
        await asyncio.sleep(1.0)  # let every actor finish starting before the clock runs
        pub_s = await publish(engine, args.n, args.rate, args.channels, args.users)
        expected = args.n * len(args.channels)
        done = await watch_rows(engine.pool, expected, args.timeout, console, label="e2e")
        s = await engine.pool.fetchrow(STATS_SQL)
    finally:
        await engine.stop()
        received = {name: p.stop() for name, p in sinks.items()}
        await drop(cfg)
    wall = float(s["wall_durable_s"] or 0)
    return {
        "n": args.n, "channels": args.channels, "rows": done, "expected_rows": expected,
        "rate": args.rate, "publish_s": round(pub_s, 2), "publish_per_s": round(args.n / pub_s),
        "wall_s": round(wall, 2), "e2e_per_s": round(args.n / wall) if wall else 0,
        "p50_ms": round(s["durable"][0] * 1000, 1), "p95_ms": round(s["durable"][1] * 1000, 1),
        "p99_ms": round(s["durable"][2] * 1000, 1), "max_ms": round(float(s["durable_max"]) * 1000, 1),
        "sent_p50_ms": round(s["sent"][0] * 1000, 1), "sent_p99_ms": round(s["sent"][2] * 1000, 1),
        "user_shards": args.user_shards, "sinks": received,
        "cores": os.cpu_count(), "python": platform.python_version(),
    }


async def drop(cfg: config.Config) -> None:
    import asyncpg
    import nats

    from engine.embedded import Services
    services = Services(cfg.engine.home, cfg.nats.url, cfg.database.url, cfg.nats.embedded_port)
    url = cfg.database.url or (services.postgres.start() if services.postgres else "")
    conn = await asyncpg.connect(url)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{cfg.database.schema}" CASCADE')
    await conn.close()
    nc = await nats.connect(cfg.nats.url or services.nats.start())
    js = nc.jetstream()
    for name in (cfg.nats.stream, streams.dlq_stream(cfg.nats)):
        try:
            await js.delete_stream(name)
        except Exception:
            pass
    await nc.drain()


def report(r: dict) -> None:
    t = Table(title=f"end to end: {r['n']:,} notifications × {len(r['channels'])} channel(s)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for k in ("rows", "publish_per_s", "wall_s", "e2e_per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms",
              "sent_p50_ms", "sent_p99_ms", "user_shards"):
        t.add_row(k, f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]))
    console.print(t)
    console.print(f"sinks: {r['sinks']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=0, help="publish at this rate per second (0: as fast as possible)")
    p.add_argument("--channels", default="webhook", help="comma-separated: webhook,email")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--user-shards", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    args.channels = [c for c in args.channels.split(",") if c]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    result = uvloop.run(run(args))
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if result["rows"] == result["expected_rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
