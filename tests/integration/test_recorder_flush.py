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
from policy.types import Outcome
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
