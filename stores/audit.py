"""The preference audit log: append-only, each row carrying the hash of the
user's previous row, so a changed or deleted row breaks the chain."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import asyncpg
import orjson


def chain_hash(prev: bytes | None, user_id: str, action: str, new_value) -> bytes:
    h = hashlib.sha256(prev or b"")
    h.update(orjson.dumps([user_id, action, new_value], option=orjson.OPT_SORT_KEYS))
    return h.digest()


async def append_audit(conn: asyncpg.Connection,
                       entries: Sequence[tuple[str, str, dict | None, dict | None, str | None]]) -> None:
    """Append (user, action, old value, new value, who) rows, chained per user.
    Run inside the transaction of the change it records."""
    ids = list({e[0] for e in entries})
    prev = {r[0]: r[1] for r in await conn.fetch(
        "SELECT DISTINCT ON (user_id) user_id, hash FROM preference_audit_log "
        "WHERE user_id = ANY($1::text[]) ORDER BY user_id, id DESC", ids)}
    rows = []
    for user_id, action, old, new, actor in entries:
        digest = chain_hash(prev.get(user_id), user_id, action, new)
        rows.append((user_id, action, orjson.dumps(old).decode() if old is not None else None,
                     orjson.dumps(new).decode() if new is not None else None, actor, prev.get(user_id), digest))
        prev[user_id] = digest
    await conn.executemany(
        "INSERT INTO preference_audit_log (user_id, action, old_value, new_value, performed_by, "
        "prev_hash, hash) VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6, $7)", rows)
