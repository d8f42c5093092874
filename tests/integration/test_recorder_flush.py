"""The Recorder's batching against a real PostgreSQL: rows that arrive while a
flush runs wait for company only until that flush ends, not for the whole
linger (the commit segment's tail at low load, bench/RESULTS.md)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import msgspec
import pytest

from engine import migrations
from infra.config import RecorderConfig
from policy import wire
from policy.types import Attempt, Outcome
from tests.integration.helpers import drop_schema

pytestmark = pytest.mark.integration


def outcome() -> Outcome:
    return Outcome(str(uuid.uuid4()), "u-flush", "webhook", "job_alerts", "sent", "ok", 1.0, 2.0)


@pytest.fixture
async def schema(database_url):
    name = "t_recflush_" + uuid.uuid4().hex[:10]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        await migrations.migrate(conn, name)
    finally:
        await conn.close()
    yield name
    await drop_schema(database_url, name)


async def test_a_row_that_comes_during_a_flush_goes_when_that_flush_ends_not_after_the_linger(
        ray_address, database_url, schema):
    import ray

    from actors.recorder import Recorder

    # a linger far longer than the test may wait: only the end of the running flush can release the row
    cfg = msgspec.msgpack.encode(RecorderConfig(flush_rows=10_000, linger_ms=600_000))
    rec = ray.remote(Recorder).options(max_concurrency=100).remote(database_url, schema, cfg)
    await rec.warm.remote()
    first, second = outcome(), outcome()
    blocker = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        # an uncommitted row with the first one's key: its INSERT … ON CONFLICT waits on this lock
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("INSERT INTO delivery_tracking (notification_id, user_id, channel, category, "
                              "priority, status, reason) VALUES ($1, 'u-flush', 'webhook', 'job_alerts', "
                              "'normal', 'sent', 'ok')", uuid.UUID(first.notification_id))
        held = rec.record.remote(wire.encode([first]))
        for _ in range(200):  # until the first flush is running (and waiting on the lock)
            if (await rec.stats.remote())["pending"] == 0:
                break
            await asyncio.sleep(0.05)
        waiting = rec.record.remote(wire.encode([second]))
        await asyncio.sleep(0.5)
        assert (await rec.stats.remote())["pending"] == 1  # it waits for company while the flush runs
        await tx.rollback()  # the first flush goes on and ends
        # bounded only so that a regression (waiting out the linger) fails instead of hanging the suite
        committed = await asyncio.wait_for(asyncio.gather(held, waiting), 60)
        assert all(isinstance(c, float) for c in committed)
        rows = await blocker.fetchval("SELECT count(*) FROM delivery_tracking WHERE notification_id = ANY($1)",
                                      [uuid.UUID(first.notification_id), uuid.UUID(second.notification_id)])
        assert rows == 2
    finally:
        await blocker.close()
        await rec.close.remote()
        ray.kill(rec)


def rich(nid: str, parent: str | None) -> Outcome:
    """An outcome with every column filled, and text a provider might have sent (a NUL)."""
    return Outcome(nid, "u-\u00e9", "webhook", "job_alerts", "failed", "provider.error", 1_700_000_000.25,
                   1_700_000_001.5, provider="http-sink", provider_message_id="m-1",
                   attempts=[Attempt("http-sink", False, 1_700_000_000.5, 12.5, "HTTP 500 \x00 oops", "server"),
                             Attempt("http-sink", False, 1_700_000_001.0, 3.0, None, "timeout")],
                   priority="high", detail="a detail \x00 here", parent_id=parent)


COMPARED = ("user_id", "channel", "category", "priority", "status", "reason", "provider", "provider_message_id",
            "attempts", "timeline", "errors", "accepted_at", "completed_at", "parent_id")


async def test_a_small_flush_in_one_statement_stores_what_a_copied_one_stores(ray_address, database_url, schema):
    """Flushes of up to SMALL_FLUSH rows are one INSERT … unnest (one round trip);
    larger ones COPY through the staging table. Both store the same row for the
    same outcome, and both keep the first row of a (notification, channel)."""
    import ray

    from actors.recorder import SMALL_FLUSH, Recorder

    cfg = msgspec.msgpack.encode(RecorderConfig(flush_rows=10_000, linger_ms=0))
    rec = ray.remote(Recorder).options(max_concurrency=100).remote(database_url, schema, cfg)
    parent = str(uuid.uuid4())
    small = [rich(str(uuid.uuid4()), parent), rich(str(uuid.uuid4()), None)]
    large = [rich(str(uuid.uuid4()), parent), rich(str(uuid.uuid4()), None)]
    filler = [outcome() for _ in range(SMALL_FLUSH + 1)]
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        await rec.record.remote(wire.encode(small))
        await rec.record.remote(wire.encode(large + filler))
        again = msgspec.structs.replace(small[0], status="sent", reason="ok")
        await rec.record.remote(wire.encode([again]))  # a repeat: the first row stays
        rows = {str(r["notification_id"]): r for r in await conn.fetch(
            f"SELECT notification_id, {', '.join(COMPARED)} FROM delivery_tracking WHERE notification_id = ANY($1)",
            [uuid.UUID(o.notification_id) for o in small + large])}
        assert len(rows) == 4
        for a, b in zip(small, large, strict=True):
            assert [rows[a.notification_id][c] for c in COMPARED] == [rows[b.notification_id][c] for c in COMPARED]
        first = rows[small[0].notification_id]
        assert (first["status"], first["attempts"], str(first["parent_id"])) == ("failed", 2, parent)
        assert "\\u0000" not in first["timeline"] and "oops" in first["timeline"] and first["accepted_at"] is not None
        stats = await rec.stats.remote()
        assert (stats["flushes"], stats["small_flushes"]) == (3, 2)  # the large one copied
        large_again = [msgspec.structs.replace(o, status="sent", reason="ok") for o in large + filler]
        await rec.record.remote(wire.encode(large_again))  # repeats through COPY: the first rows stay too
        assert await conn.fetchval("SELECT count(*) FROM delivery_tracking WHERE notification_id = ANY($1) "
                                   "AND status = 'failed'", [uuid.UUID(o.notification_id) for o in large]) == 2
    finally:
        await conn.close()
        await rec.close.remote()
        ray.kill(rec)
