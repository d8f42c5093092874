"""Retention against a real PostgreSQL (a throwaway schema per test): old rows of
each kind go and new ones stay; pending scheduled rows (and their notifications'
tracking rows and engagement events), buckets not sent, unpublished preference
changes, unread inbox messages, running jobs and the audit log are never
deleted; statements are bounded by ``batch``; a dry run counts the same rows and
deletes none; one run per schema at a time; the CLI and the Scheduler run it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import asyncpg
import msgspec
import pytest
import ray

from actors.scheduler import Scheduler
from engine import settings
from infra import config
from infra.config import RetentionConfig
from stores import retention, tracking as tracking_store
from tests.integration.helpers import migrated_schema

pytestmark = pytest.mark.integration

AGO = "now() - $1::float8 * interval '1 day'"  # $1: an age in days
CFG = RetentionConfig(tracking_days=30, scheduled_done_days=7, change_feed_days=30, inbox_read_days=90,
                      inbox_unread_days=0, jobs_days=30, batch=4)


@pytest.fixture
async def schema(database_url):
    async with migrated_schema(database_url, "t_ret_") as name:
        yield name


@pytest.fixture
async def conn(database_url, schema):
    c = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    yield c
    await c.close()


def nid() -> str:
    return str(uuid.uuid4())


async def tracking(conn, age: float, notification: str | None = None, channel: str = "email") -> str:
    notification = notification or nid()
    await conn.execute(
        "INSERT INTO delivery_tracking (notification_id, user_id, channel, category, status, reason, created_at) "
        f"VALUES ($2, 'u1', $3, 'messages', 'sent', 'sent', {AGO})", age, uuid.UUID(notification), channel)
    return notification


async def engagement(conn, age: float, notification: str) -> None:
    await conn.execute(
        "INSERT INTO engagement_events (notification_id, user_id, channel, type, at, source, created_at) "
        f"VALUES ($2, 'u1', 'email', 'opened', {AGO}, 'api', {AGO})", age, uuid.UUID(notification))


async def scheduled(conn, due_age: float, status: str, kind: str = "deferred", notification: str | None = None,
                    channel: str = "email", digest_key: str | None = None) -> int:
    return await conn.fetchval(
        "INSERT INTO scheduled_notifications (kind, notification_id, channel, user_id, category, digest_key, "
        f"due_at, request, status, created_at) VALUES ($2, $3, $4, 'u1', 'messages', $5, {AGO}, '\\x00', $6, "
        "now() - interval '400 days') RETURNING id",
        due_age, kind, uuid.UUID(notification or nid()), channel, digest_key, status)


async def bucket(conn, key: str, status: str, sent_age: float | None) -> None:
    await conn.execute(
        "INSERT INTO digest_buckets (key, user_id, channel, category, frequency, due_at, status, digest_id, "
        "created_at, sent_at) VALUES ($2, 'u1', 'email', 'messages', 'daily', now() - interval '400 days', $3, "
        f"$4, now() - interval '400 days', CASE WHEN $1::float8 IS NULL THEN NULL ELSE {AGO} END)",
        sent_age, key, status, uuid.uuid4())


async def change(conn, age: float, version: int, status: str) -> None:
    await conn.execute(
        "INSERT INTO preference_sync_log (user_id, version, sync_type, source, changes, sync_status, created_at) "
        f"VALUES ('u1', $2, 'put', 'api', '{{}}', $3, {AGO})", age, version, status)


async def inbox(conn, created_age: float, read_age: float | None) -> int:
    return await conn.fetchval(
        "INSERT INTO inbox_messages (user_id, notification_id, category, created_at, seen_at, read_at) "
        "VALUES ('u1', $3, 'messages', now() - $2::float8 * interval '1 day', "
        f"CASE WHEN $1::float8 IS NULL THEN NULL ELSE {AGO} END, CASE WHEN $1::float8 IS NULL THEN NULL ELSE {AGO} END) "
        "RETURNING seq", read_age, created_age, uuid.uuid4())


async def job(conn, status: str, finished_age: float | None) -> str:
    job_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO jobs (id, kind, status, created_at, finished_at) VALUES ($2, 'preferences.import', $3, "
        f"now() - interval '400 days', CASE WHEN $1::float8 IS NULL THEN NULL ELSE {AGO} END)",
        finished_age, job_id, status)
    return str(job_id)


async def ids(conn, table: str, key: str) -> set[str]:
    return {str(r[0]) for r in await conn.fetch(f"SELECT {key} FROM {table}")}


async def seed(conn) -> dict[str, tuple[set[str], set[str]]]:
    """Rows of every kind: {kind: (ids that must go, ids that must stay)}."""
    out: dict[str, tuple[set[str], set[str]]] = {}

    old, old_done = await tracking(conn, 40), await tracking(conn, 40)
    await scheduled(conn, 40, "done", notification=old_done)
    new = await tracking(conn, 1)
    deferred = await tracking(conn, 40)  # its send is still held
    await scheduled(conn, -1, "pending", notification=deferred)
    checked = await tracking(conn, 40)  # a fallback check still to read it
    await scheduled(conn, -1, "pending", kind="fallback", notification=checked, channel="fallback")
    item = await tracking(conn, 40)  # waiting in an open digest
    out["tracking"] = ({old, old_done}, {new, deferred, checked, item})

    await engagement(conn, 40, old)
    await engagement(conn, 1, new)
    await engagement(conn, 40, checked)
    out["engagement"] = ({old}, {new, checked})

    await conn.execute("INSERT INTO experiments (experiment_id, category, kind, variants, metric, min_sample, "
                       "confidence) VALUES ('e1', 'messages', 'content', '[]', 'opened', 10, 0.95)")
    for age, routed in ((40, old), (1, new)):
        await conn.execute("INSERT INTO user_experiment_participation (notification_id, experiment_id, user_id, "
                           f"variant, counted, assigned_at) VALUES ($2, 'e1', 'u1', 'a', true, {AGO})",
                           age, uuid.UUID(routed))
    out["experiments"] = ({old}, {new})

    await bucket(conn, "b-sent-old", "sent", 10)
    await bucket(conn, "b-sent-new", "sent", 1)
    await bucket(conn, "b-open", "open", None)
    await bucket(conn, "b-sealed", "sealed", None)
    await bucket(conn, "b-sent-pending", "sent", 10)  # an item still pending: kept
    await bucket(conn, "b-item", "open", None)
    out["digest_buckets"] = ({"b-sent-old"}, {"b-sent-new", "b-open", "b-sealed", "b-sent-pending", "b-item"})

    gone = {str(await scheduled(conn, 10, "done")), str(await scheduled(conn, 10, "done", kind="digest",
                                                                       digest_key="b-sent-old"))}
    kept = {str(await scheduled(conn, 1, "done")),  # created 400 days ago, but due (and done) yesterday
            str(await scheduled(conn, 100, "pending")),
            str(await scheduled(conn, 10, "pending", kind="digest", digest_key="b-sent-pending")),
            str(await scheduled(conn, 100, "pending", kind="digest", notification=item, digest_key="b-item"))}
    rows = await conn.fetch("SELECT id, notification_id::text FROM scheduled_notifications")
    by_note = {r[1]: str(r[0]) for r in rows}
    gone.add(by_note[old_done])
    kept |= {by_note[deferred], by_note[checked]}
    out["scheduled"] = (gone, kept)

    await change(conn, 40, 1, "completed")
    await change(conn, 1, 2, "completed")
    await change(conn, 100, 3, "pending")  # not yet published: never deleted
    await change(conn, 100, 4, "failed")
    versions = {r[1]: str(r[0]) for r in await conn.fetch("SELECT id, version FROM preference_sync_log")}
    out["change_feed"] = ({versions[1]}, {versions[2], versions[3], versions[4]})

    read_old = str(await inbox(conn, 200, 100))
    read_new = str(await inbox(conn, 200, 10))
    unread = str(await inbox(conn, 400, None))
    out["inbox_read"] = ({read_old}, {read_new, unread})

    out["jobs"] = ({await job(conn, "succeeded", 40), await job(conn, "failed", 40)},
                   {await job(conn, "running", None), await job(conn, "succeeded", 1)})

    sub = uuid.uuid4()
    await conn.execute("INSERT INTO event_subscriptions (id, url, master_id, secret, created_by) "
                       "VALUES ($1, 'https://example.com/h', 'm', '\\x00', 'test')", sub)
    letters = {}
    for age in (40, 1):
        letters[age] = uuid.uuid4()
        await conn.execute("INSERT INTO event_dead_letters (subscription_id, event_id, event, attempts, last_error, "
                           f"created_at) VALUES ($2, $3, '{{}}', 7, 'HTTP 500', {AGO})", age, sub, letters[age])
    out["event_dead_letters"] = ({str(letters[40])}, {str(letters[1])})

    await conn.execute("INSERT INTO preference_audit_log (user_id, action, hash, created_at) "
                       "VALUES ('u1', 'preferences.put', '\\x01', now() - interval '4000 days')")
    return out


TABLES = {"tracking": ("delivery_tracking", "notification_id"), "engagement": ("engagement_events", "notification_id"),
          "experiments": ("user_experiment_participation", "notification_id"),
          "scheduled": ("scheduled_notifications", "id"), "digest_buckets": ("digest_buckets", "key"),
          "change_feed": ("preference_sync_log", "id"), "inbox_read": ("inbox_messages", "seq"),
          "jobs": ("jobs", "id"), "event_dead_letters": ("event_dead_letters", "event_id")}


async def test_exactly_the_rows_past_their_keep_time_go(conn):
    expect = await seed(conn)
    before = {k: await ids(conn, *TABLES[k]) for k in TABLES}
    for kind, (gone, kept) in expect.items():
        assert gone | kept == before[kind], kind  # the seed names every row of the table

    counted = await retention.run(conn, CFG, dry_run=True)
    want = {k: len(expect[k][0]) for k in expect} | {"inbox_read": 1}
    assert counted == want  # inbox_unread is kept forever (0 days), so not even counted
    assert {k: await ids(conn, *TABLES[k]) for k in TABLES} == before  # a dry run deletes nothing

    assert await retention.run(conn, CFG) == want
    for kind, (_gone, kept) in expect.items():
        assert await ids(conn, *TABLES[kind]) == kept, kind
    assert await conn.fetchval("SELECT count(*) FROM preference_audit_log") == 1
    assert await retention.run(conn, CFG) == dict.fromkeys(want, 0)

    # The idempotency window: a notification whose rows went is no longer "recorded".
    old, = expect["engagement"][0]
    kept = expect["tracking"][1]
    assert set(await tracking_store.recorded(conn, [old, *kept])) == {(n, "email") for n in kept}


async def test_unread_inbox_messages_go_only_when_configured(conn):
    unread_old, unread_new = await inbox(conn, 400, None), await inbox(conn, 100, None)
    read_recent = await inbox(conn, 400, 1)
    assert await retention.run(conn, CFG) == dict.fromkeys(
        ("tracking", "engagement", "experiments", "scheduled", "digest_buckets", "change_feed", "inbox_read",
         "jobs", "event_dead_letters"), 0)
    cfg = msgspec.structs.replace(CFG, inbox_unread_days=365)
    assert (await retention.run(conn, cfg))["inbox_unread"] == 1
    assert await ids(conn, "inbox_messages", "seq") == {str(unread_new), str(read_recent)}
    assert unread_old not in await ids(conn, "inbox_messages", "seq")


class Recording:
    """A connection that keeps what each ``execute`` answered."""

    def __init__(self, conn):
        self.conn, self.results = conn, []

    async def execute(self, *args):
        result = await self.conn.execute(*args)
        self.results.append(result)
        return result


async def test_each_statement_deletes_at_most_batch_rows(conn):
    for _ in range(10):
        await tracking(conn, 40)
    kind = retention.KINDS[0]
    assert kind.name == "tracking"
    assert await conn.execute(retention.delete_sql(kind), 30, 3) == "DELETE 3"
    assert await conn.fetchval("SELECT count(*) FROM delivery_tracking") == 7
    # purge goes on past a full batch: 7 rows in batches of 3 are three statements
    recording = Recording(conn)
    assert await retention.purge(recording, kind, 30, 3) == 7
    assert recording.results == ["DELETE 3", "DELETE 3", "DELETE 1"]
    assert await conn.fetchval("SELECT count(*) FROM delivery_tracking") == 0


async def test_rows_another_transaction_holds_are_skipped_not_waited_for(conn, database_url, schema):
    held, free = await tracking(conn, 40), await tracking(conn, 40)
    other = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        async with other.transaction():
            await other.execute("SELECT 1 FROM delivery_tracking WHERE notification_id = $1 FOR UPDATE",
                                uuid.UUID(held))
            n = await asyncio.wait_for(retention.purge(conn, retention.KINDS[0], 30, 10), timeout=10)
        assert n == 1 and await ids(conn, "delivery_tracking", "notification_id") == {held}
        assert free not in await ids(conn, "delivery_tracking", "notification_id")
        assert await retention.purge(conn, retention.KINDS[0], 30, 10) == 1  # the next round takes it
    finally:
        await other.close()


async def test_one_run_per_schema_at_a_time(conn, database_url, schema):
    old = await tracking(conn, 40)
    other = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        await other.execute("SELECT pg_advisory_lock($1, hashtext(current_schema()))", retention.LOCK_CLASS)
        assert await retention.run(conn, CFG) is None
        assert await ids(conn, "delivery_tracking", "notification_id") == {old}
        assert (await retention.run(conn, CFG, dry_run=True))["tracking"] == 1  # counting needs no lock
        await other.execute("SELECT pg_advisory_unlock($1, hashtext(current_schema()))", retention.LOCK_CLASS)
        # the same lock taken for another schema does not stop this one
        await other.execute("SELECT pg_advisory_lock($1, hashtext('some_other_schema'))", retention.LOCK_CLASS)
        assert (await retention.run(conn, CFG))["tracking"] == 1
    finally:
        await other.close()
    assert not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = "
                                   "pg_backend_pid()")  # a run lets its lock go


def cli(database_url: str, schema: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(TIDINGS_DATABASE_URL=database_url, TIDINGS_DATABASE_SCHEMA=schema, COLUMNS="200",
               TIDINGS_RETENTION_INBOX_UNREAD_DAYS="0")
    return subprocess.run([sys.executable, "-m", "engine.cli", "retention", *args], env=env,
                          capture_output=True, text=True, timeout=120)


async def test_the_cli_counts_then_deletes(conn, database_url, schema):
    old, new = await tracking(conn, 40), await tracking(conn, 1)
    await change(conn, 40, 1, "completed")
    await change(conn, 40, 2, "pending")

    dry = cli(database_url, schema, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    counts = json.loads(dry.stdout)
    assert counts["tracking"] == 1 and counts["change_feed"] == 1 and "inbox_unread" not in counts
    assert await ids(conn, "delivery_tracking", "notification_id") == {old, new}

    done = cli(database_url, schema)
    assert done.returncode == 0, done.stderr
    rows = [line.replace("│", " ").replace("|", " ").split() for line in done.stdout.splitlines()]
    lines = {r[0]: r for r in rows if r}
    assert lines["tracking"][-1] == "1" and lines["change_feed"][-1] == "1"
    assert "forever" in lines["inbox_unread"]
    assert await ids(conn, "delivery_tracking", "notification_id") == {new}
    assert await conn.fetchval("SELECT count(*) FROM preference_sync_log WHERE sync_status = 'pending'") == 1


async def test_the_scheduler_runs_it_every_interval(conn, database_url, schema, ray_address):
    cfg = settings.load(profile="development", env={}, overrides={
        "database": {"url": database_url, "schema": schema}, "retention": {"interval_s": 0.2}})
    old, new = await tracking(conn, 40), await tracking(conn, 1)
    scheduler = ray.remote(Scheduler).remote(config.encode(cfg), database_url, [])
    try:
        await scheduler.start.remote()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and old in await ids(conn, "delivery_tracking", "notification_id"):
            await asyncio.sleep(0.1)
        assert await ids(conn, "delivery_tracking", "notification_id") == {new}
        await tracking(conn, 40)
        while time.monotonic() < deadline:
            info = await scheduler.info.remote()
            if info["retention_deleted"].get("tracking") == 2:
                break
            await asyncio.sleep(0.1)
        assert info["retention_deleted"] == {"tracking": 2} and info["retention_runs"] >= 2
    finally:
        await scheduler.stop.remote()
        ray.kill(scheduler)
