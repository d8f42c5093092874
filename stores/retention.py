"""Retention: delete rows older than ``[retention]`` says, in bounded batches.

Each kind of row is a table, the columns that identify a row and a condition on its age; ``run``
deletes ``batch`` rows per statement (each its own short transaction, rows
another transaction holds are skipped, not waited for) until none is left, and
returns how many went per kind. The age comes from the database's clock.

Never deleted, whatever the settings:

* a tracking row or engagement event of a notification that still has a
  pending scheduled row (a deferred send, a digest item, a fallback check that
  reads them when it is due);
* scheduled rows not ``done``; digest buckets not ``sent`` or with an item still
  pending;
* preference changes not yet published (``sync_status <> 'completed'``: the
  relay still has to publish them);
* unread inbox messages, unless ``inbox_unread_days`` is set; running jobs;
* the preference audit log (append-only and hash-chained; a database rule makes
  a DELETE on it do nothing).

Tracking rows are also the long idempotency window: a notification id (the
producer's, or derived from its idempotency key) is delivered again once its
tracking rows are gone. ``infra.config.check_retention`` keeps that window at
least as long as JetStream may redeliver a message.

Several engines may run it at once: a session advisory lock per schema lets one
run at a time; the others skip the round.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from infra.config import RetentionConfig

# pg_try_advisory_lock(LOCK_CLASS, hashtext(current_schema())): one run per schema.
LOCK_CLASS = 0x74726574  # "tret"

NO_PENDING_SCHEDULE = ("NOT EXISTS (SELECT 1 FROM scheduled_notifications s "
                       "WHERE s.notification_id = t.notification_id AND s.status = 'pending')")


@dataclass(frozen=True)
class Kind:
    """Rows of ``table`` (alias ``t``) matching ``where`` are past their keep time;
    ``key`` is the columns that identify a row;
    ``where`` compares their age with ``{cutoff}``, the days of the setting named
    ``setting`` before now."""

    name: str
    table: str
    key: tuple[str, ...]
    where: str
    setting: str


KINDS = (
    Kind("tracking", "delivery_tracking", ("notification_id", "channel"),
         "t.created_at < {cutoff} AND " + NO_PENDING_SCHEDULE, "tracking_days"),
    Kind("engagement", "engagement_events", ("id",),
         "t.created_at < {cutoff} AND " + NO_PENDING_SCHEDULE, "tracking_days"),
    # who got which variant goes with the outcomes it is counted by: an experiment's
    # results cover the tracking rows kept (policy/experiments.py)
    Kind("experiments", "user_experiment_participation", ("notification_id",),
         "t.assigned_at < {cutoff} AND " + NO_PENDING_SCHEDULE, "tracking_days"),
    Kind("scheduled", "scheduled_notifications", ("id",),
         "t.status = 'done' AND t.due_at < {cutoff}", "scheduled_done_days"),
    Kind("digest_buckets", "digest_buckets", ("key",),
         "t.status = 'sent' AND t.sent_at < {cutoff} AND NOT EXISTS (SELECT 1 FROM scheduled_notifications s "
         "WHERE s.kind = 'digest' AND s.digest_key = t.key AND s.status = 'pending')", "scheduled_done_days"),
    Kind("change_feed", "preference_sync_log", ("id",),
         "t.sync_status = 'completed' AND t.created_at < {cutoff}", "change_feed_days"),
    Kind("inbox_read", "inbox_messages", ("seq",),
         "t.read_at IS NOT NULL AND t.read_at < {cutoff}", "inbox_read_days"),
    Kind("inbox_unread", "inbox_messages", ("seq",),
         "t.read_at IS NULL AND t.created_at < {cutoff}", "inbox_unread_days"),
    Kind("jobs", "jobs", ("id",),
         "t.status <> 'running' AND t.finished_at < {cutoff}", "jobs_days"),
    # keyed by (subscription, event): the row's ctid stands in for a one-column key
    Kind("event_dead_letters", "event_dead_letters", ("ctid",),
         "t.created_at < {cutoff}", "event_dead_letter_days"),
)


def where_sql(kind: Kind) -> str:
    """``kind``'s condition with $1 as its days."""
    return kind.where.format(cutoff="now() - make_interval(days => $1)")


def delete_sql(kind: Kind) -> str:
    """$1: days, $2: rows per statement. SKIP LOCKED: a row a writer (or another
    run) holds is left for the next round instead of waited on."""
    return (f"DELETE FROM {kind.table} WHERE ({', '.join(kind.key)}) IN (SELECT {', '.join('t.' + c for c in kind.key)} "
            f"FROM {kind.table} t WHERE {where_sql(kind)} LIMIT $2 FOR UPDATE OF t SKIP LOCKED)")


def count_sql(kind: Kind) -> str:
    return f"SELECT count(*) FROM {kind.table} t WHERE {where_sql(kind)}"


def active(cfg: RetentionConfig) -> list[tuple[Kind, int]]:
    """The kinds with a keep time (0 days: kept forever), with their days."""
    return [(k, getattr(cfg, k.setting)) for k in KINDS if getattr(cfg, k.setting)]


async def purge(conn: asyncpg.Connection, kind: Kind, days: int, batch: int) -> int:
    """Delete ``kind``'s rows older than ``days``, ``batch`` per statement; the count."""
    sql, total = delete_sql(kind), 0
    while True:
        n = int((await conn.execute(sql, days, batch)).split()[-1])
        total += n
        if n < batch:
            return total


async def count(conn: asyncpg.Connection, kind: Kind, days: int) -> int:
    return await conn.fetchval(count_sql(kind), days)


async def run(conn: asyncpg.Connection, cfg: RetentionConfig, *, dry_run: bool = False) -> dict[str, int] | None:
    """Delete (or with ``dry_run`` only count) what is past its keep time, per kind;
    kinds kept forever are left out. None when another run holds the lock."""
    if dry_run:
        return {k.name: await count(conn, k, days) for k, days in active(cfg)}
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext(current_schema()))", LOCK_CLASS):
        return None
    try:
        return {k.name: await purge(conn, k, days, cfg.batch) for k, days in active(cfg)}
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, hashtext(current_schema()))", LOCK_CLASS)
