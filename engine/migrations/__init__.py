"""The engine's schema: the SQL files beside this module, applied in order by
``infra.db`` (each forward file ``NNN_name.sql``, reversed by ``NNN_name.down.sql``)."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from infra import db
from infra.config import DatabaseConfig

DIRECTORY = Path(__file__).resolve().parent


def files() -> list[tuple[int, str, Path]]:
    return db.migration_files(DIRECTORY)


async def migrate(conn: asyncpg.Connection, schema: str = "public") -> list[str]:
    """Apply the migrations ``schema`` has not had yet; returns their names."""
    return await db.migrate(conn, DIRECTORY, schema)


async def connect(url: str, limits: DatabaseConfig | None = None) -> asyncpg.Connection:
    """A connection for migrating or rolling back."""
    return await db.connect(url, limits, app="tidings-migrate", long=True)


async def rollback(conn: asyncpg.Connection, to_version: int, schema: str = "public") -> list[str]:
    """Reverse the migrations above ``to_version``, newest first; returns their names."""
    return await db.rollback(conn, DIRECTORY, to_version, schema)


async def migrate_url(url: str, schema: str = "public", limits: DatabaseConfig | None = None) -> list[str]:
    """Apply them over a connection of their own, bounded by ``limits`` with the
    long statement timeout (``infra.db.migrate``)."""
    conn = await connect(url, limits)
    try:
        return await migrate(conn, schema)
    finally:
        await conn.close()
