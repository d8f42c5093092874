"""Dead letters replayed: each is claimed here (committed) before it is
republished and marked published after, so it is replayed once and the claim is
the audit record. A letter is named by its stream, sequence and time: a stream
deleted and created again reuses sequences."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg


async def claim(conn: asyncpg.Connection, stream: str, seq: int, at: datetime, reason: str, subject: str,
                origin_seq: int, actor: str) -> bool:
    """Claim dead letter ``seq`` of ``stream`` (dead-lettered ``at``) for a
    replay; False if it was published before. A claim whose publish never
    happened (the replay failed in between) is taken again: republishing is
    idempotent (Nats-Msg-Id, and the notification keeps its id)."""
    return await conn.fetchval(
        "INSERT INTO dead_letter_replays (stream, seq, dead_lettered_at, reason, subject, origin_seq, replayed_by) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) "
        "ON CONFLICT (stream, seq, dead_lettered_at) DO UPDATE SET replayed_by = EXCLUDED.replayed_by, "
        "replayed_at = now() WHERE dead_letter_replays.status = 'claimed' RETURNING true",
        stream, seq, at, reason, subject, origin_seq, actor) is not None


async def published(conn: asyncpg.Connection, stream: str, seq: int, at: datetime, published_seq: int) -> None:
    await conn.execute(
        "UPDATE dead_letter_replays SET status = 'published', published_seq = $4 "
        "WHERE stream = $1 AND seq = $2 AND dead_lettered_at = $3", stream, seq, at, published_seq)


async def replayed(conn: asyncpg.Connection, stream: str, letters: Sequence[tuple[int, datetime]]
                   ) -> dict[int, tuple[str, float]]:
    """For the dead letters (seq, dead-lettered at) already replayed
    (published): who, and when (epoch seconds), by seq."""
    rows = await conn.fetch(
        "SELECT r.seq, r.replayed_by, extract(epoch FROM r.replayed_at) FROM dead_letter_replays r "
        "JOIN unnest($2::bigint[], $3::timestamptz[]) AS l(seq, at) ON r.seq = l.seq AND r.dead_lettered_at = l.at "
        "WHERE r.stream = $1 AND r.status = 'published'",
        stream, [s for s, _ in letters], [a for _, a in letters])
    return {r[0]: (r[1], float(r[2])) for r in rows}
