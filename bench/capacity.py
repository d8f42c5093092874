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

``--cores 16,64,256`` projects the other way (``project``): what that many cores
for the engine's actors allow, how they divide among the actor kinds, and the
caps that do not grow with them, each from one measured figure and one stated
assumption:

* one Recorder is one process: at most one core, so ``1 / its cost`` notifications/s;
* PostgreSQL writes: the ceiling measured for the Recorder's COPY path (one
  connection) ÷ the rows per notification; more writers at once (Recorders or
  connections) are assumed to add ``--pg-writer-efficiency`` of one writer each
  (default 0.5 on one tracking table, 0.9 when ``delivery_tracking`` is
  partitioned so writers do not share one relation and its indexes): not measured;
* NATS: all of nats-server's CPU in the run (both streams, the acks, the
  accepted events, and other clients of a shared server) is taken as one stream
  leader's, assumed to use at most one core: ``1 / nats-server's cost``
  notifications/s, a low bound (not measured beyond the cost).

* the EventSender: the status events' one relay per deployment, one process, so a
  fourth cap, ``1 / its cost`` notifications/s (assumed one core, like the Recorder).

Beside the sized actors (``BESIDE_GROUPS``, their cores printed apart, no instance
count): the EventSender and Ray's own processes (raylet, GCS, metrics agent), costed
per notification as measured. Most of Ray's is a fixed cost per node (0.05 cores on
the 2-core machine with nothing to do), so costing it per notification overstates it
at high rates. A result from before they were sampled has neither: "not measured".
Not in the model: the Scheduler (releases; idle in a harness run).

NATS and PostgreSQL run on hosts of their own; their cores are printed apart.
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
# the engine's processes beside the sized actors whose CPU grows with the notifications
# delivered: the status events' relay, and Ray's own (its metrics agent ingests every
# actor's series); costed as measured, not sized (an old result without them costs 0)
BESIDE_GROUPS = ("EventSender", "Ray itself")


def parse_rate(text: str) -> float:
    """``5000``, ``5000/s``, ``5M/h``, ``300k/min`` → notifications per second."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKmM]?)\s*(?:/\s*(s|sec|min|h|hour))?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (e.g. 5000, 5M/h, 300k/min)")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    return value / {None: 1, "s": 1, "sec": 1, "min": 60, "h": 3600, "hour": 3600}[m.group(3)]


def latency_point(result: dict, p99_ms: float) -> tuple[float, dict | None, list[dict]]:
    """The utilisation to plan at: the busiest paced run whose p99 met the target
    (the lightest when none did; 0.6 without paced runs), that run, and the curve."""
    best = max(result["backlog_runs"], key=lambda r: r["e2e_per_s"])
    curve = sorted(result.get("paced_runs") or ([result["paced_run"]] if result.get("paced_run") else []),
                   key=lambda r: r["rate"])
    meeting = [r for r in curve if r["p99_ms"] is not None and r["p99_ms"] <= p99_ms]
    paced = meeting[-1] if meeting else (curve[0] if curve else None)
    utilisation = (paced["rate"] / best["e2e_per_s"]) if paced and best["e2e_per_s"] else 0.6
    return utilisation, paced, curve


def plan(result: dict, rate: float, p99_ms: float) -> dict:
    best = max(result["backlog_runs"], key=lambda r: r["e2e_per_s"])
    utilisation, paced, curve = latency_point(result, p99_ms)
    rows = []
    for group in ENGINE_GROUPS + BESIDE_GROUPS + SERVICE_GROUPS:
        used = best["cpu_cores"].get(group, 0.0)
        cost = used / best["e2e_per_s"] if best["e2e_per_s"] else 0.0
        cores = rate * cost / utilisation
        rows.append({"group": group, "core_ms_per_1k": round(cost * 1e6, 1), "cores": round(cores, 2),
                     # one EventSender per deployment, Ray's processes per node: not sized by the rate
                     "instances": None if group in BESIDE_GROUPS else max(1, math.ceil(cores)),
                     "measured": group in best["cpu_cores"]})
    engine_cores = sum(r["cores"] for r in rows if r["group"] in ENGINE_GROUPS)
    beside_cores = sum(r["cores"] for r in rows if r["group"] in BESIDE_GROUPS)
    first = max(rows, key=lambda r: r["core_ms_per_1k"])
    measured_p99 = (paced or best)["p99_ms"]
    return {
        "rate_per_s": rate, "target_p99_ms": p99_ms, "utilisation": round(utilisation, 2),
        "groups": rows, "engine_cores": round(engine_cores, 2), "beside_cores": round(beside_cores, 2),
        "total_cores": round(sum(r["cores"] for r in rows), 2),
        "saturates_first": first["group"],
        "measured_p99_ms": measured_p99, "p99_met": measured_p99 is not None and measured_p99 <= p99_ms,
        "latency_curve": [(round(r["rate"] / best["e2e_per_s"], 2), r["p99_ms"]) for r in curve],
        "measured_best_per_s": best["e2e_per_s"], "measured_on_cores": result["cores"],
        "scaling": [(r["shards"], r["e2e_per_s"]) for r in result["backlog_runs"]],
        "slowest_stage": result.get("slowest_stage"), "slowest_stage_per_s": result.get("slowest_stage_per_s"),
        "floor": floor(curve[0]) if curve else [],
    }


SCALED = ("Ingestor", "UserShard", "ChannelShard")  # as many actors as the config says
TABLE_EFFICIENCY = 0.5  # assumed: what each writer after the first adds, one tracking table
PARTITIONED_EFFICIENCY = 0.9  # assumed: the same with delivery_tracking partitioned, a partition per writer
MAX_WRITERS = 10_000  # past this many writers the answer is "no number does"


def costs(result: dict) -> dict[str, float]:
    """Core-seconds per notification per process group, from the best backlog run."""
    best = max(result["backlog_runs"], key=lambda r: r["e2e_per_s"])
    rate = best["e2e_per_s"]
    return {g: (best["cpu_cores"].get(g, 0.0) / rate if rate else 0.0)
            for g in ENGINE_GROUPS + BESIDE_GROUPS + SERVICE_GROUPS}


def write_cap(one_writer_per_s: float, writers: int, efficiency: float) -> float:
    """Notifications/s ``writers`` PostgreSQL writers take when the first takes
    ``one_writer_per_s`` and each further one adds ``efficiency`` of that (assumed)."""
    return one_writer_per_s * (1 + (max(writers, 1) - 1) * efficiency)


def writers_for(rate: float, one_writer_per_s: float, efficiency: float) -> int | None:
    """The fewest writers whose ``write_cap`` reaches ``rate``; None when no number does."""
    if rate <= one_writer_per_s:
        return 1
    more = (rate / one_writer_per_s - 1) / efficiency if efficiency > 0 else math.inf
    if more > MAX_WRITERS:
        return None
    return 1 + math.ceil(more - 1e-9)


def caps(result: dict, cost: dict[str, float]) -> dict[str, float | None]:
    """The ceilings that do not grow with the engine's cores, in notifications/s
    (None where the result has no figure for it): one Recorder (one process, one
    core), PostgreSQL with one writer (the measured COPY ceiling ÷ rows per
    notification), one NATS stream (its leader at one core, assumed) and the
    EventSender (one process, one core, assumed)."""
    rows = max(1, len(result.get("channels") or ["webhook"]))
    copy = (result.get("ceilings") or {}).get("copy_rows_per_s")
    return {
        "Recorder": 1 / cost["Recorder"] if cost.get("Recorder") else None,
        "PostgreSQL writes": copy / rows if copy else None,
        "NATS stream": 1 / cost["nats-server"] if cost.get("nats-server") else None,
        "EventSender": 1 / cost["EventSender"] if cost.get("EventSender") else None,
    }


def cpu_partial(result: dict) -> bool:
    """The run's ``cpu_cores`` miss a host's processes: a host of the cluster could
    not be sampled (``bench.cpu.ClusterCpu``)."""
    ray = result.get("ray") or {}
    sampled = ray.get("cpu_sampled")
    return sampled != "every host" if sampled else bool(ray.get("remote_nodes"))


def project(result: dict, cores: list[int], utilisation: float = 1.0,
            table_efficiency: float = TABLE_EFFICIENCY,
            partitioned_efficiency: float = PARTITIONED_EFFICIENCY, p99_met: bool | None = None) -> dict:
    """For each count of cores given to the engine's actors: the notifications/s
    they allow with every core busy (``max_per_s``: cores ÷ the actors' CPU per
    notification), how the cores divide among the actor kinds (by their measured
    cost; an actor is one process, so actors = cores rounded up), the fixed caps
    (``caps``) and which binds, what it would take to lift them (Recorders, writers
    with and without a partitioned tracking table, streams), and the cores NATS
    and PostgreSQL need beside. ``planned_per_s`` is ``utilisation`` of what binds:
    the load at which the measured latency curve says the p99 target holds when
    ``p99_met``; when no measured load met it, the lightest load measured (and
    ``p99_met`` False says so)."""
    cost = costs(result)
    engine_cost = sum(cost[g] for g in ENGINE_GROUPS)
    fixed = caps(result, cost)
    present = {name: cap for name, cap in fixed.items() if cap}
    out = []
    for n in cores:
        max_per_s = n / engine_cost if engine_cost else 0.0
        limits = {"cores": max_per_s, **present}
        bound = min(limits, key=lambda k: limits[k])
        ceiling = limits[bound]
        kinds = {}
        for g in ENGINE_GROUPS:
            share = n * cost[g] / engine_cost if engine_cost else 0.0
            kinds[g] = {"cores": round(share, 2), "actors": max(1, math.ceil(share - 1e-9))}
        one_writer = fixed["PostgreSQL writes"]
        out.append({
            "cores": n, "max_per_s": round(max_per_s), "bound_by": bound, "ceiling_per_s": round(ceiling),
            "planned_per_s": round(ceiling * utilisation),
            "kinds": kinds,
            # to let the cores run full: what the fixed caps would have to become
            "recorders_needed": max(1, math.ceil(max_per_s * cost["Recorder"] - 1e-9)),
            "pg_writers_needed": writers_for(max_per_s, one_writer, table_efficiency) if one_writer else None,
            "pg_writers_needed_partitioned":
                writers_for(max_per_s, one_writer, partitioned_efficiency) if one_writer else None,
            "nats_streams_needed": max(1, math.ceil(max_per_s * cost["nats-server"] - 1e-9)),
            "nats_cores": round(max_per_s * cost["nats-server"], 2),
            "beside_cores": round(max_per_s * sum(cost[g] for g in BESIDE_GROUPS), 2),
            "postgres_cores": round(max_per_s * cost["postgres"], 2),
        })
    ordered = sorted(present.items(), key=lambda kv: kv[1])
    first_cap, first_value = ordered[0] if ordered else (None, None)
    return {
        "utilisation": round(utilisation, 2),
        "p99_met": p99_met,
        "core_ms_per_1k": {g: round(cost[g] * 1e6, 1) for g in ENGINE_GROUPS + BESIDE_GROUPS + SERVICE_GROUPS},
        "engine_core_ms_per_1k": round(engine_cost * 1e6, 1),
        "per_core_per_s": round(1 / engine_cost) if engine_cost else 0,
        "caps_per_s": {name: (round(v) if v else None) for name, v in fixed.items()},
        "first_cap": first_cap,
        # beyond this many cores, more cores add nothing until the first cap is lifted
        "cores_at_first_cap": round(first_value * engine_cost, 1) if first_value else None,
        "saturates_first_actor": max(SCALED + ("Recorder",), key=lambda g: cost[g]),
        "assumptions": {"pg_writer_efficiency_table": table_efficiency,
                        "pg_writer_efficiency_partitioned": partitioned_efficiency,
                        "nats_stream_leader_cores": 1, "recorder_cores": 1},
        "measured_on_cores": result.get("cores"), "measured_best_per_s": max(
            r["e2e_per_s"] for r in result["backlog_runs"]),
        "cpu_partial": cpu_partial(result),
        "projection": out,
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
        if not r["measured"]:
            t.add_row(r["group"], "not measured", "-", "-")
            continue
        t.add_row(r["group"], f"{r['core_ms_per_1k']:,}", f"{r['cores']:,}",
                  "-" if r["instances"] is None else str(r["instances"]))
    console.print(t)
    beside = p["beside_cores"] if any(r["measured"] for r in p["groups"] if r["group"] in BESIDE_GROUPS) \
        else "(not measured)"
    console.print(f"engine actors need {p['engine_cores']} cores, the EventSender and Ray's own processes "
                  f"{beside}; with NATS and PostgreSQL {p['total_cores']} cores in all. "
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


def show_projection(pr: dict) -> None:
    t = Table(title=f"what N cores for the engine's actors allow (measured {pr['engine_core_ms_per_1k']:,} core-ms per "
                    f"1,000 notifications: {pr['per_core_per_s']:,}/s a core)")
    for col in ("cores", "cores allow /s", *(f"{g} cores (actors)" for g in ENGINE_GROUPS), "bound by", "ceiling /s",
                f"at {pr['utilisation']:.0%} /s", "would need: Recorders / PG writers (partitioned) / streams",
                "EventSender + Ray cores", "NATS cores", "PostgreSQL cores"):
        t.add_column(col, justify="right" if col != "bound by" else "left")
    for row in pr["projection"]:
        t.add_row(str(row["cores"]), f"{row['max_per_s']:,}",
                  *(f"{row['kinds'][g]['cores']:,} ({row['kinds'][g]['actors']})" for g in ENGINE_GROUPS),
                  row["bound_by"], f"{row['ceiling_per_s']:,}", f"{row['planned_per_s']:,}",
                  f"{row['recorders_needed']} / {row['pg_writers_needed'] or '?'} "
                  f"({row['pg_writers_needed_partitioned'] or '?'}) / {row['nats_streams_needed']}",
                  f"{row['beside_cores']:,}", f"{row['nats_cores']:,}", f"{row['postgres_cores']:,}")
    console.print(t)
    caps_text = ", ".join(f"{name} {v:,}/s" if v else f"{name} (no figure)" for name, v in pr["caps_per_s"].items())
    console.print(f"caps that do not grow with cores: {caps_text}. First: [bold]{pr['first_cap']}[/bold], reached at "
                  f"about {pr['cores_at_first_cap']} cores; of the actor kinds "
                  f"[bold]{pr['saturates_first_actor']}[/bold] costs most and saturates first.")
    a = pr["assumptions"]
    console.print(f"assumed, not measured: a Recorder and nats-server (all of it, as one stream's leader) use one "
                  f"core at most; the EventSender and Ray's own processes cost per notification what they "
                  f"did in the run, beside the actors' cores; each PostgreSQL "
                  f"writer after the first adds {a['pg_writer_efficiency_table']:.0%} of one on one tracking table, "
                  f"{a['pg_writer_efficiency_partitioned']:.0%} with delivery_tracking partitioned (a partition per "
                  f"writer); costs per notification stay as measured on {pr['measured_on_cores']} cores.")
    if pr.get("p99_met") is False:
        console.print(f"[red]no measured load met the p99 target: the \"at {pr['utilisation']:.0%}\" column is the "
                      "lightest load measured, where the p99 was still above it[/red]")
    if pr["cpu_partial"]:
        console.print("[red]a host of the cluster the run spanned could not be sampled: the costs above miss what "
                      "ran there[/red]")


def cores_list(text: str) -> list[int]:
    try:
        out = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of core counts: {text!r} (e.g. 16,64,256)") from None
    if not out or any(c <= 0 for c in out):
        raise argparse.ArgumentTypeError(f"core counts are positive whole numbers: {text!r}")
    return out


def fraction(text: str) -> float:
    """An argument from 0 to 1 (a share, a ratio), refused by argparse otherwise
    (here and in ``tidings bench e2e --otlp``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number from 0 to 1: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"from 0 to 1, not {value:g}")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tidings bench capacity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=parse_rate, help="target, e.g. 1400, 5M/h, 300k/min")
    ap.add_argument("--cores", type=cores_list, help="project for these core counts, e.g. 16,64,256: the rate they "
                                                     "allow, actors per kind, what caps it (Recorder, PostgreSQL, NATS)")
    ap.add_argument("--pg-writer-efficiency", type=fraction, default=TABLE_EFFICIENCY,
                    help="assumed share of one writer each further PostgreSQL writer adds, one tracking table")
    ap.add_argument("--pg-partitioned-efficiency", type=fraction, default=PARTITIONED_EFFICIENCY,
                    help="the same with delivery_tracking partitioned, a partition per writer")
    ap.add_argument("--p99", type=float, default=100.0, help="target p99 latency in ms")
    ap.add_argument("--results", help="a `tidings bench e2e --json` file (default: bench/out/latest.json, "
                                      "else the committed measurement in bench/results)")
    ap.add_argument("--json", help="write the plan here")
    args = ap.parse_args(argv)
    if args.rate is None and args.cores is None:
        ap.error("give --rate (size for a target) and/or --cores (project for core counts)")
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
    out: dict = {}
    if args.rate is not None:
        out = plan(result, args.rate, args.p99)
        show(out)
    if args.cores:
        utilisation, paced, _ = latency_point(result, args.p99)
        met = paced is not None and paced.get("p99_ms") is not None and paced["p99_ms"] <= args.p99
        out["capacity"] = project(result, args.cores, round(utilisation, 2), args.pg_writer_efficiency,
                                  args.pg_partitioned_efficiency, p99_met=met)
        show_projection(out["capacity"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
