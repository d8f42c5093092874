"""PostgreSQL: connection pools, and applying plain-SQL migrations from a
directory (forward ``NNN_name.sql``, reversed by ``NNN_name.down.sql``; the
engine's own are in ``engine/migrations``)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_DOWN = re.compile(r"^(\d{3})_([a-z0-9_]+)\.down\.sql$")
_LOCK_ID = 0x7469646E  # "tidn": one migrator at a time, across processes


async def create_pool(url: str, schema: str = "public", *, min_size: int = 1, max_size: int = 8,
                      init=None) -> asyncpg.Pool:
    """A pool whose connections use ``schema`` (tests give each run its own)."""
    return await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=init,
        server_settings={"search_path": schema, "application_name": "tidings"},
    )


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
    own transaction, in order. Returns the names applied."""
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await conn.execute(f'SET search_path TO "{schema}"')
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
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
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
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
