"""PostgreSQL: connection pools and connections, every one bounded by the
``[database]`` timeouts (statement, lock wait, idle in a transaction), and
applying plain-SQL migrations from a directory (forward ``NNN_name.sql``,
reversed by ``NNN_name.down.sql``; the engine's own are in ``engine/migrations``)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import asyncpg

from infra.config import DatabaseConfig

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_DOWN = re.compile(r"^(\d{3})_([a-z0-9_]+)\.down\.sql$")
_LOCK_ID = 0x7469646E  # "tidn": one migrator at a time, across processes


def keys(n: int, sqltype: str) -> str:
    """``ANY(...)`` over the array parameter ``$n`` (of ``sqltype``) as a batch of
    keys to look up. The array is passed through a scalar subquery so the planner
    does not look inside it: a table without statistics (just bulk-loaded, with
    autovacuum off or not yet round) makes a 5,000-key array look like most of
    the table, and the plan a sequential scan per lookup (a broadcast chunk read
    the whole tracking table that way, bench/RESULTS.md "Plans for batches of
    keys"). Hidden, it is estimated as a few keys and probed by index, which is
    right for a batch of keys whatever the statistics say. Except on an empty
    table: there a sequential scan is cheapest, and a session keeps the generic
    plan it chose then (after five runs) until the table's statistics change (an
    ANALYZE or VACUUM) or the session ends; an engine that started on empty tables
    reads them whole until autovacuum comes round (bench/plans.py, which the
    harness uses for that)."""
    return f"ANY((SELECT ${n}::{sqltype}[])::{sqltype}[])"


def _ms(seconds: float) -> str:
    return str(round(seconds * 1000))  # PostgreSQL reads a bare number as milliseconds; 0 is "none"


def server_settings(limits: DatabaseConfig | None = None, schema: str | None = None, *, app: str = "tidings",
                    long: bool = False) -> dict[str, str]:
    """A connection's settings: ``search_path``, its name in ``pg_stat_activity``,
    and the bounds of ``limits`` (the defaults when None). ``long``: the
    statement timeout is ``long_statement_timeout_s`` (migrations)."""
    limits = limits or DatabaseConfig()
    out = {
        "application_name": app,
        "statement_timeout": _ms(limits.long_statement_timeout_s if long else limits.statement_timeout_s),
        "lock_timeout": _ms(limits.lock_timeout_s),
        "idle_in_transaction_session_timeout": _ms(limits.idle_in_transaction_timeout_s),
    }
    if schema is not None:
        out["search_path"] = schema
    return out


async def create_pool(url: str, schema: str = "public", *, min_size: int = 1, max_size: int = 8,
                      init=None, limits: DatabaseConfig | None = None, session_free: bool = False) -> asyncpg.Pool:
    """A pool whose connections use ``schema`` (tests give each run its own),
    bounded by ``limits`` (the configured ``[database]``; defaults when None).

    ``session_free``: its users leave nothing in a session (no session advisory lock,
    LISTEN, SET or cursor outside a transaction), so a connection given back is not
    reset by a query. asyncpg's default sends one (``pg_advisory_unlock_all(); CLOSE
    ALL; UNLISTEN *; RESET ALL``) at every release: a round trip and a statement in
    PostgreSQL each time, for a Recorder flush or a UserShard batch that took the
    connection for one or two statements. An open transaction is still rolled back.
    Never hand such a pool's connection to code that holds a session: ``migrate`` and
    ``rollback`` (session advisory lock, ``SET search_path``), ``stores.retention.run``
    (session advisory lock), ``stores.bulk.import_rows`` (a temp table per session)."""
    return await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=init, server_settings=server_settings(limits, schema),
        reset=_nothing_to_reset if session_free else None,
    )


async def _nothing_to_reset(conn: asyncpg.Connection) -> None:
    """asyncpg has rolled back an open transaction and dropped listeners before this."""


async def connect(url: str, limits: DatabaseConfig | None = None, schema: str | None = None, *,
                  app: str = "tidings", long: bool = False, settings: dict[str, str] | None = None,
                  command_timeout: float | None = None) -> asyncpg.Connection:
    """One connection, bounded as the pools' are (see ``server_settings``), with
    ``settings`` besides; ``command_timeout``: each call's bound on this side."""
    return await asyncpg.connect(url, server_settings={**server_settings(limits, schema, app=app, long=long),
                                                       **(settings or {})}, command_timeout=command_timeout)


async def set_local_timeout(conn: asyncpg.Connection, seconds: float) -> None:
    """This transaction's statements may run up to ``seconds`` (0: no limit):
    a bulk import's or an export's, longer than the connection's usual bound."""
    await conn.execute(f"SET LOCAL statement_timeout = {_ms(seconds)}")


async def _advisory_lock(conn: asyncpg.Connection) -> None:
    """Wait for another migrator, however long its migrations take (the lock
    outlives this transaction: it is the session's)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = 0")
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)


def migration_files(directory: Path) -> list[tuple[int, str, Path]]:
    """The forward migrations in ``directory``, in order. ``NNN_name.down.sql``
    beside one reverses it."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        if _DOWN.match(path.name):
            continue
        m = _NAME.match(path.name)
        if m is None:
            raise RuntimeError(f"migration file {path.name} is not named NNN_name.sql or NNN_name.down.sql")
        found.append((int(m.group(1)), m.group(2), path))
    return found


def down_file(directory: Path, version: int, name: str) -> Path:
    return directory / f"{version:03d}_{name}.down.sql"


async def migrate(conn: asyncpg.Connection, directory: Path, schema: str = "public") -> list[str]:
    """Apply the migrations not yet recorded in ``schema_migrations``, each in its
    own transaction, in order. Returns the names applied. On a connection from
    ``connect(..., long=True)`` a migration's statements may run for
    ``long_statement_timeout_s``, but one that waits ``lock_timeout_s`` for a
    table lock fails (and is rolled back) instead of queueing every query of
    a running engine behind it."""
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await conn.execute(f'SET search_path TO "{schema}"')
    await _advisory_lock(conn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, name, path in migration_files(directory):
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("applied migration %03d_%s", version, name)
            applied.append(f"{version:03d}_{name}")
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)


async def rollback(conn: asyncpg.Connection, directory: Path, to_version: int, schema: str = "public") -> list[str]:
    """Reverse the applied migrations above ``to_version``, newest first, each with
    its ``.down.sql`` in its own transaction. Returns the names reversed. Data in
    what a migration added is gone afterwards."""
    await conn.execute(f'SET search_path TO "{schema}"')
    await _advisory_lock(conn)
    try:
        applied = [(r[0], r[1]) for r in await conn.fetch(
            "SELECT version, name FROM schema_migrations WHERE version > $1 ORDER BY version DESC", to_version)]
        missing = [f"{v:03d}_{n}" for v, n in applied if not down_file(directory, v, n).exists()]
        if missing:
            raise RuntimeError(f"no down migration for {', '.join(missing)}; nothing reversed")
        reversed_ = []
        for version, name in applied:
            async with conn.transaction():
                await conn.execute(down_file(directory, version, name).read_text())
                await conn.execute("DELETE FROM schema_migrations WHERE version = $1", version)
            log.info("reversed migration %03d_%s", version, name)
            reversed_.append(f"{version:03d}_{name}")
        return reversed_
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
