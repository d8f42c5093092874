"""Printing a harness result, and the versions it ran with."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess

from rich.console import Console
from rich.table import Table

from bench.stages import ORDER

PACKAGES = ("ray", "msgspec", "nats-py", "asyncpg", "aiohttp", "aiosmtplib", "uvloop")


async def versions() -> dict:
    from engine.embedded import nats_binary

    out = {"python": platform.python_version(), "machine": platform.machine(),
           "cpu": _cpu_model()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        out["nats-server"] = subprocess.run([nats_binary(), "--version"], capture_output=True, text=True,
                                            timeout=5).stdout.strip()
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        pass
    return out


def write_json(path: str, result: dict) -> None:
    """A harness's result as indented JSON at ``path``, its folder made if need be."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_result(console: Console, r: dict) -> None:
    t = Table(title=f"end to end: {r['n']:,} notifications × {', '.join(r['channels'])}")
    for col in ("shards", "mode", "e2e/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "sent p99 ms", "busiest (cores)"):
        t.add_column(col, justify="right")
    runs = r["backlog_runs"] + r.get("paced_runs", [])
    for run in runs:
        busiest = ", ".join(f"{k} {v}" for k, v in list(run["cpu_cores"].items())[:3])
        mode = f"paced {run['rate']:,.0f}/s" if run["rate"] else "backlog"
        t.add_row(str(run["shards"]), mode, f"{run['e2e_per_s']:,}", str(run["p50_ms"]), str(run["p95_ms"]),
                  str(run["p99_ms"]), str(run["max_ms"]), str(run["sent_p99_ms"]), busiest)
    console.print(t)
    staged = [run for run in runs if run.get("stages")]
    if staged:
        st = Table(title="time per stage, ms (traced notifications, policy/trace.py; slowest 1%: the mean among the notifications slowest end to end)")
        st.add_column("stage")
        for run in staged:
            mode = f"{run['rate']:,.0f}/s" if run["rate"] else f"backlog k={run['shards']}"
            st.add_column(f"{mode} p50", justify="right")
            st.add_column(f"{mode} p99", justify="right")
            st.add_column(f"{mode} slowest 1%", justify="right")
        names = [n for n in ORDER if any(n in run["stages"] for run in staged)]
        for n in names:
            cells = []
            for run in staged:
                seg = run["stages"].get(n)
                cells += [str(seg["p50_ms"]), str(seg["p99_ms"]), str(seg.get("tail_ms", "-"))] if seg \
                    else ["-", "-", "-"]
            st.add_row(n, *cells)
        console.print(st)
    for run in runs:
        u = run.get("urgent")
        if u:
            console.print(f"urgent stream (critical, priority lane) during the k={run['shards']} backlog: "
                          f"{u['rows']:,} rows, {u['during_backlog']:,} committed before the backlog's last; "
                          f"publish → provider call p50 {u['sent_p50_ms']} / p99 {u['sent_p99_ms']} ms, "
                          f"→ committed p50 {u['p50_ms']} / p99 {u['p99_ms']} ms")
            if u.get("stages"):
                console.print("  its time per stage, p50 / p99 / slowest 1% ms: " + ", ".join(
                    f"{name} {seg['p50_ms']:.0f}/{seg['p99_ms']:.0f}/{seg.get('tail_ms', 0):.0f}"
                    for name, seg in u["stages"].items()))
    for run in runs:
        w = run.get("windows")
        if w:
            console.print(f"over time at {run['rate']:,.0f}/s, per {w['window_s'] * 1000:.0f} ms window of publish time: "
                          f"p99 {w['median_p99_ms']} ms in the median window, {w['worst_p99_ms']} ms in the worst "
                          f"(at {w['worst_at_s']} s); {w['over_target']} of {w['n']} windows over {w['target_ms']:.0f} ms")
        a = run.get("after_warmup")
        if a:
            sent = f", p99 {a['sent_p99_ms']} ms → provider call" if a["sent_p99_ms"] is not None else ""
            console.print(f"  after its first {a['skipped_s']:g} s (a fresh engine warming up): p50 {a['p50_ms']} ms, "
                          f"p99 {a['p99_ms']} ms publish → committed{sent} ({a['rows']:,} rows)")
    for run in runs:
        b = run.get("batching")
        if b and b["fetches"]:
            mode = f"at {run['rate']:,.0f}/s" if run["rate"] else f"in the k={run['shards']} backlog"
            cpu = run.get("cpu_us_per_notification")
            console.print(f"batches {mode}: {b['per_fetch']} messages per fetch ({b['fetches']:,}), "
                          f"{b['per_shard_call']} per UserShard call, {b['rows_per_flush']} rows per Recorder flush "
                          f"({b['flushes']:,}, {b['one_statement_flushes']:,} in one statement)"
                          + (f"; CPU {cpu:,} µs per notification (every process but the driver)" if cpu else ""))
    stalled = [run for run in runs if run.get("stalls")]
    if stalled:
        sl = Table(title="event-loop stalls per actor kind, ms (actors/stalls.py): timer lag p99 / max, gc pauses")
        for col in ("run", "actor", "lag p99", "lag max", "gc2 n", "gc2 max", "gc1 max", "gc total"):
            sl.add_column(col, justify="right")
        for run in stalled:
            mode = f"{run['rate']:,.0f}/s" if run["rate"] else f"backlog k={run['shards']}"
            for kind, row in run["stalls"].items():
                total = sum(row.get(f"gc{g}_total_ms", 0) for g in "012")
                sl.add_row(mode, kind, str(row.get("lag_p99_ms", "-")), str(row.get("lag_max_ms", "-")),
                           str(row["gc2_n"]), str(row["gc2_max_ms"]), str(row["gc1_max_ms"]), f"{total:,.0f}")
        console.print(sl)
    if r.get("ceilings"):
        c = Table(title="each stage alone (same payloads, same run)")
        c.add_column("stage")
        c.add_column("per second", justify="right")
        for k, v in r["ceilings"].items():
            c.add_row(k, f"{v:,}")
        console.print(c)
        console.print(f"end to end {r['e2e_per_s']:,}/s = [bold]{r['ratio']}×[/bold] the slowest stage "
                      f"({r['slowest_stage']}, {r['slowest_stage_per_s']:,}/s)")
    console.print(f"latency (publish → committed tracking row) at "
                  f"{format(r['latency_at_rate'], ',.0f') + '/s' if r['latency_at_rate'] else 'full backlog'}: "
                  f"p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms")
    if r.get("busiest"):
        console.print(f"busiest process group: {r['busiest'][0]} ({r['busiest'][1]} cores)")
