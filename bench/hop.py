"""What one actor call costs on this machine: the floor under every hop of the
pipeline (Ingestor → UserShard → ChannelShard → UserShard → Recorder and back),
through Ray and over an actor link (``actors/link.py``, what the engine uses for
those three calls).

    tidings bench hop [--calls 400] [--sizes 1000,50000,200000] [--json PATH]

Two async actors on the Ray the engine would use (local, or ``RAY_ADDRESS``),
one calling the other ``--calls`` times per payload size, 10 ms apart (a light
load, as at a quarter of capacity): the time from the caller's ``.remote()`` to
the method running (one way) and to the answer back (round trip), p50/p99/max,
for each way of calling: ``ray`` (``.remote()``) and ``link``.
A notification crosses three nested round trips, so three of these are its
latency floor before any work is done (bench/RESULTS.md, "The floor").
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import struct
import sys
import time

from rich.console import Console
from rich.table import Table

from actors.link import Link, LinkServed
from bench.report import write_json

console = Console(width=None if sys.stdout.isatty() else 160)


WAYS = ("ray", "link")


class Callee(LinkServed):
    LINKED = frozenset({"stamp"})

    async def stamp(self, payload: bytes) -> float:
        """The payload's first 8 bytes are when it was sent (time.time())."""
        return time.time() - struct.unpack("<d", payload[:8])[0]

    async def ready(self) -> bool:
        return True


class Caller:
    def __init__(self, callee) -> None:
        self.callee = Link(callee)

    async def run(self, calls: int, size: int, gap_s: float, way: str) -> dict:
        payload = bytearray(max(size, 8))
        await self.callee.ready.remote()  # connected before the clock runs
        if way == "link" and await self.callee.connect() is None:
            raise RuntimeError("the link did not connect")
        one_way, round_trip = [], []
        for _ in range(calls):
            sent = time.time()
            payload[:8] = struct.pack("<d", sent)
            if way == "link":
                one_way.append(await self.callee.call("stamp", bytes(payload)))
            else:
                one_way.append(await self.callee.stamp.remote(bytes(payload)))
            round_trip.append(time.time() - sent)
            await asyncio.sleep(gap_s)
        return {"way": way, "size": size, "calls": calls, **_quantiles("one_way", one_way),
                **_quantiles("round_trip", round_trip)}


def _quantiles(name: str, seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    at = lambda q: round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000, 2)  # noqa: E731 - nearest rank
    return {f"{name}_p50_ms": at(0.5), f"{name}_p99_ms": at(0.99), f"{name}_max_ms": round(ordered[-1] * 1000, 2)}


def measure(calls: int, sizes: list[int], gap_s: float = 0.01) -> list[dict]:
    import ray

    from engine import raybox, settings

    started_here = not ray.is_initialized()
    raybox.init(settings.load(profile="bench").ray)
    callee = ray.remote(Callee).remote()
    caller = ray.remote(Caller).remote(callee)
    try:
        return [ray.get(caller.run.remote(calls, size, gap_s, way)) for size in sizes for way in WAYS]
    finally:
        for actor in (caller, callee):
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tidings bench hop", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=400, help="calls per payload size")
    p.add_argument("--sizes", default="1000,50000,200000", help="payload bytes, comma-separated")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.calls < 1 or not sizes or min(sizes) < 0:
        console.print("[red]--calls must be at least 1 and --sizes non-negative numbers[/red]")
        return 2
    rows = measure(args.calls, sizes)
    t = Table(title=f"one actor call, async actor to async actor, {args.calls} calls 10 ms apart")
    for col in ("payload bytes", "way", "one way p50", "p99", "max", "round trip p50", "p99", "max"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(f"{r['size']:,}", r["way"], *(str(r[f"{k}_{q}_ms"]) for k in ("one_way", "round_trip")
                                      for q in ("p50", "p99", "max")))
    console.print(t)
    if args.json:
        write_json(args.json, {"cores": os.cpu_count(), "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
