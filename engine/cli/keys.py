"""``tidings keys create --name N --scopes a,b | list | revoke ID | rotate ID |
rotate-signing``: API keys (only a hash is stored; a key is printed once, on
stdout, and never again) and the signing keys of end-user tokens."""

from __future__ import annotations

import datetime as dt
import sys

import asyncpg
from rich.markup import escape
from rich.table import Table

from engine import auth, migrations
from engine.cli.common import console
from infra import db
from stores import keys as key_store


def add_parser(sub) -> None:
    p = sub.add_parser("keys", help="API keys: `keys create --name N --scopes S,…`, `list`, `revoke ID`, "
                                    "`rotate ID`, `rotate-signing`")
    p.add_argument("action", choices=("create", "list", "revoke", "rotate", "rotate-signing", "scopes"))
    p.add_argument("id", nargs="?", help="revoke, rotate: the key's id (tdk_<id>_…)")
    p.add_argument("--name", help="create: what the key is for")
    p.add_argument("--scopes", help="create: comma-separated (see `tidings keys scopes`)")
    p.set_defaults(run=cmd_keys)


async def cmd_keys(cfg, args) -> int:
    if args.action == "scopes":
        for scope, what in auth.SCOPES.items():
            print(f"{scope:22} {what}")
        return 0
    if args.action == "create":
        if not args.name or not args.scopes:
            console.print("[red]give --name and --scopes[/red] (e.g. --scopes notifications:send,notifications:read)")
            return 2
        try:
            auth.check_scopes([s.strip() for s in args.scopes.split(",") if s.strip()])
        except ValueError as e:
            console.print(f"[red]{escape(str(e))}[/red]")
            return 2
    if args.action in ("revoke", "rotate") and not args.id:
        console.print(f"[red]give the key's id[/red]: tidings keys {args.action} ID")
        return 2
    from engine.embedded import Services
    services = Services(cfg.engine.home, cfg.nats.url or "unused", cfg.database.url).start()
    try:
        await migrations.migrate_url(services.database_url, cfg.database.schema, cfg.database)
        conn = await db.connect(services.database_url, cfg.database, cfg.database.schema, app="tidings-cli")
        try:
            return await _act(conn, args)
        finally:
            await conn.close()
    finally:
        services.stop()


async def _act(conn: asyncpg.Connection, args) -> int:
    if args.action == "create":
        key_id, key = await auth.create_key(conn, args.name, [s.strip() for s in args.scopes.split(",") if s.strip()])
        console.print(f"created key {key_id} ({escape(args.name)}); it is shown once:", highlight=False)
        sys.stdout.write(key + "\n")
        return 0
    if args.action == "list":
        table = Table()
        for col in ("id", "name", "scopes", "created", "revoked"):
            table.add_column(col)
        for k in await key_store.all_keys(conn):
            table.add_row(k.id, escape(k.name), ",".join(k.scopes), _utc(k.created_at),
                          _utc(k.revoked_at) + (f" → {k.rotated_to}" if k.rotated_to else "") if k.revoked_at else "")
        console.print(table)
        return 0
    key_id = (auth.split(args.id) or (args.id, ""))[0] if args.id else ""
    if args.action == "revoke":
        if not await key_store.revoke(conn, key_id):
            console.print(f"[red]no active key {escape(key_id)!r}[/red]")
            return 1
        console.print(f"revoked {key_id}")
        return 0
    if args.action == "rotate":
        done = await auth.rotate_key(conn, key_id)
        if done is None:
            console.print(f"[red]no active key {escape(key_id)!r}[/red]")
            return 1
        console.print(f"{key_id} revoked; its replacement {done[0]} is shown once:")
        sys.stdout.write(done[1] + "\n")
        return 0
    kid = await auth.rotate_signing_key(conn)
    console.print(f"new token signing key {kid}: it signs from now on; older keys still verify until retired")
    return 0


def _utc(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t else ""
