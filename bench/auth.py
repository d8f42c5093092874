"""What the trust boundary costs: HTTP submit latency at a fixed rate with
authentication and the Redis rate limiter on, against both off (loopback only),
in alternating rounds; and the cost of one limiter check and one key check.

    tidings bench auth [--rounds 2] [--rate 200] [--seconds 20] [--json PATH]

Each round starts the engine (webhook to a loopback receiver) in one mode, seeds
the population over HTTP, runs Locust paced at ``--rate`` requests/s in total
(``bench/locustfile.py``: single and batch submits, user reads and writes) and
reads ``POST /v1/notifications``'s p50/p99 from Locust; then the other mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import uvloop
from rich.console import Console
from rich.table import Table

from bench import locust_run
from bench.e2e import drop
from engine import auth, http, settings
from engine.runtime import Engine
from infra import config
from sandbox import SinkProcess

console = Console()
SECRET = "bench-secret"
USERS = 10  # Locust users; each paced at rate / USERS
NAME = "/v1/notifications"


def bench_config(sink: SinkProcess, secured: bool, home: str) -> config.Config:
    run = uuid.uuid4().hex[:8]
    return settings.load(profile="bench", overrides={
        "engine": {"home": home},
        "nats": {"prefix": f"auth{run}", "stream": f"AUTH{run}", "consumer": f"auth{run}"},
        "database": {"schema": f"auth_{run}"},
        "http": {"host": "127.0.0.1", "port": 0, "auth": secured},
        "ratelimit": {"enabled": secured, "key_per_s": 100_000.0, "key_burst": 100_000.0},
        "channels": {"webhook": {"providers": [{"name": "hook", "type": "webhook",
                                                "settings": {"url": sink.url, "secret": SECRET}}]}},
    })


async def one_round(sink: SinkProcess, secured: bool, args, out: Path) -> dict:
    with tempfile.TemporaryDirectory() as home:
        cfg = bench_config(sink, secured, home)
        engine = await Engine(cfg).start()
        runner = None
        try:
            runner = await http.serve(engine, port=0)
            host = f"http://127.0.0.1:{http.bound_port(runner)}"
            key = auth.read_admin_key(home, environ={}) if secured else None
            summary = await asyncio.to_thread(
                locust_run.run, host, USERS, USERS, f"{args.seconds}s", out / f"{'on' if secured else 'off'}",
                population=args.population, channels="webhook", rps_per_user=args.rate / USERS, api_key=key)
            stats = summary["by_name"].get(NAME, {})
            return {"mode": "auth + limiter" if secured else "off", "rps": summary["rps"],
                    "submit_p50_ms": stats.get("p50_ms"), "submit_p99_ms": stats.get("p99_ms"),
                    "requests": summary["requests"], "failures": summary["failures"]}
        finally:
            if runner is not None:
                await runner.cleanup()
            await engine.stop()
            await drop(cfg)


async def check_costs(n: int = 3000) -> dict:
    """Mean µs of one limiter check against the engine's Redis and of one cached
    key check, each measured in a loop on this process (no HTTP)."""
    with tempfile.TemporaryDirectory() as home:
        cfg = settings.load(profile="bench", overrides={
            "engine": {"home": home}, "database": {"schema": f"authc_{uuid.uuid4().hex[:8]}"}})
        engine = Engine(cfg)
        await engine.start(ingest=False)
        try:
            key = auth.read_admin_key(home, environ={})
            await engine.auth.authenticate(key)  # cached from here
            t0 = time.perf_counter()
            for _ in range(n):
                await engine.auth.authenticate(key)
            key_us = (time.perf_counter() - t0) / n * 1e6
            limiter_us = []
            for _ in range(3):
                t0 = time.perf_counter()
                for i in range(n):
                    await engine.limiter.check("key", f"bench-{i % 50}")
                limiter_us.append((time.perf_counter() - t0) / n * 1e6)
            return {"key_check_us": round(key_us, 1), "limiter_check_us": round(statistics.median(limiter_us), 1)}
        finally:
            await engine.stop()
            await drop(cfg)


async def harness(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sink = SinkProcess("webhook", secret=SECRET).start()
    rows = []
    try:
        for i in range(args.rounds):
            for secured in ((True, False) if i % 2 == 0 else (False, True)):
                rows.append(await one_round(sink, secured, args, out))
                console.print(rows[-1])
    finally:
        sink.stop()
    return {"rate": args.rate, "seconds": args.seconds, "rounds": rows, "costs": await check_costs()}


def show(result: dict) -> None:
    table = Table(title=f"HTTP submit at {result['rate']}/s (Locust, {result['seconds']} s a round)")
    for col in ("mode", "req/s", f"{NAME} p50 ms", "p99 ms", "requests", "failures"):
        table.add_column(col, justify="right")
    for r in result["rounds"]:
        table.add_row(r["mode"], f"{r['rps']:.0f}", str(r["submit_p50_ms"]), str(r["submit_p99_ms"]),
                      str(r["requests"]), str(r["failures"]))
    console.print(table)
    c = result["costs"]
    console.print(f"one key check (cached): {c['key_check_us']} µs; one limiter check (Redis): "
                  f"{c['limiter_check_us']} µs")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tidings bench auth", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="pairs of (on, off) rounds, alternating which goes first")
    p.add_argument("--rate", type=float, default=200.0, help="requests/s in total")
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--population", type=int, default=2000)
    p.add_argument("--out", default="bench/out/auth")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    result = uvloop.run(harness(args))
    show(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["failures"] == 0 and r["requests"] > 0 for r in result["rounds"]) else 1


if __name__ == "__main__":
    sys.exit(main())
