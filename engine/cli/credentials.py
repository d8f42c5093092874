"""``tidings credentials set NAME | list | delete NAME | rotate | gen-key``: provider
credentials stored encrypted in PostgreSQL (engine/credentials.py). A value is
read from stdin or a prompt that does not echo, never from the command line
(where ``ps`` and shell history would keep it)."""

from __future__ import annotations

import datetime as dt
import getpass
import sys

import asyncpg
from cryptography.fernet import Fernet
from rich.console import Console
from rich.markup import escape

from engine import credentials, migrations
from engine.credentials import CredentialError, Keyring
from infra import db

console = Console(stderr=True)


def add_parser(sub) -> None:
    p = sub.add_parser("credentials", help="provider credentials kept encrypted in PostgreSQL: "
                                           "`credentials set NAME`, `list`, `delete NAME`, `rotate`, `gen-key`")
    p.add_argument("action", choices=("set", "list", "delete", "rotate", "gen-key"))
    p.add_argument("name", nargs="?", help="set, delete: the credential's name (settings say secret:NAME)")
    p.set_defaults(run=cmd_credentials)


def read_value(name: str, stdin=None) -> str:
    """The value from a prompt without echo (asked twice) when stdin is a terminal,
    else all of stdin less one trailing newline."""
    stdin = sys.stdin if stdin is None else stdin
    if stdin.isatty():
        value = getpass.getpass(f"value of {name}: ")
        if getpass.getpass(f"value of {name} again: ") != value:
            raise CredentialError(f"credential {name!r}: the two values differ; nothing stored", name)
        return value
    value = stdin.read()
    return value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")


async def cmd_credentials(cfg, args) -> int:
    if args.action == "gen-key":
        print(Fernet.generate_key().decode())
        return 0
    if args.action in ("set", "delete") and not args.name:
        console.print(f"[red]give the credential's name[/red]: tidings credentials {args.action} NAME")
        return 2
    try:
        # The key first: no database is touched when it is missing.
        keyring = Keyring.from_env() if args.action in ("set", "rotate") else None
        value = read_value(args.name) if args.action == "set" else None
        return await _with_database(cfg, args, keyring, value)
    except CredentialError as e:
        console.print(f"[red]{escape(str(e))}[/red]")
        return 1


async def _with_database(cfg, args, keyring: Keyring | None, value: str | None) -> int:
    from engine.embedded import Services

    services = Services(cfg.engine.home, cfg.nats.url or "unused", cfg.database.url).start()
    try:
        await migrations.migrate_url(services.database_url, cfg.database.schema, cfg.database)
        conn = await db.connect(services.database_url, cfg.database, cfg.database.schema, app="tidings-cli")
        try:
            return await _act(conn, args, keyring, value)
        finally:
            await conn.close()
    finally:
        services.stop()


async def _act(conn: asyncpg.Connection, args, keyring: Keyring | None, value: str | None) -> int:
    if args.action == "set":
        await credentials.put(conn, keyring, args.name, value)
        console.print(f"stored {args.name} (key {keyring.key_id})")
    elif args.action == "delete":
        if not await credentials.delete(conn, args.name):
            console.print(f"[red]no credential {args.name!r}[/red]")
            return 1
        console.print(f"deleted {args.name}")
    elif args.action == "rotate":
        n = await credentials.rotate(conn, keyring)
        console.print(f"re-encrypted {n} credential(s) with key {keyring.key_id}")
    else:
        # Plain columns on stdout, one credential a line, so scripts can read them.
        print("name\tkey\tcreated_utc\tupdated_utc")
        for e in await credentials.entries(conn):
            print(f"{e.name}\t{e.key_id}\t{_utc(e.created_at)}\t{_utc(e.updated_at)}")
    return 0


def _utc(t: dt.datetime) -> str:
    return f"{t.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}"
