"""``tidings analytics``: channel performance over a window, from the engine's
``GET /v1/analytics/channels``, as a table (or its JSON)."""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.cli.common import api_headers
from engine.client import Client
from stores import analytics

console = Console()


def add_parser(sub) -> None:
    p = sub.add_parser("analytics", help="per channel and provider: outcomes, opens, clicks, rates, latency "
                                         "over the last --hours (GET /v1/analytics/channels)")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="engine HTTP address")
    p.add_argument("--hours", type=float, default=24.0, help="the window: this many hours up to now")
    p.add_argument("--bucket", choices=("minute", "hour", "day"), help="one row per bucket as well")
    p.add_argument("--channel", help="only this channel")
    p.add_argument("--json", action="store_true", help="print the API's answer as it is")
    p.set_defaults(run=cmd_analytics)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def table(body: dict) -> Table:
    t = Table(title="channels, " + time.strftime("%Y-%m-%d %H:%M", time.gmtime(body["from"])) + " to "
              + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(body["to"])))
    cols = ["channel", "provider", "total", "accepted", "delivered", "failed", "suppressed", "opened", "clicked",
            "delivery", "open", "failure", "p50 / p99 ms"]
    if body["bucket"]:
        cols.insert(0, body["bucket"])
    for col in cols:
        t.add_column(col, justify="left" if col in ("channel", "provider", body["bucket"]) else "right")
    for r in body["rows"]:
        c, rates, lat = r["counts"], r["rates"], r["latency_ms"]
        cells = [r["channel"], r["provider"] or "-", f"{r['total']:,}", f"{c['accepted']:,}", f"{c['delivered']:,}",
                 f"{c['failed']:,}", f"{c['suppressed']:,}", f"{c['opened']:,}", f"{c['clicked']:,}",
                 pct(rates["delivery_rate"]), pct(rates["open_rate"]), pct(rates["failure_rate"]),
                 f"{lat['p50']:,.0f} / {lat['p99']:,.0f}" if lat else "-"]
        if body["bucket"]:
            cells.insert(0, time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["bucket"])))
        t.add_row(*cells)
    return t


OPTION = {"from": "--hours", "to": "--hours", "bucket": "--bucket"}  # a query parameter's option here


async def cmd_analytics(cfg, args) -> int:
    """The window is checked against ``[analytics]`` first (the engine refuses
    the same with a 422): a refusal names the option."""
    now = time.time()
    problem = analytics.window_error(now - args.hours * 3600, now, args.bucket, cfg.analytics)
    if problem is not None:
        _, field, reason = problem
        console.print(f"[red]{OPTION[field]}[/red]: {escape(reason)}")
        return 2
    params = {"from": str(now - args.hours * 3600), "to": str(now)}
    if args.bucket:
        params["bucket"] = args.bucket
    if args.channel:
        params["channel"] = args.channel
    async with Client(args.url, headers=api_headers(cfg, args.url)) as tidings:
        body = await tidings.request("GET", "/v1/analytics/channels", params=params)  # errors: one line (main)
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    console.print(table(body))
    return 0
