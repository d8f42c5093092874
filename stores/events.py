"""Status events in PostgreSQL: the outbox the triggers of migration 024 fill,
the webhook subscriptions (their signing secrets sealed under a master key),
and each subscription's dead letters."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence

import asyncpg
import msgspec

from infra import db
from infra.pii import Keyring, aad
from policy import events
from policy.events import StatusEvent

OUTBOX = """
SELECT seq, id::text, notification_id::text, user_id, channel, category, status, reason, provider,
       parent_id::text, extract(epoch FROM at)
FROM status_events ORDER BY seq LIMIT $1
"""


async def outbox(conn: asyncpg.Connection, limit: int) -> list[tuple[int, StatusEvent]]:
    """The oldest ``limit`` events waiting to be published, as (seq, event)."""
    return [(r[0], events.event(id=r[1], notification_id=r[2], user_id=r[3], channel=r[4], category=r[5],
                                status=r[6], reason=r[7], provider=r[8], parent_id=r[9], at=float(r[10])))
            for r in await conn.fetch(OUTBOX, limit)]


async def published(conn: asyncpg.Connection, seqs: Sequence[int]) -> None:
    await conn.execute(f"DELETE FROM status_events WHERE seq = {db.keys(1, 'bigint')}", list(seqs))


# -- subscriptions -----------------------------------------------------------------


class Subscription(msgspec.Struct, kw_only=True):
    id: str
    url: str
    description: str
    filters: events.Filters
    enabled: bool
    created_by: str
    created_at: float
    updated_at: float
    lost_events: int = 0  # events the stream dropped before this subscription's consumer read them
    master_id: str = ""
    sealed: bytes = b""


def _bound(subscription_id: str) -> bytes:
    return aad("event_subscription_secret", subscription_id)


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def secret_of(ring: Keyring, sub: Subscription) -> str:
    return ring.unwrap(sub.master_id, sub.sealed, _bound(sub.id)).decode()


COLUMNS = ("id::text, url, description, channels, statuses, categories, enabled, created_by, "
           "extract(epoch FROM created_at), extract(epoch FROM updated_at), master_id, secret, lost_events")


def _subscription(r) -> Subscription:
    return Subscription(id=r[0], url=r[1], description=r[2],
                        filters=events.Filters(channels=tuple(r[3]), statuses=tuple(r[4]), categories=tuple(r[5])),
                        enabled=r[6], created_by=r[7], created_at=float(r[8]), updated_at=float(r[9]),
                        master_id=r[10], sealed=bytes(r[11]), lost_events=r[12])


async def create(conn: asyncpg.Connection, ring: Keyring, url: str, description: str, filters: events.Filters,
                 enabled: bool, secret: str, actor: str) -> Subscription:
    sid = str(uuid.uuid4())
    master_id, sealed = ring.wrap(secret.encode(), _bound(sid))
    row = await conn.fetchrow(
        f"INSERT INTO event_subscriptions (id, url, description, channels, statuses, categories, enabled, "
        f"master_id, secret, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {COLUMNS}",
        sid, url, description, list(filters.channels), list(filters.statuses), list(filters.categories), enabled,
        master_id, sealed, actor)
    return _subscription(row)


async def get(conn: asyncpg.Connection, sid: str) -> Subscription | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM event_subscriptions WHERE id = $1", sid)
    return None if row is None else _subscription(row)


async def every(conn: asyncpg.Connection, after: str | None = None, limit: int = 1000) -> list[Subscription]:
    """Subscriptions in id order, ``limit`` of them after ``after`` (a page)."""
    rows = await conn.fetch(f"SELECT {COLUMNS} FROM event_subscriptions WHERE $1::uuid IS NULL OR id > $1::uuid "
                            "ORDER BY id LIMIT $2", after, limit)
    return [_subscription(r) for r in rows]


async def all_of_them(conn: asyncpg.Connection, page: int = 1000) -> list[Subscription]:
    """Every subscription, read a page at a time."""
    out: list[Subscription] = []
    while batch := await every(conn, out[-1].id if out else None, page):
        out += batch
        if len(batch) < page:
            break
    return out


async def count_lost(conn: asyncpg.Connection, sid: str, n: int) -> None:
    """``n`` more events the stream dropped before the subscription read them."""
    await conn.execute("UPDATE event_subscriptions SET lost_events = lost_events + $2 WHERE id = $1", sid, n)


async def update(conn: asyncpg.Connection, ring: Keyring, sid: str, *, url: str | None = None,
                 description: str | None = None, filters: events.Filters | None = None,
                 enabled: bool | None = None, secret: str | None = None) -> Subscription | None:
    """Change what is given; None when there is no such subscription."""
    master_id, sealed = ring.wrap(secret.encode(), _bound(sid)) if secret is not None else (None, None)
    f = filters
    row = await conn.fetchrow(
        "UPDATE event_subscriptions SET url = coalesce($2, url), description = coalesce($3, description), "
        "channels = coalesce($4, channels), statuses = coalesce($5, statuses), "
        "categories = coalesce($6, categories), enabled = coalesce($7, enabled), "
        "master_id = coalesce($8, master_id), secret = coalesce($9, secret), updated_at = now() "
        f"WHERE id = $1 RETURNING {COLUMNS}",
        sid, url, description, None if f is None else list(f.channels), None if f is None else list(f.statuses),
        None if f is None else list(f.categories), enabled, master_id, sealed)
    return None if row is None else _subscription(row)


async def delete(conn: asyncpg.Connection, sid: str) -> bool:
    return await conn.fetchval("DELETE FROM event_subscriptions WHERE id = $1 RETURNING true", sid) is not None


# -- dead letters ------------------------------------------------------------------


async def dead_letter(conn: asyncpg.Connection, sid: str, e: StatusEvent, attempts: int, error: str, *,
                      add: bool = False) -> None:
    """Keep an event its subscription's URL never took (once per event). ``add``
    (a replay refused again): its attempts add to the count, else they replace
    it (the same event dead-lettered again after a redelivery)."""
    await conn.execute(
        "INSERT INTO event_dead_letters AS d (subscription_id, event_id, event, attempts, last_error) "
        "SELECT $1, $2, $3::jsonb, $4, $5 WHERE EXISTS (SELECT 1 FROM event_subscriptions WHERE id = $1) "
        "ON CONFLICT (subscription_id, event_id) DO UPDATE SET "
        "attempts = CASE WHEN $6 THEN d.attempts + EXCLUDED.attempts ELSE EXCLUDED.attempts END, "
        "last_error = EXCLUDED.last_error, created_at = now()",
        sid, e.id, events.ENCODER.encode(e).decode(), attempts, error, add)


class DeadLetter(msgspec.Struct, kw_only=True):
    event: StatusEvent
    attempts: int
    last_error: str
    dead_lettered_at: float
    cursor: str  # where the page after this row starts: "<microseconds since the epoch>.<event id>"


CURSOR = r"^[0-9]{1,17}\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"
MICROS = "(extract(epoch FROM created_at) * 1000000)::bigint"
AT_MICROS = "(to_timestamp(0) + $2::bigint * interval '1 microsecond')"  # exact: µs below 2**53


async def dead_letters(conn: asyncpg.Connection, sid: str, limit: int, before: str | None = None
                       ) -> list[DeadLetter]:
    """The newest first, ``limit`` of them after the cursor ``before`` (a row's
    ``cursor``; rows dead-lettered in the same microsecond are told apart by
    their event id, so a page never skips one)."""
    micros, event_id = (int(before.split(".")[0]), before.split(".")[1]) if before else (None, None)
    rows = await conn.fetch(
        f"SELECT event::text, attempts, last_error, {MICROS}, event_id::text FROM event_dead_letters "
        f"WHERE subscription_id = $1 AND ($2::bigint IS NULL OR (created_at, event_id) < ({AT_MICROS}, $3::uuid)) "
        "ORDER BY created_at DESC, event_id DESC LIMIT $4", sid, micros, event_id, limit)
    return [DeadLetter(event=events.DECODER.decode(r[0]), attempts=r[1], last_error=r[2],
                       dead_lettered_at=r[3] / 1e6, cursor=f"{r[3]}.{r[4]}") for r in rows]


async def oldest_dead_letters(conn: asyncpg.Connection, sid: str, limit: int) -> list[tuple[StatusEvent, int]]:
    """The oldest ``limit`` dead letters, as (event, attempts so far)."""
    rows = await conn.fetch("SELECT event::text, attempts FROM event_dead_letters WHERE subscription_id = $1 "
                            "ORDER BY created_at, event_id LIMIT $2", sid, limit)
    return [(events.DECODER.decode(r[0]), r[1]) for r in rows]


async def forget_dead_letter(conn: asyncpg.Connection, sid: str, event_id: str) -> None:
    await conn.execute("DELETE FROM event_dead_letters WHERE subscription_id = $1 AND event_id = $2", sid, event_id)


TRIGGERS = (("delivery_tracking", "status_events_inserted"), ("delivery_tracking", "status_events_updated"),
            ("engagement_events", "status_events_engaged"))


async def switch(conn: asyncpg.Connection, on: bool) -> None:
    """Turn the outbox's triggers on or off (``events.enabled``): off, no
    event is written, so none piles up with nothing to publish it. Only what
    differs is altered (ALTER TABLE locks the table for a moment)."""
    state = {r[0]: r[1] != "D" for r in await conn.fetch(
        "SELECT tgname, tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE c.relnamespace = current_schema()::regnamespace AND tgname = ANY($1::text[])",
        [name for _, name in TRIGGERS])}
    for table, name in TRIGGERS:
        if state.get(name, on) != on:
            await conn.execute(f"ALTER TABLE {table} {'ENABLE' if on else 'DISABLE'} TRIGGER {name}")
