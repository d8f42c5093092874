"""Engagement events: a notification opened or clicked on one of its channels.

Four sources write them: a client reporting through ``POST
/v1/notifications/{id}/events`` (``engine.http.events``, source ``api``), the
in-app inbox when a message is marked read (``engine.http.inbox``, source
``inbox``), which counts as "opened" on ``in_app``, an email provider's
open or click tracking webhook (``engine.http.tracking``, source the provider
type: ``sendgrid``, ``mailgun``), and our own open pixel and click redirect
(``engine.http.links``, source ``pixel``, ``link``).

What is stored (``engagement_events``, migration 011): the first "opened" and
the first "clicked" per (notification, channel); a repeated report inserts
nothing and is answered as a duplicate. Opening implies delivered, so in the
same transaction a tracking row still at ``sent`` moves to ``delivered`` with
the event type as its reason; the status itself never becomes "opened" (it
says what the provider did with the message; engagement is a separate fact).
The events are shown in the channel's timeline of ``GET
/v1/notifications/{id}``, merged in when read, and a due fallback check with
``fallback_unless: "opened"`` looks for them (``policy.release``).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import asyncpg
import msgspec
from msgspec import Meta

from infra import db
from policy.types import Channel
from stores.tracking import WENT_OUT

EventType = Literal["opened", "clicked", "converted"]  # converted: what an experiment may count
# A reported time further ahead of the server's clock than this is refused:
# client clocks drift, but a time in the future would be a wrong timeline.
MAX_CLOCK_AHEAD_S = 300.0
# Tracking statuses a channel can be opened in: the provider took the message
# (a complaint comes from a recipient who had it). Any other status (suppressed,
# rejected, deferred, digested, failed, bounced) means there was nothing to open.
OPENABLE = frozenset({"sent", "delivered", "complained"})


class Report(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The body of ``POST /v1/notifications/{id}/events``; ``at`` (seconds since
    the epoch) defaults to when the server got it."""

    channel: Channel
    type: EventType
    at: Annotated[float, Meta(ge=0, le=4e9)] | None = None


class Engagement(msgspec.Struct, frozen=True):
    """One event to store."""

    notification_id: uuid.UUID
    user_id: str
    channel: str
    type: str
    at: float
    source: str  # api | inbox | sendgrid | mailgun (migration 012) | pixel | link (migration 014)


INSERT = """
INSERT INTO engagement_events (notification_id, user_id, channel, type, at, source)
SELECT n, u, c, t,
       -- never before the notification was accepted (a client clock behind, or 0)
       greatest(to_timestamp(a), (SELECT d.accepted_at FROM delivery_tracking d
                                  WHERE d.notification_id = e.n AND d.channel = e.c)), s
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[]) AS e(n, u, c, t, a, s)
ON CONFLICT (notification_id, channel, type) DO NOTHING
RETURNING notification_id, channel, type, extract(epoch FROM at)::float8,
          -- the first open or click of its (notification, channel): the statement's own rows are not seen here
          NOT EXISTS (SELECT 1 FROM engagement_events x WHERE x.notification_id = engagement_events.notification_id
                      AND x.channel = engagement_events.channel AND x.type IN ('opened', 'clicked'))
"""
DELIVERED = """
UPDATE delivery_tracking d SET status = 'delivered', reason = e.t, updated_at = now()
FROM unnest($1::uuid[], $2::text[], $3::text[]) AS e(n, c, t)
WHERE d.notification_id = e.n AND d.channel = e.c AND d.status = 'sent'
"""
STORED_AT = """
SELECT extract(epoch FROM at) FROM engagement_events WHERE notification_id = $1 AND channel = $2 AND type = $3
"""
TIMELINE = """
SELECT channel, type, extract(epoch FROM at) AS at, source FROM engagement_events
WHERE notification_id = $1 ORDER BY at, id
"""


class Stored(dict):
    """(notification, channel, type) → its time as stored, of the events that were new;
    ``first``: those of them that were the first open or click of their (notification,
    channel) (a read counts once per send, policy/choice.py)."""

    first: set[tuple[uuid.UUID, str, str]]

    def __init__(self, items=(), first=()):
        super().__init__(items)
        self.first = set(first)


async def record(conn: asyncpg.Connection, events: list[Engagement]) -> Stored:
    """Store ``events`` and move their ``sent`` tracking rows to ``delivered``,
    in one transaction. Returns the (notification, channel, type) keys that
    were new, each with its time as stored (never before the notification was
    accepted); the others were stored before and are left as they were."""
    if not events:
        return Stored()
    async with conn.transaction():
        # delivered first: its status event comes before the opened or clicked one (migration 024)
        await conn.execute(DELIVERED, [e.notification_id for e in events], [e.channel for e in events],
                           [e.type for e in events])
        rows = await conn.fetch(INSERT, [e.notification_id for e in events], [e.user_id for e in events],
                                [e.channel for e in events], [e.type for e in events],
                                [e.at for e in events], [e.source for e in events])
    first = [(r[0], r[1], r[2]) for r in rows if r[4] and r[2] in ("opened", "clicked")]
    return Stored((((r[0], r[1], r[2]), r[3]) for r in rows), first)


async def stored_at(conn: asyncpg.Connection, nid: uuid.UUID, channel: str, type_: str) -> float | None:
    """When the stored event of that key happened (the first report's ``at``)."""
    at = await conn.fetchval(STORED_AT, nid, channel, type_)
    return float(at) if at is not None else None


def as_entries(rows) -> dict[str, list[dict]]:
    """Timeline entries per channel, ``{"event", "at", "source"}``, oldest first."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["channel"], []).append({"event": r["type"], "at": float(r["at"]), "source": r["source"]})
    return out


async def timelines(conn, nid: uuid.UUID) -> dict[str, list[dict]]:
    """A notification's engagement as timeline entries per channel (``conn``
    may be a pool)."""
    return as_entries(await conn.fetch(TIMELINE, nid))


def clock_error(report: Report, now: float) -> dict | None:
    """The field error of an ``at`` ahead of ``now`` by more than the drift allowed."""
    if report.at is not None and report.at > now + MAX_CLOCK_AHEAD_S:
        return {"field": "$.at", "reason": f"{report.at - now:.0f} s in the future "
                                           f"(at most {MAX_CLOCK_AHEAD_S:.0f} s ahead of the server's clock)"}
    return None


async def last_seen(conn: asyncpg.Connection, user_ids: list[str]) -> dict[str, tuple[float | None, float | None]]:
    """Each user's last open and last click (seconds since the epoch), for those
    with either: what a segment on engagement reads (``policy.segments``)."""
    rows = await conn.fetch(
        "SELECT user_id, extract(epoch FROM max(at) FILTER (WHERE type = 'opened')), "
        "extract(epoch FROM max(at) FILTER (WHERE type = 'clicked')) "
        f"FROM engagement_events WHERE user_id = {db.keys(1, 'text')} GROUP BY user_id", user_ids)
    return {r[0]: (None if r[1] is None else float(r[1]), None if r[2] is None else float(r[2])) for r in rows}


async def times(conn: asyncpg.Connection, user_ids: list[str], since: float) -> dict[str, list[float]]:
    """Each user's opens and clicks since ``since`` (seconds since the epoch), as
    instants: what their send-time profile is made of (``policy.timing``)."""
    out: dict[str, list[float]] = {}
    for r in await conn.fetch("SELECT user_id, extract(epoch FROM at)::float8 FROM engagement_events "
                              f"WHERE user_id = {db.keys(1, 'text')} AND at >= to_timestamp($2) "
                              "AND type IN ('opened', 'clicked')", user_ids, since):
        out.setdefault(r[0], []).append(r[1])
    return out


def sql_in(values) -> str:
    """A constant set of statuses as an SQL list (``'a', 'b'``), sorted: from the constants
    that name them, so a query cannot drift from them."""
    return ", ".join(f"'{v}'" for v in sorted(values))


CHANNEL_COUNTS = f"""
SELECT d.user_id, d.channel, count(*)::int,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM engagement_events e WHERE e.notification_id = d.notification_id
                                      AND e.channel = d.channel AND e.type IN ('opened', 'clicked')))::int
FROM delivery_tracking d
WHERE d.user_id = {db.keys(1, 'text')} AND d.status IN ({sql_in(WENT_OUT)})
  AND d.completed_at >= to_timestamp($2) AND d.channel <> '*'
GROUP BY d.user_id, d.channel
"""


async def channel_counts(conn: asyncpg.Connection, user_ids: list[str], since: float
                         ) -> dict[str, dict[str, tuple[int, int]]]:
    """Each user's sends per channel completed since ``since``, and how many of them
    were opened or clicked: what channel choice learns from (``policy.choice``)."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for r in await conn.fetch(CHANNEL_COUNTS, user_ids, since):
        out.setdefault(r[0], {})[r[1]] = (r[2], r[3])
    return out


CHANNEL_USE = f"""
SELECT d.category, d.channel, count(*)::int, count(o.at)::int,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY greatest(0, extract(epoch FROM o.at - d.completed_at))::float8)
           FILTER (WHERE o.at IS NOT NULL)
FROM delivery_tracking d
LEFT JOIN LATERAL (SELECT min(e.at) AS at FROM engagement_events e WHERE e.notification_id = d.notification_id
                   AND e.channel = d.channel AND e.type IN ('opened', 'clicked')) o ON true
WHERE d.user_id = $1 AND d.status IN ({sql_in(OPENABLE)})  -- a bounce had nothing to open
  AND d.completed_at >= to_timestamp($2) AND d.channel <> '*'
GROUP BY d.category, d.channel
"""


async def channel_use(conn: asyncpg.Connection, user_id: str, since: float) -> list[tuple]:
    """A user's sends per (category, channel) completed since ``since``, how many were
    opened or clicked, and the median seconds from send to first open: what preference
    suggestions read (``policy.suggestions.ChannelUse``)."""
    return [tuple(r) for r in await conn.fetch(CHANNEL_USE, user_id, since)]


__all__ = ["Engagement", "EventType", "MAX_CLOCK_AHEAD_S", "OPENABLE", "Report", "Stored", "as_entries",
           "channel_counts", "channel_use", "clock_error", "last_seen", "record", "sql_in", "stored_at", "timelines",
           "times"]
