"""The UserShard's PostgreSQL side: load users' state in bulk, write profiles
(with the hash-chained audit row), find already-recorded notifications."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import asyncpg
import orjson

from policy.sharding import shard_of, stable_hash
from policy.types import UserProfile, UserState

LOAD_USERS = "SELECT user_id, timezone, locale FROM users WHERE user_id = ANY($1::text[])"
LOAD_ADDRESSES = "SELECT user_id, channel, address FROM user_addresses WHERE user_id = ANY($1::text[])"
LOAD_OPT_OUTS = """
SELECT user_id, channel, category FROM user_preferences
WHERE user_id = ANY($1::text[]) AND is_active AND (value->>'enabled')::boolean IS FALSE
  AND (expires_at IS NULL OR expires_at > now())
"""
LOAD_SUPPRESSED = """
SELECT a.user_id, a.channel, s.reason FROM user_addresses a
JOIN suppressions s ON s.channel = a.channel AND s.address = a.address
WHERE a.user_id = ANY($1::text[])
"""
RECORDED = "SELECT notification_id::text, channel FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])"


async def load_states(conn: asyncpg.Connection, user_ids: Sequence[str]) -> dict[str, UserState]:
    """States of the given users that exist; four set-based queries, whatever the count."""
    ids = list(user_ids)
    states = {r[0]: UserState(user_id=r[0], timezone=r[1], locale=r[2])
              for r in await conn.fetch(LOAD_USERS, ids)}
    if not states:
        return states
    for uid, channel, address in await conn.fetch(LOAD_ADDRESSES, ids):
        states[uid].addresses[channel] = address
    outs: dict[str, set[str]] = {}
    for uid, channel, category in await conn.fetch(LOAD_OPT_OUTS, ids):
        outs.setdefault(uid, set()).add(f"{channel}:{category}")
    for uid, found in outs.items():
        states[uid].opt_outs = frozenset(found)
    for uid, channel, reason in await conn.fetch(LOAD_SUPPRESSED, ids):
        states[uid].suppressed[channel] = reason
    return states


SHARD_USERS = "SELECT user_id FROM users WHERE shard_key IS NULL OR shard_key % $1 = $2"


async def shard_users(conn: asyncpg.Connection, index: int, shards: int) -> list[str]:
    """Every user this shard owns (an audience of "all")."""
    return [r[0] for r in await conn.fetch(SHARD_USERS, shards, index) if shard_of(r[0], shards) == index]


async def recorded(conn: asyncpg.Connection, ids: Sequence[str]) -> set[tuple[str, str]]:
    """(notification id, channel) pairs that already have a tracking row."""
    if not ids:
        return set()
    return {(r[0], r[1]) for r in await conn.fetch(RECORDED, list(ids))}


def _profile_json(p: UserProfile) -> dict:
    return {"addresses": dict(p.addresses), "opt_outs": sorted(p.opt_outs),
            "timezone": p.timezone, "locale": p.locale}


def chain_hash(prev: bytes | None, user_id: str, action: str, new_value: dict) -> bytes:
    h = hashlib.sha256(prev or b"")
    h.update(orjson.dumps([user_id, action, new_value], option=orjson.OPT_SORT_KEYS))
    return h.digest()


async def save_profiles(conn: asyncpg.Connection, profiles: Sequence[UserProfile],
                        old: dict[str, UserState], actor: str | None) -> None:
    """Upsert users, replace their addresses and opt-outs, append audit rows — one
    transaction for the whole batch (all or nothing)."""
    ids = [p.user_id for p in profiles]
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO users (user_id, timezone, locale, shard_key) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (user_id) DO UPDATE SET timezone = EXCLUDED.timezone, "
            "locale = EXCLUDED.locale, shard_key = EXCLUDED.shard_key, updated_at = now()",
            [(p.user_id, p.timezone, p.locale, stable_hash(p.user_id)) for p in profiles])
        await conn.execute("DELETE FROM user_addresses WHERE user_id = ANY($1::text[])", ids)
        await conn.copy_records_to_table(
            "user_addresses", columns=("user_id", "channel", "address"),
            records=[(p.user_id, ch, addr) for p in profiles for ch, addr in p.addresses.items()])
        await conn.execute(
            "DELETE FROM user_preferences WHERE user_id = ANY($1::text[]) "
            "AND preference_type IN ('global', 'channel', 'category') AND content_type = '*'", ids)
        await conn.executemany(
            "INSERT INTO user_preferences (user_id, preference_type, channel, category, value) "
            "VALUES ($1, $2, $3, $4, '{\"enabled\": false}')",
            [(p.user_id, _level(o), *o.split(":", 1)) for p in profiles for o in set(p.opt_outs)])
        prev = {r[0]: r[1] for r in await conn.fetch(
            "SELECT DISTINCT ON (user_id) user_id, hash FROM preference_audit_log "
            "WHERE user_id = ANY($1::text[]) ORDER BY user_id, id DESC", ids)}
        rows = []
        for p in profiles:
            new = _profile_json(p)
            before = old.get(p.user_id)
            old_json = None if before is None else {
                "addresses": before.addresses, "opt_outs": sorted(before.opt_outs),
                "timezone": before.timezone, "locale": before.locale}
            digest = chain_hash(prev.get(p.user_id), p.user_id, "profile.upsert", new)
            rows.append((p.user_id, "profile.upsert", orjson.dumps(old_json).decode() if old_json else None,
                         orjson.dumps(new).decode(), actor, prev.get(p.user_id), digest))
            prev[p.user_id] = digest
        await conn.executemany(
            "INSERT INTO preference_audit_log (user_id, action, old_value, new_value, performed_by, "
            "prev_hash, hash) VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6, $7)", rows)


def _level(opt_out: str) -> str:
    channel, category = opt_out.split(":", 1)
    if channel == "*" and category == "*":
        return "global"
    return "channel" if category == "*" else "category"
