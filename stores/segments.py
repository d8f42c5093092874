"""Saved segments (``segments``): a name for an audience filter
(``policy.segments``), its JSON stored as given once checked."""

from __future__ import annotations

import asyncpg
import msgspec

from policy.audience import Where

_json = msgspec.json.Encoder()


class Saved(msgspec.Struct):
    segment_id: str
    description: str
    where: Where
    created_at: float
    updated_at: float


def _saved(r) -> Saved:
    return Saved(segment_id=r["segment_id"], description=r["description"],
                 where=msgspec.json.decode(r["filter"], type=Where), created_at=float(r["created_at"]),
                 updated_at=float(r["updated_at"]))


COLUMNS = ("segment_id, description, filter::text AS filter, extract(epoch FROM created_at) AS created_at, "
           "extract(epoch FROM updated_at) AS updated_at")


async def put(conn: asyncpg.Connection, segment_id: str, description: str, where: Where,
              actor: str | None) -> tuple[Saved, bool]:
    """Create or replace; (the segment as saved, whether it is new)."""
    r = await conn.fetchrow(
        "INSERT INTO segments (segment_id, description, filter, created_by) VALUES ($1, $2, $3::jsonb, $4) "
        "ON CONFLICT (segment_id) DO UPDATE SET description = EXCLUDED.description, filter = EXCLUDED.filter, "
        f"updated_at = now() RETURNING {COLUMNS}, (xmax = 0) AS created",
        segment_id, description, _json.encode(where).decode(), actor)
    return _saved(r), bool(r["created"])


async def get(conn: asyncpg.Connection, segment_id: str) -> Saved | None:
    r = await conn.fetchrow(f"SELECT {COLUMNS} FROM segments WHERE segment_id = $1", segment_id)
    return None if r is None else _saved(r)


async def listed(conn: asyncpg.Connection, after: str, limit: int) -> list[Saved]:
    rows = await conn.fetch(f"SELECT {COLUMNS} FROM segments WHERE segment_id > $1 ORDER BY segment_id LIMIT $2",
                            after, limit)
    return [_saved(r) for r in rows]


async def delete(conn: asyncpg.Connection, segment_id: str) -> bool:
    return await conn.fetchval("DELETE FROM segments WHERE segment_id = $1 RETURNING true", segment_id) is not None


__all__ = ["Saved", "delete", "get", "listed", "put"]
