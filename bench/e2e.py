"""End-to-end load harness: N notifications published to JetStream, through the
engine (Ingestor → UserShards → ChannelShards → Recorder), delivered to loopback
sinks in their own processes, tracked in PostgreSQL — with each stage's ceiling
measured alone in the same run.

    tidings bench e2e --n 100000                     # or: python -m bench.e2e …
    tidings bench e2e --n 50000 --shards 1,2,4 --json bench/out/latest.json

Per shard count (UserShards = ChannelShards per channel = k) one backlog run
(publish everything, then measure how fast it drains: throughput), then one run
paced at 20%, 40% and 60% of the best throughput (the latency curve under a
sustainable load). Latency is
from the JetStream publish timestamp to the end of the provider call (``sent_*``)
and to the tracking row's commit. NATS and PostgreSQL: TIDINGS_NATS_URL /
TIDINGS_DATABASE_URL, else embedded. Every run is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import uvloop
from rich.console import Console

from bench import ceilings, plans, stages
from bench.capacity import fraction
from bench.cpu import ClusterCpu, ray_session
from bench.demo import population, preference_mix, requests, watch_rows
from bench.report import print_result, versions, write_json
from engine import settings
from engine.embedded import Services
from engine.prefs_bus import run_commands
from engine.runtime import Engine
from infra import config, streams
from infra.config import TelemetryConfig
from infra.tuning import with_provider_settings, with_section
from sandbox import SinkProcess

console = Console(width=None if sys.stdout.isatty() else 160)
SECRET = ceilings.SECRET
PREFIX = "b-"

STATS_SQL = """
SELECT count(*) AS rows,
  extract(epoch FROM max(created_at) - min(accepted_at)) AS wall_s,
  percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - accepted_at))
    FILTER (WHERE status = 'sent') AS sent,
  percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM created_at - accepted_at)) AS durable,
  max(extract(epoch FROM created_at - accepted_at)) AS durable_max,
  count(*) FILTER (WHERE status = 'sent') AS sent_rows
FROM delivery_tracking
"""
# A paced run's latency per window of publish time (stages.windows): whether its p99
# comes from every moment or from a few stalls.
WINDOW_S = 0.25
TIMELINE_SQL = f"""
SELECT floor(extract(epoch FROM accepted_at - (SELECT min(accepted_at) FROM delivery_tracking)) / {WINDOW_S}) AS w,
  count(*) AS n,
  percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM created_at - accepted_at)) AS durable,
  max(extract(epoch FROM created_at - accepted_at)) AS durable_max
FROM delivery_tracking WHERE accepted_at IS NOT NULL GROUP BY 1 ORDER BY 1
"""
# A paced run's figures again without its first second: each run starts a fresh
# engine, whose first batches open the connections to the sink (stages.windows: the
# first window's p99 was 27-120 ms where the median window's was 9-43 ms, 16 runs)
WARMUP_S = 1.0
AFTER_WARMUP = "WHERE accepted_at >= (SELECT min(accepted_at) FROM delivery_tracking) + make_interval(secs => $1)"
SLEEP_GRAIN_S = 0.0002  # a paced message due sooner than this goes now: the loop's timers are no finer
BULK_ONLY = "WHERE priority IS DISTINCT FROM 'critical'"  # the backlog's figures without the urgent stream
URGENT_SQL = f"""
SELECT count(*) AS rows, count(*) FILTER (WHERE status = 'sent') AS sent_rows,
  percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - accepted_at))
    FILTER (WHERE status = 'sent') AS sent,
  percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM created_at - accepted_at)) AS durable,
  count(*) FILTER (WHERE created_at < (SELECT max(created_at) FROM delivery_tracking {BULK_ONLY})) AS during_backlog
FROM delivery_tracking WHERE priority = 'critical'
"""
URGENT_CATEGORY = "application_updates"


def bench_config(channels: list[str], shards: int, sinks: dict[str, SinkProcess], services: Services,
                 trace_sample: float = 0.01, otlp_ratio: float | None = None) -> config.Config:
    run = uuid.uuid4().hex[:8]
    cfg = settings.load(profile="bench", overrides={
        "nats": {"url": services.nats_url, "prefix": f"bench{run}", "stream": f"BENCH{run}",
                 "consumer": f"bench{run}"},
        "database": {"url": services.database_url, "schema": f"bench_{run}"},
    })
    cfg = with_section(cfg, "engine", user_shards=shards, trace_sample=trace_sample)
    if otlp_ratio is not None:  # OpenTelemetry on, every span exported to a receiver in its own process
        cfg = with_section(cfg, "telemetry", enabled=True, otlp_endpoint=sinks["otlp"].base_url,
                           sample_ratio=otlp_ratio)
    cfg = with_provider_settings(cfg, "webhook", url=sinks["webhook"].url, secret=SECRET)
    if "smtp" in sinks:
        cfg = with_provider_settings(cfg, "email", host="127.0.0.1", port=sinks["smtp"].port)
    kept = {name: msgspec.structs.replace(ch, shards=shards) for name, ch in cfg.channels.items() if name in channels}
    return msgspec.structs.replace(cfg, channels=kept)


async def publish(engine: Engine, notes: list[dict], rate: float) -> float:
    """Publish with publish_async (nats-py bounds what is in flight); paced at
    ``rate``/s when > 0. Returns the seconds taken."""
    enc = msgspec.json.Encoder()
    started = time.perf_counter()
    futures = []
    for i, body in enumerate(notes):
        if rate > 0:
            await until_due(started + i / rate)
        body["id"] = str(uuid.uuid4())
        subject = streams.subject_for(engine.cfg.nats, body["category"], body.get("priority", "normal"))
        futures.append(await engine.js.publish_async(subject, enc.encode(body)))
    await asyncio.gather(*futures)
    return time.perf_counter() - started


@contextmanager
def no_collector_pauses() -> Iterator[None]:
    """The harness's own garbage collector off while it publishes and waits for the
    rows (bounded by --timeout): it holds every request and publish future of the
    run, and a full collection of them took 64-108 ms, in which a paced stream
    fell behind and then went out as a burst the engine was measured on (a
    250 ms window with p99 56-100 ms, 8-10.5 s into a 1,175/s run). What is there
    before is frozen, so the collection that comes after is not longer either."""
    gc.freeze()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()


async def until_due(due: float) -> None:
    """Wait until ``due`` (perf_counter seconds). Each paced message goes out at
    its own time, i / rate: until 2026-12-05 the harness published 50 at once
    and then slept, so "52/s" was a burst of 50 a second, and every paced
    latency (the urgent stream's too) included waiting behind the rest of a
    burst. One already due (the loop woke late, or the rate is above what the
    timer can space) goes at once: the schedule is kept, not the gap."""
    ahead = due - time.perf_counter()
    if ahead > SLEEP_GRAIN_S:
        await asyncio.sleep(ahead)


async def run_once(args, services: Services, shards: int, rate: float, n: int | None = None) -> dict:
    """One engine, one load of ``n`` (default ``--n``) notifications, one set of
    figures. The engine runs on the harness's NATS and PostgreSQL (``services``);
    its sinks, the engine and the run's schema and streams go when it ends."""
    n = n or args.n
    sinks: dict[str, SinkProcess] = {}
    try:
        sinks["webhook"] = SinkProcess("webhook", secret=SECRET).start()
        if "email" in args.channels:
            sinks["smtp"] = SinkProcess("smtp").start()
        if args.otlp is not None:
            sinks["otlp"] = SinkProcess("otlp").start()
        cfg = bench_config(args.channels, shards, sinks, services, args.trace, args.otlp)
        try:
            got = await load(args, cfg, n, rate, shards)
        finally:
            await drop(cfg)
    finally:
        received = {name: p.stop() for name, p in sinks.items()}
    s, warm = got.stats, got.warm
    wall = float(s["wall_s"] or 0)
    return {
        "shards": shards, "rate": rate, "n": n, "rows": got.rows, "expected_rows": got.expected,
        "publish_per_s": round(n / got.publish_s), "wall_s": round(wall, 2),
        "e2e_per_s": round(n / wall) if wall else 0,
        **latency(s), "sent_rows": s["sent_rows"], "cpu_cores": got.cpu, "sinks": received, "stages": got.stages,
        "stalls": got.stalls, "batching": got.batching, "cpu_us_per_notification": cpu_per_notification(got.cpu, wall, n),
        "urgent": got.urgent, "ray": got.where,
        "timeline": got.timeline, "windows": stages.windows(got.timeline, WINDOW_S),
        "after_warmup": {"skipped_s": WARMUP_S, "rows": warm["rows"], **latency(warm)} if warm and warm["rows"] else None,
    }


def cpu_per_notification(cores: dict[str, float], wall_s: float, n: int) -> int | None:
    """µs of CPU per notification over the run, every process sampled but the
    harness's own driver (it publishes and waits; an engine's producers are
    elsewhere): the engine, NATS, PostgreSQL, Ray's own processes and the loopback
    sinks (the providers' stand-ins). The cores sampled while it ran × its wall
    time ÷ the run's notifications (an urgent stream's not counted)."""
    if not wall_s or not n:
        return None
    return round(sum(v for k, v in cores.items() if k != "driver") * wall_s / n * 1e6)


@dataclass
class Loaded:
    """What one load of the engine measured (``load``)."""

    stats: Any  # the STATS_SQL row (the backlog's rows only, with an urgent stream)
    rows: int  # tracking rows seen before the timeout
    expected: int
    publish_s: float
    cpu: dict[str, float]  # cores per process group while it ran
    stages: dict  # time per pipeline stage of the traced notifications
    stalls: dict  # event-loop stalls per actor kind
    urgent: dict | None  # the urgent stream's figures (a backlog run with --urgent)
    where: dict  # the Ray cluster it ran on
    timeline: list[list]  # a paced run's [start s, rows, p50 ms, p99 ms, max ms] per WINDOW_S
    warm: Any  # a paced run's STATS_SQL row after its first WARMUP_S
    batching: dict  # how full the batches ran (stages.collect_batching)


async def load(args, cfg: config.Config, n: int, rate: float, shards: int) -> Loaded:
    """Start the engine, seed, publish, wait for the rows; the engine is stopped
    however this ends. A backlog run with ``--urgent`` publishes a paced stream of
    critical notifications (the priority lane) once the backlog is in the stream."""
    engine = await Engine(cfg).start()
    try:
        people = population(args.users, prefix=PREFIX)
        for i in range(0, len(people), 2000):
            await engine.save_profiles(people[i:i + 2000], "bench")
        mix = preference_mix(args.users, prefix=PREFIX)  # ~10%: a daily digest or quiet hours
        for i in range(0, len(mix), 1000):
            await run_commands(engine, mix[i:i + 1000])
        notes = requests(n, args.users, uuid.uuid4().hex, prefix=PREFIX, channels=tuple(args.channels))
        if not args.stale_plans:
            await plans.analyze_schema(engine.pool)
        await asyncio.sleep(1.0)  # every actor has finished starting before the clock runs
        urgent_notes = []
        if not rate and args.urgent > 0:
            urgent_notes = requests(args.urgent_n, args.users, uuid.uuid4().hex, seed=12, prefix=PREFIX,
                                    channels=tuple(args.channels))  # not the backlog's users one for one
            for body in urgent_notes:
                body["category"], body["priority"] = URGENT_CATEGORY, "critical"
        where = cluster_view()
        # every host's processes: this one's here, each other host's by an actor there
        cpu = ClusterCpu(ray_session(), where.get("remote_node_ids"))
        cpu.start()
        async with plans.analyzing(engine.pool, engine.actors.recorder, not args.stale_plans):
            with no_collector_pauses():
                pub_s = await publish(engine, notes, rate)
                urgent_pub = asyncio.ensure_future(publish(engine, urgent_notes, args.urgent)) if urgent_notes else None
                expected = (n + len(urgent_notes)) * len(args.channels)
                label = f"k={shards}" + (f" paced {rate:,.0f}/s" if rate else " backlog")
                done = await watch_rows(engine.pool, expected, args.timeout, console, label=label)
                busy = await cpu.stop()
                where["cpu_sampled"] = "every host" if cpu.complete else "not every host: cpu_cores is partial"
                if urgent_pub is not None:
                    await urgent_pub
        traced = stages.summary(*await stages.collect(engine.actors))
        stalls = await stages.collect_stalls(engine.actors)
        batching = await stages.collect_batching(engine.actors)
        urgent = None
        if urgent_notes:
            urgent = await urgent_figures(engine.pool)
            urgent["stages"] = await stages.collect_urgent(engine.actors)
        stats = await engine.pool.fetchrow(STATS_SQL + (BULK_ONLY if urgent_notes else ""))
        warm = await engine.pool.fetchrow(STATS_SQL + AFTER_WARMUP, WARMUP_S) if rate else None
        timeline = [[round(float(r["w"]) * WINDOW_S, 2), r["n"], ms(r["durable"][0]), ms(r["durable"][1]), ms(r["durable_max"])]
                    for r in await engine.pool.fetch(TIMELINE_SQL)] if rate else []
        return Loaded(stats, done, expected, pub_s, busy, traced, stalls, urgent, where, timeline, warm, batching)
    finally:
        await engine.stop()


async def urgent_figures(pool) -> dict:
    """The urgent stream's latency (publish → provider call, → committed) and how
    many of its rows were committed before the backlog's last one (only those
    met a backlog)."""
    u = await pool.fetchrow(URGENT_SQL)
    sent, durable = u["sent"] or [None, None], u["durable"] or [None, None]
    return {"rows": u["rows"], "sent_rows": u["sent_rows"], "during_backlog": u["during_backlog"],
            "sent_p50_ms": ms(sent[0]), "sent_p99_ms": ms(sent[1]), "p50_ms": ms(durable[0]), "p99_ms": ms(durable[1])}


def cluster_view() -> dict:
    """The Ray the run is on: its nodes (label, address, CPUs), the live actors
    per node by class, and the nodes on hosts other than this one (their
    processes are sampled by an actor on each such host: ``bench.cpu.ClusterCpu``)."""
    import socket

    import ray
    from ray._private import state as ray_state  # the GCS's actor table: no dashboard needed

    try:
        here = {socket.gethostbyname(socket.gethostname()), "127.0.0.1",
                ray.util.get_node_ip_address()}
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        label = {n["NodeID"]: n.get("Labels", {}).get("tidings-node")
                 or ("head" if "node:__internal_head__" in n.get("Resources", {}) else n["NodeID"][:8]) for n in nodes}
        actors: dict[str, dict[str, int]] = {}
        for a in ray_state.actors(actor_state_name="ALIVE").values():
            per = actors.setdefault(label.get(a["Address"]["NodeID"], "?"), {})
            per[a["ActorClassName"]] = per.get(a["ActorClassName"], 0) + 1
        return {"address": ray.get_runtime_context().gcs_address,
                "nodes": [{"node": label[n["NodeID"]], "ip": n["NodeManagerAddress"],
                           "cpus": n.get("Resources", {}).get("CPU", 0)} for n in nodes],
                "actors": actors,
                "remote_nodes": [label[n["NodeID"]] for n in nodes if n["NodeManagerAddress"] not in here],
                # one node per other host: where the CPU sampler runs as an actor (bench.cpu.ClusterCpu)
                "remote_node_ids": list({n["NodeManagerAddress"]: n["NodeID"] for n in nodes
                                         if n["NodeManagerAddress"] not in here}.values())}
    except Exception as e:  # noqa: BLE001 - informative only; the run's figures stand without it
        return {"error": repr(e)}


def ms(seconds) -> float | None:
    """Seconds from PostgreSQL (None when there were no rows) as ms, to 0.1."""
    return round(float(seconds) * 1000, 1) if seconds is not None else None


def latency(stats) -> dict:
    """A ``STATS_SQL`` row's latencies in ms: p50/p95/p99/max publish → committed
    row and p50/p99 publish → provider call (None where there were no rows)."""
    durable, sent = stats["durable"] or [None] * 3, stats["sent"] or [None] * 3
    return {"p50_ms": ms(durable[0]), "p95_ms": ms(durable[1]), "p99_ms": ms(durable[2]),
            "max_ms": ms(stats["durable_max"]), "sent_p50_ms": ms(sent[0]), "sent_p99_ms": ms(sent[2])}


async def drop(cfg: config.Config) -> None:
    """Remove the run's schema and streams, after its engine stopped. Embedded
    services the engine stopped with it are started again for this and stopped
    after (the harness here runs every engine on services it holds: nothing to start)."""
    import asyncpg
    import nats

    services = Services(cfg.engine.home, cfg.nats.url, cfg.database.url, cfg.nats.embedded_port).start()
    try:
        conn = await asyncpg.connect(services.database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{cfg.database.schema}" CASCADE')
        finally:
            await conn.close()
        nc = await nats.connect(services.nats_url)
        try:
            js = nc.jetstream()
            for name in streams.every_stream(cfg.nats):
                try:
                    await js.delete_stream(name)
                except Exception:  # noqa: BLE001 - clean-up of a stream that may not exist
                    pass
        finally:
            await nc.drain()
    finally:
        services.stop()


async def measure_ceilings(args, services: Services) -> dict:
    """The stages alone, same payloads, before the engine runs (no competition)."""
    n = max(2000, min(args.n, 20_000))
    out = {"http_sink_per_s": round(await ceilings.http_sink(n, 256))}
    if "email" in args.channels:
        out["smtp_sink_per_s"] = round(await ceilings.smtp_sink(min(n, 5000), 16))
    out.update({f"jetstream_{k}": v for k, v in (await ceilings.jetstream(services.nats_url, n, 1000)).items()})
    out["copy_rows_per_s"] = round(await ceilings.copy(services.database_url, n))
    out["ray_batch_items_per_s"] = round(await ceilings.ray_batches(n * 5, 1000))
    return out


def slowest(ceil: dict, channels: list[str]) -> tuple[str, int]:
    """The slowest stage the notifications pass through, in notifications/s."""
    per_notification = {
        "jetstream publish": ceil["jetstream_publish_per_s"],
        "jetstream consume+ack": ceil["jetstream_consume_ack_per_s"],
        "postgres copy": ceil["copy_rows_per_s"] // len(channels),
        "ray batch calls": ceil["ray_batch_items_per_s"],
        "http sink": ceil["http_sink_per_s"] if "webhook" in channels else None,
        "smtp sink": ceil.get("smtp_sink_per_s") if "email" in channels else None,
    }
    name, value = min(((k, v) for k, v in per_notification.items() if v), key=lambda kv: kv[1])
    return name, value


async def harness(args) -> dict:
    """Every run on one NATS and one PostgreSQL (``TIDINGS_NATS_URL`` /
    ``TIDINGS_DATABASE_URL``, else embedded ones started here and stopped at the
    end, however it ends)."""
    cfg = settings.load(profile="bench")
    services = Services(cfg.engine.home, cfg.nats.url, cfg.database.url, cfg.nats.embedded_port).start()
    try:
        return await run_all(args, services)
    finally:
        services.stop()


async def run_all(args, services: Services) -> dict:
    ceil = await measure_ceilings(args, services) if not args.no_ceilings else {}
    runs = [await run_once(args, services, k, 0.0) for k in args.shards]
    best = max(runs, key=lambda r: r["e2e_per_s"])
    paced_runs = []
    if best["e2e_per_s"]:
        base = args.rate_base or best["e2e_per_s"]
        for fraction in args.paced:
            run = await run_once(args, services, best["shards"], round(base * fraction), n=args.paced_n)
            run["fraction"] = fraction  # of --rate-base when given, else of the best backlog rate
            run["utilisation"] = round(run["rate"] / best["e2e_per_s"], 4)  # of the best backlog rate measured
            paced_runs.append(run)
    paced = paced_runs[-1] if paced_runs else None  # the busiest of them
    latency = paced or best
    result = {
        "n": args.n, "channels": args.channels, "cores": os.cpu_count(), "versions": await versions(),
        "otlp_ratio": args.otlp,  # None: traces off; else on at this ratio (compare two runs' figures)
        "analyzed": not args.stale_plans,  # the run's tables ANALYZEd as they filled (bench/plans.py)
        "e2e_per_s": best["e2e_per_s"], "shards": best["shards"],
        "p50_ms": latency["p50_ms"], "p95_ms": latency["p95_ms"], "p99_ms": latency["p99_ms"],
        "max_ms": latency["max_ms"], "latency_at_rate": latency["rate"] or None,
        "backlog_runs": runs, "paced_run": paced, "paced_runs": paced_runs, "ceilings": ceil,
        "busiest": next(iter(best["cpu_cores"].items()), None),
        "complete": all(r["rows"] == r["expected_rows"] for r in runs + paced_runs),
        "ray": best.get("ray"),
    }
    if ceil:
        result["slowest_stage"], result["slowest_stage_per_s"] = slowest(ceil, args.channels)
        result["ratio"] = round(best["e2e_per_s"] / result["slowest_stage_per_s"], 2)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tidings bench e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="notifications per run")
    p.add_argument("--channels", default="webhook", help="comma-separated: webhook,email")
    p.add_argument("--users", type=int, default=10_000, help="synthetic population")
    p.add_argument("--shards", default="2", help="comma-separated shard counts to run, e.g. 1,2,4")
    p.add_argument("--paced", default="0.2,0.4,0.6",
                   help="paced runs at these fractions of the best throughput (the latency curve); empty: none")
    p.add_argument("--paced-n", type=int, default=0, help="notifications per paced run (default: --n / 4)")
    p.add_argument("--rate-base", type=float, default=0,
                   help="the rate --paced fractions apply to (default: the best backlog run's); fixed, runs of "
                        "two versions are paced alike")
    p.add_argument("--urgent", type=float, default=0,
                   help="per second: a paced stream of critical notifications (the priority lane) published "
                        "while each backlog drains, its latency reported apart")
    p.add_argument("--urgent-n", type=int, default=500, help="notifications in the urgent stream")
    p.add_argument("--no-ceilings", action="store_true")
    p.add_argument("--stale-plans", action="store_true",
                   help="no ANALYZE of the run's fresh tables (bench/plans.py; as before 2026-12-06): "
                        "plans chosen on empty tables stay")
    p.add_argument("--timeout", type=float, default=900, help="seconds one run may take to drain")
    p.add_argument("--trace", type=float, default=0.2,
                   help="share of notifications timed per pipeline stage (engine.trace_sample; default 0.2)")
    p.add_argument("--otlp", type=fraction, nargs="?", const=TelemetryConfig().sample_ratio, default=None,
                   metavar="RATIO", help="OpenTelemetry traces on, sampled at RATIO (default: telemetry.sample_ratio's "
                                         "default), exported to a loopback OTLP receiver: run with and without "
                                         "it to see what tracing costs; the spans received are in 'sinks'")
    p.add_argument("--json", help="write the results here, and the charts beside it (<json>-latency.png, "
                                  "<json>-stages.png, <json>-timeline.png)")
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    args.channels = [c for c in args.channels.split(",") if c]
    args.shards = [int(k) for k in args.shards.split(",") if k]
    args.paced = [float(f) for f in args.paced.split(",") if f]
    args.paced_n = args.paced_n or max(args.n // 4, 100)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = uvloop.run(harness(args))
    print_result(console, result)
    if args.json:
        write_json(args.json, result)
        try:
            for path in stages.charts(result, args.json):
                console.print(f"chart: {path}")
        except ImportError:
            console.print("no charts: matplotlib is not installed (pip install 'tidings[bench]')")
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
