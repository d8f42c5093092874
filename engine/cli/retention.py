"""``tidings retention [--dry-run]``: delete the rows past their keep time now
(stores/retention.py), or only count them, and print the rows per kind."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from engine import migrations
from infra import db
from stores import retention

console = Console()


def add_parser(sub) -> None:
    p = sub.add_parser("retention", help="delete tracking, scheduled, change-feed, inbox and job rows "
                                         "past their keep time ([retention]); --dry-run only counts them")
    p.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
    p.add_argument("--json", action="store_true", help="print {kind: rows} as JSON (kinds kept forever left out)")
    p.set_defaults(run=cmd_retention)


async def cmd_retention(cfg, args) -> int:
    from engine.embedded import Services

    services = Services(cfg.engine.home, cfg.nats.url or "unused", cfg.database.url).start()
    try:
        await migrations.migrate_url(services.database_url, cfg.database.schema, cfg.database)
        # a dry run counts each kind in one statement: on a big table, a long one
        conn = await db.connect(services.database_url, cfg.database, cfg.database.schema, app="tidings-cli",
                                long=args.dry_run)
        try:
            counts = await retention.run(conn, cfg.retention, dry_run=args.dry_run)
        finally:
            await conn.close()
    finally:
        services.stop()
    if counts is None:
        console.print("[red]another retention run holds the lock[/red] (an engine's Scheduler); nothing deleted")
        return 1
    if args.json:
        print(json.dumps(counts))
    else:
        console.print(table(cfg.retention, counts, args.dry_run))
    return 0


def table(cfg, counts: dict[str, int], dry_run: bool) -> Table:
    t = Table(title="retention (dry run: nothing deleted)" if dry_run else "retention")
    for col in ("kind", "kept", "would delete" if dry_run else "deleted"):
        t.add_column(col)
    for kind in retention.KINDS:
        days = getattr(cfg, kind.setting)
        t.add_row(kind.name, f"{days} days" if days else "forever",
                  str(counts[kind.name]) if kind.name in counts else "-")
    return t
