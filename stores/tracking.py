"""Tracking rows read back by the UserShards: which (notification, channel)
pairs are recorded already (a redelivery sends nothing twice), and what a due
fallback check needs to know (statuses, engagement)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg
import msgspec
import orjson

from infra import db
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


# channel '*' is the Ingestor's rejection of a payload, not a channel's record: a
# replay of that payload (tidings dlq replay, same id) is decided afresh, fallbacks included
RECORDED = ("SELECT notification_id::text, channel, status FROM delivery_tracking "
            f"WHERE notification_id = {db.keys(1, 'uuid')} AND channel <> '*'")
RECORDED_FINAL = RECORDED + " AND status <> 'deferred'"
# statuses that say a channel was not sent nor held: its request's fallbacks are still due
NOT_HANDLED = frozenset({"failed", "suppressed", "rejected"})


async def recorded(conn: asyncpg.Connection, ids: Sequence[str], final_only: bool = False
                   ) -> dict[tuple[str, str], str]:
    """(notification id, channel) → status of the tracking rows there are
    (``final_only``: leave out rows still ``deferred``, which the Scheduler will
    bring back)."""
    if not ids:
        return {}
    return {(r[0], r[1]): r[2] for r in await conn.fetch(RECORDED_FINAL if final_only else RECORDED, list(ids))}


# what a provider took: the sends a fatigue cap counts (policy/fatigue.py); a bounce came
# after the provider took it, as the shard counted it then
WENT_OUT = ["sent", "delivered", "complained", "bounced"]
RECENT_SENDS = ("SELECT user_id, channel, category, priority, extract(epoch FROM completed_at)::float8 "
                f"FROM delivery_tracking WHERE user_id = {db.keys(1, 'text')} AND status = ANY($2::text[]) "
                "AND completed_at >= to_timestamp($3) AND channel <> '*' AND category <> ALL($4::text[])")


async def recent_sends(conn: asyncpg.Connection, user_ids: Sequence[str], since: float,
                       leave_out: Sequence[str] = ()) -> dict[str, list[tuple[str, str, str, float]]]:
    """Each of ``user_ids``' sends completed since ``since`` (seconds since the
    epoch), but of the categories ``leave_out``, as (channel, category, priority,
    completed at): what their fatigue caps count when a UserShard starts counting them."""
    out: dict[str, list[tuple[str, str, str, float]]] = {}
    if user_ids:
        for r in await conn.fetch(RECENT_SENDS, list(user_ids), WENT_OUT, since, list(leave_out)):
            out.setdefault(r[0], []).append((r[1], r[2], r[3], r[4]))
    return out


def handled(rows: Mapping[tuple[str, str], str]) -> set[str]:
    """Notifications with a channel sent or held among ``rows``: their fallbacks
    are not due (a failed, suppressed or rejected channel does not count)."""
    return {nid for (nid, _), status in rows.items() if status not in NOT_HANDLED}


async def answers(conn: asyncpg.Connection, ids: Sequence[str]
                  ) -> tuple[dict[str, set[str]], set[str], set[tuple[str, str]]]:
    """For notifications ``ids``: each one's channel statuses, those with an
    engagement event (opened, clicked), and their final (not deferred)
    (notification, channel) rows."""
    rows = await conn.fetch(
        "SELECT notification_id::text, channel, status FROM delivery_tracking "
        f"WHERE notification_id = {db.keys(1, 'uuid')}", list(ids))
    engaged = {r[0] for r in await conn.fetch(
        "SELECT DISTINCT notification_id::text FROM engagement_events "
        f"WHERE notification_id = {db.keys(1, 'uuid')}", list(ids))}
    statuses: dict[str, set[str]] = {}
    for r in rows:
        statuses.setdefault(r[0], set()).add(r[2])
    return statuses, engaged, {(r[0], r[1]) for r in rows if r[2] != "deferred"}
