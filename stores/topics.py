"""Topic subscriptions in PostgreSQL (``topic_subscribers``): who follows a
topic, read by each UserShard for its own users when a broadcast goes to the
topic. Subscribing and unsubscribing write an audit row per user (in the
user's hash chain, as a preference change would)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from infra import db
from infra.pii import Keyring
from policy.sharding import shard_of, stable_hash
from stores.audit import append_audit

SHARD_SUBSCRIBERS = ("SELECT user_id FROM topic_subscribers WHERE topic_id = $1 AND shard_key % $2 = $3 "
                     "ORDER BY user_id")


async def shard_subscribers(conn: asyncpg.Connection, topic: str, index: int, shards: int) -> list[str]:
    """The subscribers of ``topic`` that shard ``index`` of ``shards`` owns."""
    return [r[0] for r in await conn.fetch(SHARD_SUBSCRIBERS, topic, shards, index)
            if shard_of(r[0], shards) == index]


async def change(conn: asyncpg.Connection, ring: Keyring, topic: str, add: Sequence[str], remove: Sequence[str],
                 actor: str | None, source: str = "api") -> tuple[list[str], list[str], list[str]]:
    """Subscribe ``add`` and unsubscribe ``remove`` (in the caller's transaction):
    (newly subscribed, unsubscribed, ``add`` not registered). One already so is
    neither. Every user's row is locked first, all in one id order (their audit
    chains are appended to, ``stores.audit.prepare``; two bulk changes naming the
    same users wait for each other instead of deadlocking)."""
    adding, removing = sorted(set(add)), sorted(set(remove))
    known = {r[0] for r in await conn.fetch(
        f"SELECT user_id FROM users WHERE user_id = {db.keys(1, 'text')} ORDER BY user_id FOR UPDATE",
        sorted(set(adding) | set(removing)))}
    subscribing = [u for u in adding if u in known]
    rows = await conn.fetch(
        "INSERT INTO topic_subscribers (topic_id, user_id, shard_key, source) "
        "SELECT $1, u, k, $4 FROM unnest($2::text[], $3::bigint[]) AS t(u, k) "
        "ON CONFLICT (topic_id, user_id) DO NOTHING RETURNING user_id",
        topic, subscribing, [stable_hash(u) for u in subscribing], source) if subscribing else []
    added = sorted(r[0] for r in rows)
    rows = await conn.fetch(f"DELETE FROM topic_subscribers WHERE topic_id = $1 AND user_id = {db.keys(2, 'text')} "
                            "RETURNING user_id", topic, removing) if removing else []
    removed = sorted(r[0] for r in rows)
    await append_audit(conn, ring, [(u, "topic.subscribe", None, {"topic": topic}, actor) for u in added]
                       + [(u, "topic.unsubscribe", {"topic": topic}, None, actor) for u in removed])
    return added, removed, [u for u in adding if u not in known]


async def count(conn: asyncpg.Connection, topic: str) -> int:
    return await conn.fetchval("SELECT count(*) FROM topic_subscribers WHERE topic_id = $1", topic)


async def page(conn: asyncpg.Connection, topic: str, after: str, limit: int) -> list[tuple[str, float]]:
    """Subscribers after ``after`` in user id order: (user id, subscribed at)."""
    rows = await conn.fetch("SELECT user_id, extract(epoch FROM subscribed_at) FROM topic_subscribers "
                            "WHERE topic_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3", topic, after, limit)
    return [(r[0], float(r[1])) for r in rows]


async def of_user(conn: asyncpg.Connection, user_id: str) -> list[tuple[str, float]]:
    """The topics a user follows: (topic, subscribed at)."""
    rows = await conn.fetch("SELECT topic_id, extract(epoch FROM subscribed_at) FROM topic_subscribers "
                            "WHERE user_id = $1 ORDER BY topic_id", user_id)
    return [(r[0], float(r[1])) for r in rows]


__all__ = ["change", "count", "of_user", "page", "shard_subscribers"]
