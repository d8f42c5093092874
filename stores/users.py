"""Users in PostgreSQL: write profiles (with the hash-chained audit row), list
a shard's users, find already-recorded notifications. Their state as the shards
hold it is ``stores.state``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from infra import db
from infra.pii import Keyring
from policy.prefs import Preference
from policy.sharding import shard_of, stable_hash
from policy.types import CHANNEL_OF, UserProfile, UserState
from stores import devices, pii, state
from stores.audit import append_audit

SHARD_USERS = "SELECT user_id FROM users WHERE shard_key IS NULL OR shard_key % $1 = $2"


async def shard_users(conn: asyncpg.Connection, index: int, shards: int) -> list[str]:
    """Every user this shard owns (an audience of "all")."""
    return [r[0] for r in await conn.fetch(SHARD_USERS, shards, index) if shard_of(r[0], shards) == index]


async def save_profiles(conn: asyncpg.Connection, ring: Keyring, profiles: Sequence[UserProfile],
                        old: Mapping[str, UserState], actor: str | None) -> None:
    """Upsert users and replace their addresses (sealed under each user's key,
    found by their blind index), with audit rows. The caller holds the
    transaction (opt-outs are written in it as a preference change) and
    refreshes the users' ``users.state`` once its whole change is written."""
    ids = [p.user_id for p in profiles]
    await conn.executemany(
        "INSERT INTO users (user_id, timezone, locale, shard_key) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (user_id) DO UPDATE SET timezone = EXCLUDED.timezone, "
        "locale = EXCLUDED.locale, shard_key = EXCLUDED.shard_key, updated_at = now()",
        [(p.user_id, p.timezone, p.locale, stable_hash(p.user_id)) for p in profiles])
    await conn.execute(f"DELETE FROM user_addresses WHERE user_id = {db.keys(1, 'text')}", ids)
    keys = await pii.data_keys(conn, ring, ids, create=True)
    await conn.copy_records_to_table(
        "user_addresses", columns=pii.ADDRESS_COLUMNS,
        records=pii.address_records(ring, keys, [(p.user_id, ch, addr) for p in profiles
                                                 for ch, addr in p.addresses.items()]))
    entries = []
    for p in profiles:
        before = old.get(p.user_id)
        old_json = None if before is None else {"addresses": before.addresses, "timezone": before.timezone,
                                                "locale": before.locale}
        new = {"addresses": dict(p.addresses), "timezone": p.timezone, "locale": p.locale}
        entries.append((p.user_id, "profile.upsert", old_json, new, actor))
    await append_audit(conn, ring, entries, keys)


def opt_out_rows(opt_outs: Sequence[str]) -> list[Preference]:
    """``"channel:category"`` shorthands as preference rows (enabled=false)."""
    rows = []
    for o in sorted(set(opt_outs)):
        channel, category = o.split(":", 1)
        rows.append(Preference(channel=channel, category=category, enabled=False))
    return rows


async def lock_versions(conn: asyncpg.Connection, user_ids: Sequence[str]) -> dict[str, int]:
    """The users' preference versions, their rows locked for this transaction."""
    return {r[0]: r[1] for r in await conn.fetch(
        f"SELECT user_id, prefs_version FROM users WHERE user_id = {db.keys(1, 'text')} ORDER BY user_id FOR UPDATE",
        list(user_ids))}


async def forget_addresses(conn: asyncpg.Connection, ring: Keyring, gone: Sequence[tuple[str, str, str]]) -> None:
    """Remove (user, channel, address) a provider said are gone for good, and
    refresh those users' stored state, in one transaction."""
    async with conn.transaction():
        await conn.executemany(
            "DELETE FROM user_addresses WHERE user_id = $1 AND channel = $2 AND blind = $3",
            [(u, ch, ring.blind(ch, addr)) for u, ch, addr in gone])
        await state.refresh_states(conn, ring, list({u for u, _, _ in gone}))


async def suppress(conn: asyncpg.Connection, ring: Keyring, channel: str, address: str, reason: str,
                   source: str | None, replace: bool = False) -> tuple[bool, list[str]]:
    """Suppress an address on a channel (kept as its blind index only, so it
    outlives its owner's erasure); ``replace``: a suppression already there takes
    the new reason. Returns (whether it is new, the users with that address)."""
    blind = ring.blind(channel, address)
    on_conflict = "DO UPDATE SET reason = EXCLUDED.reason, source = EXCLUDED.source" if replace else "DO NOTHING"
    async with conn.transaction():  # a savepoint when the caller holds one
        if channel in CHANNEL_OF.values():  # a device token's: after any registration of it (stores/devices.py)
            await devices.lock_blind(conn, blind)
        new = await conn.fetchval(
            "INSERT INTO suppressions (channel, blind, reason, source) VALUES ($1, $2, $3, $4) "
            f"ON CONFLICT (channel, blind) {on_conflict} RETURNING xmax = 0", channel, blind, reason, source)
        # a device with that token leaves its users' stored states (they hold their devices,
        # not their suppressions): recomputed here, the rows locked as their shards' writes do
        holders = [r[0] for r in await conn.fetch(
            "SELECT DISTINCT user_id FROM user_devices WHERE service = ANY($1::text[]) AND blind = $2 ORDER BY 1",
            [s for s, c in CHANNEL_OF.items() if c == channel], blind)]
        if holders:
            await lock_versions(conn, holders)
            await state.refresh_states(conn, ring, holders)
    return bool(new), await users_with(conn, ring, channel, address)


async def users_with(conn: asyncpg.Connection, ring: Keyring, channel: str, address: str) -> list[str]:
    """The users whose address on ``channel`` is ``address``, or a device's token
    (by its blind index)."""
    blind = ring.blind(channel, address)
    return sorted({r[0] for r in await conn.fetch(
        "SELECT user_id FROM user_addresses WHERE channel = $1 AND blind = $2 UNION "
        "SELECT user_id FROM user_devices WHERE service = ANY($3::text[]) AND blind = $2",
        channel, blind, [s for s, c in CHANNEL_OF.items() if c == channel])})
