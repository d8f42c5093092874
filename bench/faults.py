"""Fault bench: each scenario against the real engine (local Ray), with its own
embedded nats-server and PostgreSQL that it stops and starts itself, and the
webhook receiver (sandbox/) in its own process, N notifications in flight.

    tidings bench faults                            # or: python -m bench.faults …
    tidings bench faults --scenario postgres-down,kill-UserShard --n 500 --json bench/out/faults.json

Scenarios (``--scenario``, all by default): baseline (no fault); postgres-down
(stopped ``--outage`` s, then started); postgres-restart; nats-restart (same
port, same store folder); kill-Ingestor, kill-UserShard, kill-ChannelShard,
kill-Recorder, kill-Scheduler (SIGKILL of that actor's worker process; Ray
restarts it); provider-flaky (30% 5xx, 10% hangs past the provider's timeout,
for ``--flaky`` s); provider-garbage (garbage and NUL-byte bodies on 2xx and
5xx answers, for ``--flaky`` s); provider-down (receiver down ``--provider-outage``
s; then a tenth more published); release-while-killed (notifications held in
digests and for quiet hours fall due while the engine's process is SIGKILLed).
Each starts once ``--fault-at`` of its load is terminal; a tenth of the users
have an hourly digest whose buckets fall due at once, so releases run too.

The figures, per scenario:

- submitted: notifications published.
- delivered: of those, the ones the receiver accepted (answered 2xx) at least
  once, by their own id or inside a digest it accepted.
- sent twice: notification ids (a digest's own included) the receiver accepted
  more than once.
- window: of those, the ones in flight at a kill (no tracking row right after
  it, and the receiver asked for them by the time the killed actor was back) —
  the one documented exception to "never sent twice" (a crash between a
  provider's answer and the commit), once each. Counted where a scenario kills.
- terminal: notifications whose every channel has a terminal tracking row (not
  deferred; a digested one once its digest's row is terminal).
- lost: submitted minus terminal.
- recovery s: from the fault's end until every notification is terminal; none
  if that never happened (within ``--timeout``, or nothing was pending any more).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile

import uvloop
from rich.console import Console
from rich.table import Table

from bench.fault_scenarios import FAULTS, release_while_killed, run, seed_digests
from bench.fault_stage import Options, Servers, Stage
from bench.report import versions, write_json

SCENARIOS = (*FAULTS, "release-while-killed")
KILLS = frozenset({*(s for s in SCENARIOS if s.startswith("kill-")), "release-while-killed"})
console = Console(width=None if sys.stdout.isatty() else 160)


async def scenario(servers: Servers, opts: Options, name: str) -> dict:
    """One scenario on a fresh engine (schema, streams, sink); an error is its result."""
    try:
        if name == "release-while-killed":
            return await release_while_killed(servers, opts)
        stage = await Stage(servers, opts).open()
        try:
            await seed_digests(stage)
            return await run(stage, name)
        finally:
            await stage.close()
    except Exception as e:  # noqa: BLE001 - a scenario that breaks the bench is reported, the rest still run
        console.print_exception(max_frames=4)
        return {"scenario": name, "error": repr(e)}


def ok(r: dict) -> bool:
    """Nothing lost, and nothing sent twice but in a kill's window (and that once)."""
    if "error" in r or r["lost"]:
        return False
    return r["sent_twice"] == r["window"] == r["extra_sends"] if r["scenario"] in KILLS else r["sent_twice"] == 0


def table(results: list[dict]) -> Table:
    t = Table(title="Faults")
    for col in ("scenario", "submitted", "delivered", "lost", "sent twice", "(in window)", "terminal", "recovery s",
                "failed", "dead-lettered"):
        t.add_column(col, justify="left" if col == "scenario" else "right")
    for r in results:
        if "error" in r:
            t.add_row(r["scenario"], f"[red]error: {r['error'][:80]}[/red]")
            continue
        mark = "" if ok(r) else "[red]"
        t.add_row(f"{mark}{r['scenario']}", f"{r['submitted']:,}", f"{r['delivered']:,}", f"{mark}{r['lost']:,}",
                  f"{mark}{r['sent_twice']:,}", f"{r['window']:,}" if r["scenario"] in KILLS else "",
                  f"{r['terminal']:,}", "–" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}",
                  f"{r['statuses'].get('failed', 0):,}", f"{r['dead_lettered']:,}")
    return t


async def harness(args: argparse.Namespace) -> dict:
    opts = Options(n=args.n, outage_s=args.outage, provider_outage_s=args.provider_outage, flaky_s=args.flaky,
                   timeout_s=args.timeout, fault_at=args.fault_at, quiet=not args.no_quiet)
    home = tempfile.mkdtemp(prefix="tidings-faults-")
    servers = Servers(home).start()
    results = []
    try:
        for name in args.scenario:
            console.print(f"[bold]{name}[/bold] …")
            results.append(await scenario(servers, opts, name))
            console.print(table(results[-1:]))
    finally:
        servers.stop()
        shutil.rmtree(home, ignore_errors=True)
    return {"date": dt.date.today().isoformat(), "n": args.n, "options": vars(opts), "cores": os.cpu_count(),
            "versions": await versions(), "results": results, "ok": all(ok(r) for r in results)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tidings bench faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default=",".join(SCENARIOS), help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    p.add_argument("--n", type=int, default=2000, help="notifications per scenario")
    p.add_argument("--outage", type=float, default=30.0, help="postgres-down: seconds PostgreSQL is stopped")
    p.add_argument("--provider-outage", type=float, default=60.0, help="provider-down: seconds the receiver is down")
    p.add_argument("--flaky", type=float, default=10.0, help="provider-flaky/-garbage: seconds it misbehaves")
    p.add_argument("--fault-at", type=float, default=0.3, help="the fault starts once this share is terminal")
    p.add_argument("--timeout", type=float, default=300.0, help="per scenario: longest wait after the fault")
    p.add_argument("--no-quiet", action="store_true", help="release-while-killed: digests only (no wait for "
                                                           "a quiet-hours window to end, up to 80 s)")
    p.add_argument("--json", help="write the results here")
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    args.scenario = [s for s in args.scenario.split(",") if s]
    unknown = [s for s in args.scenario if s not in SCENARIOS]
    if unknown:
        p.error(f"--scenario: unknown {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    if args.n < 10:
        p.error("--n: at least 10")
    if not 0 <= args.fault_at < 1:
        p.error("--fault-at: from 0 to below 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        result = uvloop.run(harness(args))
    finally:
        import ray
        if ray.is_initialized():
            ray.shutdown()
    console.print(table(result["results"]))
    if args.json:
        write_json(args.json, result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
