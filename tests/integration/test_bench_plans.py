"""bench/plans.py: why a harness run ANALYZEs its fresh tables, and that it does.

A prepared statement's generic plan, chosen while delivery_tracking is empty,
scans the whole table for as long as the session keeps it; an ANALYZE from any
other session makes it plan again, with the index."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg
import pytest

from bench import plans
from stores.tracking import RECORDED
from tests.integration.helpers import migrated_schema

pytestmark = pytest.mark.integration

ROWS = 5000


@pytest.fixture
async def schema(database_url):
    async with migrated_schema(database_url, "t_plans_") as name:
        yield name


async def fill(conn: asyncpg.Connection, n: int) -> None:
    await conn.copy_records_to_table(
        "delivery_tracking", columns=("notification_id", "user_id", "channel", "category", "priority", "status",
                                      "reason"),
        records=((uuid.uuid4(), "u", "webhook", "c", "normal", "sent", "ok") for _ in range(n)))


async def cached_plan(conn: asyncpg.Connection) -> str:
    rows = await conn.fetch(f"EXPLAIN EXECUTE recorded('{{{uuid.uuid4()}}}')")
    return "\n".join(r[0] for r in rows)


async def test_a_plan_made_on_the_empty_table_scans_it_until_an_analyze(database_url, schema):
    settings = {"search_path": schema}
    conn = await asyncpg.connect(database_url, server_settings=settings)
    other = await asyncpg.connect(database_url, server_settings=settings)
    try:
        # only our ANALYZE; and before the PREPARE, as a change to the table's options
        # makes its sessions plan again too
        await other.execute("ALTER TABLE delivery_tracking SET (autovacuum_enabled = false)")
        await conn.execute(f"PREPARE recorded(uuid[]) AS {RECORDED}")
        for _ in range(6):  # five custom plans, then the generic one is kept
            await conn.execute(f"EXECUTE recorded('{{{uuid.uuid4()}}}')")
        await fill(other, ROWS)
        assert "Seq Scan on delivery_tracking" in await cached_plan(conn)
        await plans.analyze_schema(other)  # another session, as autovacuum's would be
        after = await cached_plan(conn)
        assert "Seq Scan" not in after and "delivery_tracking_notification_id_channel_key" in after, after
    finally:
        await conn.close()
        await other.close()


class Counting:
    """A Recorder's ``stats`` as the harness reads it (``.remote()`` awaited)."""

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn
        self.stats = self

    async def remote(self) -> dict:
        return {"rows_written": await self.conn.fetchval("SELECT count(*) FROM delivery_tracking")}


async def reltuples(conn: asyncpg.Connection) -> float:
    """What the last ANALYZE counted (-1: never analyzed)."""
    return await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = 'delivery_tracking'::regclass")


async def until_counted(conn: asyncpg.Connection, rows: int) -> None:
    for _ in range(250):
        if await reltuples(conn) == rows:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not analyzed at {rows} rows")


async def test_the_tracking_table_is_analyzed_each_time_it_doubles(database_url, schema, monkeypatch):
    monkeypatch.setattr(plans, "POLL_S", 0.01)
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    # the watcher's own connection: one asyncpg connection runs one statement at a time
    watcher = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        await conn.execute("ALTER TABLE delivery_tracking SET (autovacuum_enabled = false)")  # only the harness's
        task = asyncio.ensure_future(plans.analyzed_as_it_grows(watcher, Counting(watcher), first=100))
        try:
            await fill(conn, 99)  # under the first threshold
            await asyncio.sleep(0.2)
            assert await reltuples(conn) < 0
            await fill(conn, 1)
            await until_counted(conn, 100)
            await fill(conn, 50)  # 150: not doubled since
            await asyncio.sleep(0.2)
            assert await reltuples(conn) == 100
            await fill(conn, 50)  # 200: doubled
            await until_counted(conn, 200)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await conn.close()
        await watcher.close()
