"""Capacity planning from measurement: ``tidings bench capacity --rate R --p99 MS``.

Reads a harness result (``tidings bench e2e --json …``) and sizes a deployment for a
target rate. The model, stated so it can be checked:

* Each process group's cost is the CPU it used per notification in the best backlog
  run: ``cores_used / notifications_per_s`` (core-seconds per notification), sampled
  with psutil during the run.
* The paced runs are the latency curve: p99 at 20%, 40%, 60%… of the best
  throughput. The plan runs every group at the highest utilisation whose measured
  p99 meets the target (the lowest measured one when none does, and says so).
  Cores needed for a group = ``rate × cost / utilisation``; actors = cores rounded
  up (an actor is one process and uses at most one core).
* The group with the largest cost saturates first. The scaling curve measured
  (1, 2, 4… shards) is printed beside it; on a machine with few cores it flattens
  where the cores run out, so sizing here is per core, not per curve.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 160)
OWN_RESULTS = "bench/out/latest.json"
COMMITTED_RESULTS = os.path.join(os.path.dirname(__file__), "results", "e2e-2core-2026-11-21.json")

ENGINE_GROUPS = ("Ingestor", "UserShard", "ChannelShard", "Recorder")
SERVICE_GROUPS = ("nats-server", "postgres")


def parse_rate(text: str) -> float:
    """``5000``, ``5000/s``, ``5M/h``, ``300k/min`` → notifications per second."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKmM]?)\s*(?:/\s*(s|sec|min|h|hour))?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (e.g. 5000, 5M/h, 300k/min)")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    return value / {None: 1, "s": 1, "sec": 1, "min": 60, "h": 3600, "hour": 3600}[m.group(3)]


def plan(result: dict, rate: float, p99_ms: float) -> dict:
    best = max(result["backlog_runs"], key=lambda r: r["e2e_per_s"])
    curve = sorted(result.get("paced_runs") or ([result["paced_run"]] if result.get("paced_run") else []),
                   key=lambda r: r["rate"])
    meeting = [r for r in curve if r["p99_ms"] is not None and r["p99_ms"] <= p99_ms]
    paced = meeting[-1] if meeting else (curve[0] if curve else None)
    utilisation = (paced["rate"] / best["e2e_per_s"]) if paced else 0.6
    rows = []
    for group in ENGINE_GROUPS + SERVICE_GROUPS:
        used = best["cpu_cores"].get(group, 0.0)
        cost = used / best["e2e_per_s"] if best["e2e_per_s"] else 0.0
        cores = rate * cost / utilisation
        rows.append({"group": group, "core_ms_per_1k": round(cost * 1e6, 1), "cores": round(cores, 2),
                     "instances": max(1, math.ceil(cores))})
    engine_cores = sum(r["cores"] for r in rows if r["group"] in ENGINE_GROUPS)
    first = max(rows, key=lambda r: r["core_ms_per_1k"])
    measured_p99 = (paced or best)["p99_ms"]
    return {
        "rate_per_s": rate, "target_p99_ms": p99_ms, "utilisation": round(utilisation, 2),
        "groups": rows, "engine_cores": round(engine_cores, 2),
        "total_cores": round(sum(r["cores"] for r in rows), 2),
        "saturates_first": first["group"],
        "measured_p99_ms": measured_p99, "p99_met": measured_p99 is not None and measured_p99 <= p99_ms,
        "latency_curve": [(round(r["rate"] / best["e2e_per_s"], 2), r["p99_ms"]) for r in curve],
        "measured_best_per_s": best["e2e_per_s"], "measured_on_cores": result["cores"],
        "scaling": [(r["shards"], r["e2e_per_s"]) for r in result["backlog_runs"]],
        "slowest_stage": result.get("slowest_stage"), "slowest_stage_per_s": result.get("slowest_stage_per_s"),
        "floor": floor(curve[0]) if curve else [],
    }


def floor(run: dict) -> list[tuple[str, float]]:
    """What holds the p99 where it is: the segments the slowest 1% of the
    lightest paced run spent most time in (``bench.stages.tail``), largest first."""
    stages = run.get("stages") or {}
    spent = [(name, seg["tail_ms"]) for name, seg in stages.items() if seg.get("tail_ms")]
    return sorted(spent, key=lambda pair: -pair[1])[:3]


def show(p: dict) -> None:
    t = Table(title=f"sizing for {p['rate_per_s']:,.0f} notifications/s ({p['rate_per_s'] * 3600 / 1e6:,.2f}M/h) "
                    f"at ≤ {p['utilisation']:.0%} utilisation")
    for col in ("component", "CPU per 1,000 notifications (core-ms)", "cores", "actors / instances"):
        t.add_column(col, justify="right" if col != "component" else "left")
    for r in p["groups"]:
        t.add_row(r["group"], f"{r['core_ms_per_1k']:,}", f"{r['cores']:,}", str(r["instances"]))
    console.print(t)
    console.print(f"engine actors need {p['engine_cores']} cores; with NATS and PostgreSQL {p['total_cores']} cores. "
                  f"Saturates first: [bold]{p['saturates_first']}[/bold].")
    console.print(f"measured: best {p['measured_best_per_s']:,}/s on {p['measured_on_cores']} cores; "
                  f"scaling (shards → /s): {p['scaling']}")
    if p["slowest_stage"]:
        console.print(f"slowest stage alone: {p['slowest_stage']} at {p['slowest_stage_per_s']:,}/s per instance; "
                      f"providers/sinks must take {p['rate_per_s']:,.0f}/s in total.")
    verdict = "[green]met[/green]" if p["p99_met"] else "[red]not met[/red]"
    console.print(f"latency curve (utilisation → p99 ms): {p['latency_curve']}")
    console.print(f"p99 target {p['target_p99_ms']} ms: {verdict} — measured p99 {p['measured_p99_ms']} ms at "
                  f"{p['utilisation']:.0%} utilisation, the utilisation the sizing above uses."
                  + ("" if p["p99_met"] else " Below that, more cores do not lower it."))
    if not p["p99_met"] and p.get("floor"):
        console.print("what holds it (the slowest 1% at the lightest load, mean ms per segment; policy/trace.py): "
                      + ", ".join(f"{name} {ms:,.0f}" for name, ms in p["floor"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tidings bench capacity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=parse_rate, required=True, help="target, e.g. 1400, 5M/h, 300k/min")
    ap.add_argument("--p99", type=float, default=100.0, help="target p99 latency in ms")
    ap.add_argument("--results", help="a `tidings bench e2e --json` file (default: bench/out/latest.json, "
                                      "else the committed measurement in bench/results)")
    ap.add_argument("--json", help="write the plan here")
    args = ap.parse_args(argv)
    if args.results is None:
        args.results = OWN_RESULTS if os.path.exists(OWN_RESULTS) else COMMITTED_RESULTS
        if args.results == COMMITTED_RESULTS:
            console.print(f"no run of your own at {OWN_RESULTS}: using the committed 2-core measurement "
                          f"({COMMITTED_RESULTS}); run `tidings bench e2e --json {OWN_RESULTS}` on your machine")
    try:
        with open(args.results) as f:
            result = json.load(f)
    except OSError as e:
        console.print(f"[red]no results at {args.results}[/red] ({e.strerror}): run `tidings bench e2e --json "
                      f"{args.results}` first")
        return 2
    p = plan(result, args.rate, args.p99)
    show(p)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(p, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
