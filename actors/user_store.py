"""The UserShard's PostgreSQL side: load users' state in bulk, write profiles
(with the hash-chained audit row), find already-recorded notifications."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from actors import prefs_store
from actors.audit import append_audit
from actors.user_cache import UserCache, from_stored, to_stored
from policy.prefs import Preference
from policy.sharding import shard_of, stable_hash
from policy.types import UserProfile, UserState

LOAD_USERS = ("SELECT user_id, timezone, locale, prefs_version, template_id FROM users "
              "WHERE user_id = ANY($1::text[])")
LOAD_ADDRESSES = "SELECT user_id, channel, address FROM user_addresses WHERE user_id = ANY($1::text[])"
LOAD_SUPPRESSED = """
SELECT a.user_id, a.channel, s.reason FROM user_addresses a
JOIN suppressions s ON s.channel = a.channel AND s.address = a.address
WHERE a.user_id = ANY($1::text[])
"""
RECORDED = "SELECT notification_id::text, channel FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])"
RECORDED_FINAL = RECORDED + " AND status <> 'deferred'"


LOAD_STATES = "SELECT user_id, state FROM users WHERE user_id = ANY($1::text[])"


async def load_states(conn: asyncpg.Connection, user_ids: Sequence[str]) -> dict[str, UserState]:
    """States of the given users that exist: from ``users.state`` plus their
    suppressed addresses (two queries), or assembled from the tables for users
    whose state is not computed. ``templates`` is left to the shard."""
    ids = list(user_ids)
    states: dict[str, UserState] = {}
    stale = []
    for uid, blob in await conn.fetch(LOAD_STATES, ids):
        if blob is None:
            stale.append(uid)
        else:
            states[uid] = from_stored(uid, blob)
    if states:
        for uid, channel, reason in await conn.fetch(LOAD_SUPPRESSED, list(states)):
            states[uid].suppressed[channel] = reason
    if stale:
        assembled = await assemble_states(conn, stale)
        await write_back(conn, assembled)
        states.update(assembled)
    return states


async def write_back(conn: asyncpg.Connection, states: dict[str, UserState]) -> None:
    """Store states assembled for users whose ``users.state`` was NULL, unless a
    writer changed them since (their version moved, or a writer already stored
    one): a reader never overwrites newer data with what it read."""
    await conn.executemany(
        "UPDATE users SET state = $2 WHERE user_id = $1 AND state IS NULL AND prefs_version = $3",
        [(uid, to_stored(s), s.version) for uid, s in states.items()])


async def refresh_states(conn: asyncpg.Connection, user_ids: Sequence[str]) -> None:
    """Recompute ``users.state`` from the tables; writers call it inside the
    transaction of their change."""
    states = await assemble_states(conn, user_ids)
    await conn.executemany("UPDATE users SET state = $2 WHERE user_id = $1",
                           [(uid, to_stored(s)) for uid, s in states.items()])


async def assemble_states(conn: asyncpg.Connection, user_ids: Sequence[str]) -> dict[str, UserState]:
    """States read from every table (five set-based queries, whatever the count)."""
    ids = list(user_ids)
    states = {r[0]: UserState(user_id=r[0], timezone=r[1], locale=r[2], version=r[3], template=r[4])
              for r in await conn.fetch(LOAD_USERS, ids)}
    if not states:
        return states
    for uid, channel, address in await conn.fetch(LOAD_ADDRESSES, ids):
        states[uid].addresses[channel] = address
    for uid, rows in (await prefs_store.load_prefs(conn, ids)).items():
        states[uid].prefs = rows
    for uid, consent in (await prefs_store.load_consent(conn, ids)).items():
        states[uid].consent = consent
    for uid, channel, reason in await conn.fetch(LOAD_SUPPRESSED, ids):
        states[uid].suppressed[channel] = reason
    return states


SHARD_USERS = "SELECT user_id FROM users WHERE shard_key IS NULL OR shard_key % $1 = $2"


async def shard_users(conn: asyncpg.Connection, index: int, shards: int) -> list[str]:
    """Every user this shard owns (an audience of "all")."""
    return [r[0] for r in await conn.fetch(SHARD_USERS, shards, index) if shard_of(r[0], shards) == index]


SCAN_STATES = ("SELECT user_id, state, shard_key IS NULL FROM users "
               "WHERE shard_key IS NULL OR shard_key % $1 = $2")
SCAN_SUPPRESSED = """
SELECT a.user_id, a.channel, s.reason FROM suppressions s JOIN user_addresses a USING (channel, address)
"""


async def scan_shard(conn: asyncpg.Connection, index: int, shards: int, into: UserCache) -> int:
    """Put every user this shard owns into ``into`` (a warm start): one pass over
    ``users.state``; users whose state is not computed are assembled from the
    tables and their state written back; suppressed addresses added last."""
    stale: list[str] = []
    n = 0
    async with conn.transaction(readonly=True):
        cursor = await conn.cursor(SCAN_STATES, shards, index)
        while rows := await cursor.fetch(20_000):  # a batch per round trip, not a call per row
            for uid, blob, unkeyed in rows:
                if unkeyed and shard_of(uid, shards) != index:  # keyed rows: the WHERE decided
                    continue
                if blob is None:
                    stale.append(uid)
                else:
                    into.put_stored(uid, blob)
                    n += 1
    for i in range(0, len(stale), 20_000):
        assembled = await assemble_states(conn, stale[i:i + 20_000])
        await write_back(conn, assembled)
        into.update(assembled)
    for uid, channel, reason in await conn.fetch(SCAN_SUPPRESSED):
        state = into.get(uid) if uid in into and shard_of(uid, shards) == index else None
        if state is not None:
            state.suppressed[channel] = reason
            into[uid] = state
    return n + len(stale)


async def recorded(conn: asyncpg.Connection, ids: Sequence[str], final_only: bool = False) -> set[tuple[str, str]]:
    """(notification id, channel) pairs that already have a tracking row
    (``final_only``: leave out rows still ``deferred``, which the Scheduler will
    bring back)."""
    if not ids:
        return set()
    return {(r[0], r[1]) for r in await conn.fetch(RECORDED_FINAL if final_only else RECORDED, list(ids))}


async def save_profiles(conn: asyncpg.Connection, profiles: Sequence[UserProfile],
                        old: dict[str, UserState], actor: str | None) -> None:
    """Upsert users and replace their addresses, with audit rows. The caller
    holds the transaction (opt-outs are written in it as a preference change)."""
    ids = [p.user_id for p in profiles]
    await conn.executemany(
        "INSERT INTO users (user_id, timezone, locale, shard_key) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (user_id) DO UPDATE SET timezone = EXCLUDED.timezone, "
        "locale = EXCLUDED.locale, shard_key = EXCLUDED.shard_key, updated_at = now()",
        [(p.user_id, p.timezone, p.locale, stable_hash(p.user_id)) for p in profiles])
    await conn.execute("DELETE FROM user_addresses WHERE user_id = ANY($1::text[])", ids)
    await conn.copy_records_to_table(
        "user_addresses", columns=("user_id", "channel", "address"),
        records=[(p.user_id, ch, addr) for p in profiles for ch, addr in p.addresses.items()])
    entries = []
    for p in profiles:
        before = old.get(p.user_id)
        old_json = None if before is None else {"addresses": before.addresses, "timezone": before.timezone,
                                                "locale": before.locale}
        new = {"addresses": dict(p.addresses), "timezone": p.timezone, "locale": p.locale}
        entries.append((p.user_id, "profile.upsert", old_json, new, actor))
    await append_audit(conn, entries)
    await refresh_states(conn, ids)


def opt_out_rows(opt_outs: Sequence[str]) -> list[Preference]:
    """``"channel:category"`` shorthands as preference rows (enabled=false)."""
    rows = []
    for o in sorted(set(opt_outs)):
        channel, category = o.split(":", 1)
        rows.append(Preference(channel=channel, category=category, enabled=False))
    return rows
