"""``tidings keys create --name N --scopes a,b | list | revoke ID | rotate ID |
rotate-signing | gen-master | rotate-master``: API keys (only a hash is stored;
a key is printed once, on stdout, and never again), the signing keys of
end-user tokens, and the master keys that wrap personal data's keys
(docs/privacy.md: a new one is printed once, never stored by Tidings; a
rotation re-wraps every user's key under the first configured one while the
engine runs)."""

from __future__ import annotations

import datetime as dt
import sys

import asyncpg
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine import auth, master_keys, migrations
from engine.cli.common import console
from infra import db
from infra.config import ConfigError
from infra.pii import PiiError
from stores import keys as key_store, pii as pii_store


def add_parser(sub) -> None:
    p = sub.add_parser("keys", help="API keys: `keys create --name N --scopes S,…`, `list`, `revoke ID`, "
                                    "`rotate ID`, `rotate-signing`; master keys: `gen-master`, `rotate-master`")
    p.add_argument("action", choices=("create", "list", "revoke", "rotate", "rotate-signing", "scopes",
                                      "gen-master", "rotate-master"))
    p.add_argument("id", nargs="?", help="revoke, rotate: the key's id (tdk_<id>_…); gen-master: the new key's id")
    p.add_argument("--name", help="create: what the key is for")
    p.add_argument("--scopes", help="create: comma-separated (see `tidings keys scopes`)")
    p.set_defaults(run=cmd_keys)


async def cmd_keys(cfg, args) -> int:
    if args.action == "scopes":
        for scope, what in auth.SCOPES.items():
            print(f"{scope:22} {what}")
        return 0
    if args.action == "gen-master":
        try:
            key = master_keys.generate(args.id)
        except PiiError as e:
            console.print(f"[red]{escape(str(e))}[/red]")
            return 2
        Console(stderr=True).print("a new master key (put it first in TIDINGS_PRIVACY_MASTER_KEYS, keep the old ones after it, "
                      "then run `tidings keys rotate-master`); it is shown once:", highlight=False)
        sys.stdout.write(key + "\n")
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
    if args.action == "rotate-master":  # the other actions need no master key (and make no key file)
        try:
            cfg = master_keys.with_master_keys(cfg)
        except ConfigError as e:
            console.print(f"[red]{escape(str(e))}[/red]")
            return 2
    services = Services(cfg.engine.home, cfg.nats.url or "unused", cfg.database.url).start()
    try:
        await migrations.migrate_url(services.database_url, cfg.database.schema, cfg.database)
        conn = await db.connect(services.database_url, cfg.database, cfg.database.schema, app="tidings-cli")
        try:
            return await _act(conn, args, cfg)
        finally:
            await conn.close()
    finally:
        services.stop()


async def _act(conn: asyncpg.Connection, args, cfg) -> int:
    if args.action == "rotate-master":
        try:
            ring = await pii_store.keyring(conn, master_keys.keyring(cfg))
            done = await pii_store.rotate_master(conn, ring)
        except PiiError as e:  # a key wrapped under a master key not given: named, never shown
            console.print(f"[red]{escape(str(e))}[/red]")
            return 1
        left = {k: n for k, n in (await pii_store.master_ids_in_use(conn)).items() if k != ring.current}
        console.print(f"re-wrapped {done} key(s) under master key {escape(ring.current)}"
                      + (f"; still under others: {left} (written meanwhile: run it again)" if left else
                         "; the older master keys may now be removed"), highlight=False)
        return 0
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
