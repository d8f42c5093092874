"""Personal data as tests write it straight into PostgreSQL: sealed under a
fixed test master key, as the engine writes it (stores/pii.py)."""

from __future__ import annotations

import base64

import asyncpg

from infra.pii import Keyring
from stores import pii

MASTER_KEYS = "test:" + base64.b64encode(bytes(range(32))).decode()


async def ring(conn: asyncpg.Connection | asyncpg.Pool, spec: str = MASTER_KEYS) -> Keyring:
    """The test keyring with this schema's index key (made the first time)."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            return await pii.keyring(c, Keyring.parse(spec))
    return await pii.keyring(conn, Keyring.parse(spec))


async def add_address(conn: asyncpg.Connection, keys: Keyring, user_id: str, channel: str, address: str) -> None:
    """The user (if new) and one sealed, indexed address."""
    await conn.execute("INSERT INTO users (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user_id)
    data = await pii.data_keys(conn, keys, [user_id], create=True)
    await conn.executemany("INSERT INTO user_addresses (user_id, channel, sealed, blind) VALUES ($1, $2, $3, $4)",
                           pii.address_records(keys, data, [(user_id, channel, address)]))


async def suppression(conn, keys: Keyring, channel: str, address: str) -> tuple[str, str] | None:
    """(reason, source) of an address's suppression, found by its blind index."""
    r = await conn.fetchrow("SELECT reason, source FROM suppressions WHERE channel = $1 AND blind = $2",
                            channel, keys.blind(channel, address))
    return None if r is None else (r["reason"], r["source"])
