"""Tracking rows read back by the UserShards: which (notification, channel)
pairs are recorded already (a redelivery sends nothing twice), and what a due
fallback check needs to know (statuses, engagement)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec
import orjson

from policy.text import printable
from policy.types import Attempt, Outcome


def columns(o: Outcome) -> tuple:
    """What every writer of a tracking row stores from ``o``'s free texts:
    reason, provider, provider message id, the timeline (attempts as JSON
    objects, readable in the API) and errors (JSON or None).

    Texts a provider or a payload wrote are made ``printable`` here, whoever
    built the Outcome: one NUL byte (which PostgreSQL refuses in jsonb and text)
    or a lone surrogate (which orjson refuses) would fail the whole write, and
    a failed write after the provider accepted is a notification retried."""
    timeline = orjson.dumps([_attempt(a) for a in o.attempts]).decode() if o.attempts else "[]"
    errors = orjson.dumps({"detail": printable(o.detail, 1000)}).decode() if o.detail else None
    return (printable(o.reason, 200), printable(o.provider, 200), printable(o.provider_message_id, 200),
            timeline, errors)


def _attempt(a: Attempt) -> dict:
    d = msgspec.structs.asdict(a)
    d["provider"] = printable(a.provider, 200)
    d["error"] = printable(a.error)
    d["error_kind"] = printable(a.error_kind, 100)
    return d


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
