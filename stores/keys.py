"""API keys and the signing keys of end-user tokens, in PostgreSQL. Only a hash
of an API key's secret is stored; ``engine.auth`` makes and checks keys."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import asyncpg
import msgspec


class KeyRow(msgspec.Struct, frozen=True):
    id: str
    name: str
    hash: bytes
    scopes: tuple[str, ...]
    created_at: float
    revoked_at: float | None = None
    rotated_to: str | None = None
    owner: str = ""  # the first key of its rotation chain


def _row(r) -> KeyRow:
    return KeyRow(r["id"], r["name"], bytes(r["hash"]), tuple(r["scopes"]), r["created_at"].timestamp(),
                  r["revoked_at"].timestamp() if r["revoked_at"] else None, r["rotated_to"], r["owner"])


COLUMNS = "id, name, hash, scopes, created_at, revoked_at, rotated_to, owner"


async def insert(conn: asyncpg.Connection, key_id: str, name: str, digest: bytes, scopes: Sequence[str],
                 owner: str | None = None) -> None:
    await conn.execute("INSERT INTO api_keys (id, name, hash, scopes, owner) VALUES ($1, $2, $3, $4, $5)",
                       key_id, name, digest, list(scopes), owner or key_id)


async def get(conn: asyncpg.Connection | asyncpg.Pool, key_id: str) -> KeyRow | None:
    r = await conn.fetchrow(f"SELECT {COLUMNS} FROM api_keys WHERE id = $1", key_id)
    return None if r is None else _row(r)


async def all_keys(conn: asyncpg.Connection) -> list[KeyRow]:
    return [_row(r) for r in await conn.fetch(f"SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id")]


async def active_count(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")


async def revoke(conn: asyncpg.Connection, key_id: str, rotated_to: str | None = None) -> bool:
    """True if the key was active and is revoked now."""
    done = await conn.fetchval("UPDATE api_keys SET revoked_at = now(), rotated_to = $2 "
                               "WHERE id = $1 AND revoked_at IS NULL RETURNING id", key_id, rotated_to)
    return done is not None


async def signing_keys(conn: asyncpg.Connection | asyncpg.Pool) -> list[tuple[str, bytes, float]]:
    """(kid, secret, created) of every key not retired, newest first."""
    return [(r[0], bytes(r[1]), r[2].timestamp()) for r in await conn.fetch(
        "SELECT kid, secret, created_at FROM token_keys WHERE retired_at IS NULL ORDER BY created_at DESC, kid")]


async def add_signing_key(conn: asyncpg.Connection, kid: str, secret: bytes) -> None:
    await conn.execute("INSERT INTO token_keys (kid, secret) VALUES ($1, $2)", kid, secret)


async def retire_signing_keys(conn: asyncpg.Connection, older_than: dt.timedelta, keep: str) -> int:
    """Retire every signing key but ``keep`` created more than ``older_than`` ago."""
    return len(await conn.fetch(
        "UPDATE token_keys SET retired_at = now() WHERE retired_at IS NULL AND kid <> $1 "
        "AND created_at < now() - $2::interval RETURNING kid", keep, older_than))
