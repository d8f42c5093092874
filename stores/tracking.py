"""Tracking rows read back by the UserShards: which (notification, channel)
pairs are recorded already (a redelivery sends nothing twice), and what a due
fallback check needs to know (statuses, engagement)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

RECORDED = "SELECT notification_id::text, channel FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])"
RECORDED_FINAL = RECORDED + " AND status <> 'deferred'"


async def recorded(conn: asyncpg.Connection, ids: Sequence[str], final_only: bool = False) -> set[tuple[str, str]]:
    """(notification id, channel) pairs that already have a tracking row
    (``final_only``: leave out rows still ``deferred``, which the Scheduler will
    bring back)."""
    if not ids:
        return set()
    return {(r[0], r[1]) for r in await conn.fetch(RECORDED_FINAL if final_only else RECORDED, list(ids))}


async def answers(conn: asyncpg.Connection, ids: Sequence[str]
                  ) -> tuple[dict[str, set[str]], set[str], set[tuple[str, str]]]:
    """For notifications ``ids``: each one's channel statuses, those with an
    engagement event (opened, clicked), and their final (not deferred)
    (notification, channel) rows."""
    rows = await conn.fetch(
        "SELECT notification_id::text, channel, status FROM delivery_tracking "
        "WHERE notification_id = ANY($1::uuid[])", list(ids))
    engaged = {r[0] for r in await conn.fetch(
        "SELECT DISTINCT notification_id::text FROM engagement_events "
        "WHERE notification_id = ANY($1::uuid[])", list(ids))}
    statuses: dict[str, set[str]] = {}
    for r in rows:
        statuses.setdefault(r[0], set()).add(r[2])
    return statuses, engaged, {(r[0], r[1]) for r in rows if r[2] != "deferred"}
