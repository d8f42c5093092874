"""Deferred and digest notifications in PostgreSQL.

Holding: a notification deferred (quiet hours, time windows) or collected for a
digest gets a ``scheduled_notifications`` row and its tracking row (``deferred``
or ``digested``) in one transaction, so the NATS message may be acked.

Digest exactly-once rests on three things:
- an item joins a bucket only while the bucket is ``open``, under ``FOR SHARE``;
  sealing updates the row, so it waits for those inserts and later ones see
  ``sealed`` and go to the next period's bucket — no item is left behind a seal;
- the bucket's items are fixed once it is sealed, and the digest's id is the
  bucket's ``digest_id``: a retry sends the same id, which the tracking row's
  unique (notification, channel) lets through once;
- items are marked done (retention deletes done rows only after
  ``scheduled_done_days``; the item's tracking row, kept at least as long as
  JetStream may redeliver, is what stops a redelivery), and ``(notification,
  channel)`` is unique: a redelivered item cannot join a second bucket.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence

import asyncpg
import msgspec

from infra import db
from policy.cancel import FALLBACK_CHANNEL  # a fallback check has no channel of its own: its row's channel
from policy.held import Due, DueDeferred, DueDigest, DueFallback, Held, HeldDeferred, HeldDigest, HeldFallback
from policy.release import digest_id
from policy.types import DigestKey, Outcome
from stores import tracking

log = logging.getLogger(__name__)

TRACK = """
INSERT INTO delivery_tracking (notification_id, user_id, channel, category, priority, status, reason,
                               accepted_at, completed_at, parent_id, digest_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, to_timestamp($8), now(), $9, $10)
ON CONFLICT (notification_id, channel) DO UPDATE SET reason = EXCLUDED.reason, updated_at = now()
WHERE delivery_tracking.status = 'deferred' AND EXCLUDED.status = 'deferred'
"""
# A held row upserted again is a release holding it again (a retry, a later
# window): that settles one claim (``settled``), never more than were made, so
# a claim older than the one re-holding (its lease ran out while it was still
# sending) stays unsettled and ``cancel`` leaves the row to it (migration 026).
SCHEDULE = """
INSERT INTO scheduled_notifications (kind, notification_id, channel, user_id, category, digest_key, due_at, request)
VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7), $8)
ON CONFLICT (notification_id, channel) DO UPDATE SET due_at = EXCLUDED.due_at, claimed_until = NULL,
    status = 'pending', request = EXCLUDED.request,
    settled = LEAST(scheduled_notifications.settled + 1, scheduled_notifications.claims)
WHERE scheduled_notifications.kind = 'deferred' AND EXCLUDED.kind = 'deferred'
"""


def _channel(it: Held) -> str:
    return FALLBACK_CHANNEL if isinstance(it, HeldFallback) else it.channel


def _key(it: Held) -> str | None:
    return it.key.text() if isinstance(it, HeldDigest) else None


async def hold(conn: asyncpg.Connection, items: Sequence[Held],
               next_bucket: Callable[[HeldDigest], tuple[DigestKey, float]]) -> list[Held]:
    """Write held items and their tracking rows in one transaction. A digest item
    whose bucket is sealed moves to the next period (``next_bucket`` gives the
    following bucket's key and due time). Returns the items as written."""
    async with conn.transaction():
        for it in items:
            if isinstance(it, HeldDigest):
                await _join_bucket(conn, it, next_bucket)
        await conn.executemany(SCHEDULE, [  # a held item's tag is its row's kind
            (it.__struct_config__.tag, it.notification_id, _channel(it), it.user_id, it.category, _key(it),
             it.due_at, it.request)
            for it in items])
        await conn.executemany(TRACK, [
            (it.notification_id, it.user_id, it.channel, it.category, it.priority,
             "deferred" if isinstance(it, HeldDeferred) else "digested", it.reason, it.accepted_at or None,
             uuid.UUID(it.parent_id) if it.parent_id else None,
             uuid.UUID(it.digest_id) if isinstance(it, HeldDigest) and it.digest_id else None)
            for it in items if not isinstance(it, HeldFallback)])  # a fallback check has no channel yet
    return list(items)


async def _join_bucket(conn: asyncpg.Connection, it: HeldDigest, next_bucket) -> None:
    for _ in range(64):  # a bucket per period; sealed ones are skipped
        key = it.key.text()
        await conn.execute(
            "INSERT INTO digest_buckets (key, user_id, channel, category, frequency, due_at, digest_id) "
            "VALUES ($1, $2, $3, $4, $5, to_timestamp($6), $7) ON CONFLICT (key) DO NOTHING",
            key, it.user_id, it.channel, it.category, it.key.frequency, it.due_at, uuid.UUID(digest_id(it.key)))
        status = await conn.fetchval("SELECT status FROM digest_buckets WHERE key = $1 FOR SHARE", key)
        if status == "open":
            it.digest_id = digest_id(it.key)
            return
        it.key, it.due_at = next_bucket(it)
    raise RuntimeError(f"no open digest bucket after 64 periods for {it.key.text()}")


# $3: the time it is (the database's clock unless a test passes its own)
CLAIM_DEFERRED = """
UPDATE scheduled_notifications SET claimed_until = COALESCE(to_timestamp($3), now()) + make_interval(secs => $2),
    claims = claims + 1
WHERE id IN (SELECT id FROM scheduled_notifications
             WHERE status = 'pending' AND kind IN ('deferred', 'fallback')
               AND due_at <= COALESCE(to_timestamp($3), now())
               AND (claimed_until IS NULL OR claimed_until < COALESCE(to_timestamp($3), now()))
             ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING user_id, notification_id::text, channel, request, kind
"""
CLAIM_BUCKETS = """
UPDATE digest_buckets SET claimed_until = COALESCE(to_timestamp($3), now()) + make_interval(secs => $2)
WHERE key IN (SELECT key FROM digest_buckets
              WHERE status <> 'sent' AND due_at <= COALESCE(to_timestamp($3), now())
                AND (claimed_until IS NULL OR claimed_until < COALESCE(to_timestamp($3), now()))
              ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING user_id, key, channel
"""


def _due(kind: str, user_id: str, nid: str, channel: str, request: bytes) -> Due:
    if kind == "fallback":
        return DueFallback(user_id, nid, request)
    return DueDeferred(user_id, nid, channel, request)


async def claim_due(conn: asyncpg.Connection, limit: int, lease_s: float, at: float | None = None) -> list[Due]:
    """Due deferred rows, fallback checks and digest buckets, leased for
    ``lease_s`` (a Scheduler that dies leaves them to be claimed again when the
    lease ends). ``at``: the time it is, for tests; the database's clock by default."""
    out = [_due(r[4], r[0], r[1], r[2], bytes(r[3])) for r in await conn.fetch(CLAIM_DEFERRED, limit, lease_s, at)]
    for user_id, key, _ in await conn.fetch(CLAIM_BUCKETS, limit, lease_s, at):
        try:
            out.append(DueDigest(user_id, DigestKey.parse(key)))
        except ValueError:  # not a key the engine wrote: it alone stays claimed, the rest go on
            log.warning("digest bucket %r: not a bucket key; skipped", key)
    return out


async def seal(conn: asyncpg.Connection, key: DigestKey) -> list[tuple[str, bytes]]:
    """Seal a bucket (no item joins it after this) and return its pending items
    as (notification id, request), oldest first."""
    text = key.text()
    await conn.execute("UPDATE digest_buckets SET status = 'sealed' WHERE key = $1 AND status = 'open'", text)
    return [(r[0], bytes(r[1])) for r in await conn.fetch(
        "SELECT notification_id::text, request FROM scheduled_notifications "
        "WHERE digest_key = $1 AND status = 'pending' ORDER BY id", text)]


FINAL = """
INSERT INTO delivery_tracking (notification_id, user_id, channel, category, priority, status, reason, provider,
                               provider_message_id, attempts, timeline, errors, accepted_at, completed_at, parent_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12::jsonb, to_timestamp($13), to_timestamp($14), $15)
ON CONFLICT (notification_id, channel) DO UPDATE SET status = EXCLUDED.status, reason = EXCLUDED.reason,
    provider = EXCLUDED.provider, provider_message_id = EXCLUDED.provider_message_id,
    attempts = EXCLUDED.attempts, timeline = EXCLUDED.timeline, errors = EXCLUDED.errors,
    completed_at = EXCLUDED.completed_at,
    updated_at = now()
WHERE delivery_tracking.status = 'deferred'
   OR (delivery_tracking.status = 'cancelled' AND EXCLUDED.status = 'sent')
"""
# A 'sent' outcome replaces 'cancelled': a release that sent a channel a cancel
# had already recorded cancelled (the window docs/design.md names) records the
# truth, and its status event ('sent') follows from the trigger.


async def finish(conn: asyncpg.Connection, outcomes: Sequence[Outcome], deferred_done: Sequence[tuple[str, str]],
                 buckets_sent: Sequence[tuple[DigestKey, Sequence[str]]]) -> None:
    """In one transaction: the final tracking rows of released notifications
    (replacing their ``deferred`` rows), the deferred rows and fallback checks
    done ((notification, channel) pairs; a check's channel is
    ``FALLBACK_CHANNEL``), and each sent bucket with the items it carried done."""
    async with conn.transaction():
        if outcomes:  # in one order everywhere (as hold() does): two releases cannot deadlock
            await conn.executemany(FINAL, [_final_row(o) for o in sorted(
                outcomes, key=lambda o: (o.notification_id, o.channel))])
        if deferred_done:
            await conn.execute(
                "UPDATE scheduled_notifications SET status = 'done' WHERE kind IN ('deferred', 'fallback') AND "
                # the ids alone, to be probed by index; the pairs pick the rows
                f"notification_id = {db.keys(1, 'uuid')} AND "
                "(notification_id, channel) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))",
                [uuid.UUID(n) for n, _ in deferred_done], [c for _, c in deferred_done])
        for key, ids in buckets_sent:
            await conn.execute(
                "UPDATE scheduled_notifications SET status = 'done' WHERE digest_key = $1 "
                f"AND notification_id = {db.keys(2, 'uuid')}", key.text(), [uuid.UUID(i) for i in ids])
            await conn.execute(
                "UPDATE digest_buckets SET status = 'sent', sent_at = now() WHERE key = $1", key.text())


def _final_row(o: Outcome) -> tuple:
    reason, provider, message_id, timeline, errors = tracking.columns(o)
    return (uuid.UUID(o.notification_id), o.user_id, o.channel, o.category, o.priority, o.status, reason,
            provider, message_id, len(o.attempts), timeline, errors, o.accepted_at or None, o.completed_at,
            uuid.UUID(o.parent_id) if o.parent_id else None)


LOCK_HELD = """
SELECT channel, kind, digest_key, claimed_until IS NOT NULL OR claims > settled AS claimed
FROM scheduled_notifications WHERE notification_id = $1 AND status = 'pending'
ORDER BY channel FOR UPDATE
"""
LOCK_BUCKETS = f"""
SELECT key, status, claimed_until IS NOT NULL AS claimed FROM digest_buckets
WHERE key = {db.keys(1, 'text')} ORDER BY key FOR SHARE
"""
CANCEL_TRACKING = """
UPDATE delivery_tracking SET status = 'cancelled', reason = 'cancelled', digest_id = NULL, completed_at = now(),
    updated_at = now()
WHERE notification_id = $1 AND channel = ANY($2::text[]) AND status IN ('deferred', 'digested')
RETURNING channel
"""


class Cancelled(msgspec.Struct, frozen=True):
    """What ``cancel`` found and did: each channel's tracking status after it,
    the held channels (``FALLBACK_CHANNEL``: a fallback check) it cancelled, and
    those it left to a release that has them."""

    statuses: dict[str, str]
    cancelled: set[str]
    releasing: set[str]
    earlier: set[str] = msgspec.field(default_factory=set)  # held rows an earlier cancel took (a fallback check)
    rejected: str | None = None  # the status of the Ingestor's rejection row (channel '*'), not a channel

    @property
    def known(self) -> bool:
        return bool(self.statuses or self.cancelled or self.releasing or self.earlier or self.rejected)


async def cancel(conn: asyncpg.Connection, nid: uuid.UUID, tries: int = 3) -> Cancelled:
    """``cancel_once``, again after a deadlock PostgreSQL broke (a release
    holding the same rows in another order: its transaction goes on)."""
    for attempt in range(tries):
        try:
            return await cancel_once(conn, nid)
        except asyncpg.exceptions.DeadlockDetectedError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


async def cancel_once(conn: asyncpg.Connection, nid: uuid.UUID) -> Cancelled:
    """Cancel what of notification ``nid`` is still held, in one transaction.

    A held row is decided once, under its row lock: the Scheduler claims only
    ``pending`` rows no one holds (``FOR UPDATE SKIP LOCKED``), so a row locked
    here is either claimed already (``claimed_until`` set, or a claim not yet
    settled: ``claims > settled``, e.g. a claim whose lease ran out while it was
    still sending and whose row a later claim held again; a release may be
    sending it; it is left to that release, whose ``finish`` marks it done) or
    never will be, and is marked done (``cancelled_at`` set) with its tracking
    row ``cancelled`` in the same commit. A digest item is cancelled only while its bucket is ``open``
    and unclaimed, under a share lock that a seal waits for. Lock order: held
    rows, buckets, tracking rows (``finish`` takes tracking rows first only for
    rows it claimed, which are not touched here)."""
    async with conn.transaction():
        held = await conn.fetch(LOCK_HELD, nid)
        keys = sorted({r["digest_key"] for r in held if r["kind"] == "digest" and r["digest_key"]})
        buckets = {r["key"]: (r["status"], r["claimed"]) for r in await conn.fetch(LOCK_BUCKETS, keys)} \
            if keys else {}
        take: set[str] = set()
        busy: set[str] = set()
        for r in held:
            bucket = buckets.get(r["digest_key"]) if r["kind"] == "digest" else None
            taken = r["claimed"] or (bucket is not None and (bucket[0] != "open" or bucket[1]))
            (busy if taken else take).add(r["channel"])
        if take:
            await conn.execute("UPDATE scheduled_notifications SET status = 'done', cancelled_at = now() "
                               "WHERE notification_id = $1 AND channel = ANY($2::text[]) AND status = 'pending'",
                               nid, sorted(take))
            # a held row whose tracking row is final already had nothing left to send: done, not reported
            take = {r[0] for r in await conn.fetch(CANCEL_TRACKING, nid, sorted(take - {FALLBACK_CHANNEL}))} \
                | (take & {FALLBACK_CHANNEL})
        statuses = {r[0]: r[1] for r in await conn.fetch(
            "SELECT channel, status FROM delivery_tracking WHERE notification_id = $1", nid)}
        rejected = statuses.pop("*", None)  # the Ingestor's rejection row: not a channel
        # a fallback check has no tracking row: one an earlier cancel took is found by its mark
        earlier = {r[0] for r in await conn.fetch(
            "SELECT channel FROM scheduled_notifications WHERE notification_id = $1 AND channel = $2 "
            "AND status = 'done' AND cancelled_at IS NOT NULL", nid, FALLBACK_CHANNEL)} - take
    return Cancelled(statuses=statuses, cancelled=take, releasing=busy, earlier=earlier, rejected=rejected)


BACKLOG = """
SELECT kind, count(*) FILTER (WHERE due_at <= now()), count(*) FILTER (WHERE due_at > now()),
       EXTRACT(EPOCH FROM now() - min(due_at) FILTER (WHERE due_at <= now()))
FROM scheduled_notifications WHERE status = 'pending' AND kind IN ('deferred', 'fallback') GROUP BY kind
UNION ALL
SELECT 'digest', count(*) FILTER (WHERE due_at <= now()), count(*) FILTER (WHERE due_at > now()),
       EXTRACT(EPOCH FROM now() - min(due_at) FILTER (WHERE due_at <= now()))
FROM digest_buckets WHERE status <> 'sent'
"""


async def backlog(conn: asyncpg.Connection) -> tuple[dict[tuple[str, str], int], float]:
    """What is held, for the metrics: {(kind, "due" | "waiting"): rows} for the
    deferred rows, fallback checks and digest buckets (over their partial
    indexes), and how long the oldest due one has waited past its time (0: none)."""
    counts = {(kind, state): 0 for kind in ("deferred", "fallback", "digest") for state in ("due", "waiting")}
    overdue = 0.0
    for kind, due, waiting, late in await conn.fetch(BACKLOG):
        counts[(kind, "due")] += due
        counts[(kind, "waiting")] += waiting
        overdue = max(overdue, float(late or 0.0))
    return counts, overdue
