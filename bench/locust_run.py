"""Run bench/locustfile.py headless against a running engine and summarise it.

    python -m bench.locust_run --host http://127.0.0.1:8080 --users 20 --spawn-rate 20 \\
        --run-time 30s --csv bench/out/locust [--json PATH] [--population 10000] [--no-seed] \\
        [--channels email,webhook] [--tags submit,batch,read,write] [--rps-per-user R [--arrivals fixed]]

Seeds the user population over HTTP (``POST /v1/users``, up to 1000 a request),
runs locust in a subprocess (killed if it outlives run-time + 60 s), reads
``<prefix>_stats.csv`` and prints requests, failures, RPS and p50/p95/p99/max per
request name. Exit code 1 when any request failed or none were made; 2, in one
line, when the run could not start or locust failed (the engine not reachable, the
seeding refused, a bad ``--run-time``).

The API key: ``TIDINGS_API_KEY``, else, as the CLI does, the admin key a first start
wrote under the default profile's ``engine.home``, sent only to a loopback or https
``--host``.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from engine import auth, settings

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SEED_BATCH = 1000
GRACE_S = 60


def seconds(run_time: str) -> int:
    """Locust's --run-time syntax ("30s", "20m", "1h30m", "45") in seconds."""
    text = run_time.strip().lower()
    if text.isdigit():
        return int(text)
    parts = re.findall(r"(\d+)\s*([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text):
        raise ValueError(f"bad run time {run_time!r} (expected e.g. 30s, 5m, 1h30m)")
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def seed(host: str, population: int, timeout_s: float = 120, api_key: str | None = None) -> None:
    """Register ``lt-000000`` … ``lt-<population-1>`` with an email address."""
    for start in range(0, population, SEED_BATCH):
        users = [{"user_id": f"lt-{n:06d}", "addresses": {"email": f"lt-{n}@bench.test"}}
                 for n in range(start, min(start + SEED_BATCH, population))]
        req = urllib.request.Request(f"{host.rstrip('/')}/v1/users", data=json.dumps(users).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {api_key}"} if api_key else {})},
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"seeding {host} failed: {e.code} {e.read()[:200]!r}") from None


def _num(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # "N/A" when there were no requests


def read_stats(csv_prefix: str | Path) -> dict[str, dict]:
    """``<prefix>_stats.csv`` as {name: {requests, failures, rps, p50_ms, p95_ms, p99_ms, max_ms}}."""
    rows = {}
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows[r["Name"]] = {
                "method": r["Type"], "requests": int(r["Request Count"]), "failures": int(r["Failure Count"]),
                "rps": _num(r["Requests/s"]), "p50_ms": _num(r["50%"]), "p95_ms": _num(r["95%"]),
                "p99_ms": _num(r["99%"]), "max_ms": _num(r["Max Response Time"]),
            }
    return rows


def run(host: str, users: int, spawn_rate: float, run_time: str, csv_prefix: str | Path, *,
        population: int = 10000, seed_users: bool = True, channels: str | None = None,
        rps_per_user: float | None = None, api_key: str | None = None, tags: str | None = None,
        arrivals: str = "poisson") -> dict:
    """Seed, run locust headless, return the summary (see the module docstring).
    ``api_key``: the engine's (default ``TIDINGS_API_KEY``; none: no key is sent)."""
    api_key = api_key or os.environ.get(auth.KEY_ENV)
    budget = seconds(run_time) + GRACE_S
    Path(csv_prefix).parent.mkdir(parents=True, exist_ok=True)
    if seed_users:
        seed(host, population, api_key=api_key)
    env = dict(os.environ, TIDINGS_LOCUST_USERS=str(population))
    if api_key:
        env["TIDINGS_API_KEY"] = api_key
    if channels:
        env["TIDINGS_LOCUST_CHANNELS"] = channels
    if rps_per_user:
        env["TIDINGS_LOCUST_RPS_PER_USER"] = str(rps_per_user)
        env["TIDINGS_LOCUST_ARRIVALS"] = arrivals
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users),
           "-r", f"{spawn_rate:g}", "-t", run_time, "--host", host, "--csv", str(csv_prefix), "--only-summary"]
    if tags:
        cmd += ["--tags", *(t.strip() for t in tags.split(",") if t.strip())]
    log_path = Path(f"{csv_prefix}_locust.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            code = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"locust ran over {budget}s and was killed; see {log_path}") from None
    if not Path(f"{csv_prefix}_stats.csv").exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"locust wrote no stats (exit {code}); see {log_path}:\n{tail}")
    by_name = read_stats(csv_prefix)
    total = by_name.pop("Aggregated", None) or {"requests": 0, "failures": 0, "rps": 0.0,
                                                "p50_ms": None, "p95_ms": None, "p99_ms": None}
    return {"rps": total["rps"], "p50_ms": total["p50_ms"], "p95_ms": total["p95_ms"],
            "p99_ms": total["p99_ms"], "failures": total["failures"], "requests": total["requests"],
            "by_name": by_name, "users": users, "run_time": run_time, "aggregated": total,
            "locust_exit": code, "log": str(log_path), "failures_csv": f"{csv_prefix}_failures.csv"}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def show(summary: dict, console: Console) -> None:
    table = Table(title=f"locust: {summary['users']} users, {summary['run_time']}")
    rows = [*sorted(summary["by_name"].items()), ("Aggregated", summary["aggregated"])]
    table.add_column("name", no_wrap=True, min_width=max(len(name) for name, _ in rows))
    for col in ("requests", "failures", "RPS", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, s in rows:
        table.add_row(Text(name), f"{s['requests']:,}", f"{s['failures']:,}", f"{s['rps'] or 0:,.1f}",
                      _ms(s["p50_ms"]), _ms(s["p95_ms"]), _ms(s["p99_ms"]), _ms(s.get("max_ms")),
                      style="bold" if name == "Aggregated" else None)
    console.print(table)


def default_key(host: str) -> str | None:
    """``TIDINGS_API_KEY``, else the admin key under the default profile's
    ``engine.home`` when ``host`` is loopback or https (``auth.key_goes_to``)."""
    if os.environ.get(auth.KEY_ENV):
        return os.environ[auth.KEY_ENV].strip()
    if not auth.key_goes_to(host):
        return None
    return auth.read_admin_key(settings.load().engine.home)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.locust_run", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="http://127.0.0.1:8080")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--spawn-rate", type=float, default=20)
    p.add_argument("--run-time", default="30s")
    p.add_argument("--csv", default="bench/out/locust", help="CSV prefix")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--population", type=int, default=10000, help="users lt-000000… to seed and draw from")
    p.add_argument("--no-seed", action="store_true", help="the population is already registered")
    p.add_argument("--channels", help="comma-separated (default: $TIDINGS_LOCUST_CHANNELS or webhook)")
    p.add_argument("--rps-per-user", type=float, help="pace each user (default: closed loop)")
    p.add_argument("--arrivals", choices=("poisson", "fixed"), default="poisson",
                   help="paced users: independent Poisson schedules (default) or Locust's constant_throughput, "
                        "whose users fall into step and arrive in bursts (see bench/locustfile.py)")
    p.add_argument("--tags", help="only these tasks of the mix, comma-separated: submit,batch,read,write (default: all)")
    args = p.parse_args(argv)
    console = Console(width=max(Console().width, 110))
    try:
        seconds(args.run_time)  # a bad one is said before anything is read or sent
        key = default_key(args.host)
        if key is None and not auth.key_goes_to(args.host):  # (a key set in the environment is never None)
            console.print(f"[yellow]not sending the API key to {escape(args.host)}[/yellow]: use https or a "
                          f"loopback address, or set {auth.KEY_ENV}", soft_wrap=True)
        summary = run(args.host, args.users, args.spawn_rate, args.run_time, args.csv, population=args.population,
                      seed_users=not args.no_seed, channels=args.channels, rps_per_user=args.rps_per_user,
                      tags=args.tags, arrivals=args.arrivals, api_key=key)
        show(summary, console)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            keys = ("rps", "p50_ms", "p95_ms", "p99_ms", "failures", "requests", "by_name", "users", "run_time")
            Path(args.json).write_text(json.dumps({k: summary[k] for k in keys}, indent=2) + "\n")
    except (RuntimeError, ValueError, OSError, http.client.HTTPException) as e:
        # not reachable, refused, not HTTP, a bad setting or --run-time, locust failed, --json not
        # writable: one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        console.print(f"[red]python -m bench.locust_run:[/red] {escape(first)}", soft_wrap=True)
        return 2
    if summary["requests"] == 0 or summary["failures"] > 0:
        console.print(f"[red]{summary['failures']} failures, {summary['requests']} requests[/red] "
                      f"(see {summary['failures_csv']})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
