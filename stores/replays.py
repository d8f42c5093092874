"""Dead letters replayed: a dead letter is claimed here in the transaction that
republishes it, so it is replayed once, and the claim is the audit record."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg


async def claim(conn: asyncpg.Connection, stream: str, seq: int, reason: str, subject: str, origin_seq: int,
                actor: str) -> bool:
    """Record that dead letter ``seq`` of ``stream`` is being replayed; False if
    it was replayed before. Run inside the transaction of the replay."""
    return await conn.fetchval(
        "INSERT INTO dead_letter_replays (stream, seq, reason, subject, origin_seq, replayed_by) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING true",
        stream, seq, reason, subject, origin_seq, actor) is not None


async def replayed(conn: asyncpg.Connection, stream: str, seqs: Sequence[int]) -> dict[int, tuple[str, float]]:
    """For the dead letters ``seqs`` already replayed: who, and when (epoch seconds)."""
    rows = await conn.fetch(
        "SELECT seq, replayed_by, extract(epoch FROM replayed_at) FROM dead_letter_replays "
        "WHERE stream = $1 AND seq = ANY($2::bigint[])", stream, list(seqs))
    return {r[0]: (r[1], float(r[2])) for r in rows}
