"""Sent is sent once: when PostgreSQL refuses the tracking write after the
provider accepted, the notifications are recorded later and never sent again —
whether the refusal is the infrastructure's (retried in place, not counted
toward dead-lettering) or not (nak'd and redelivered: the redelivery only
records what the UserShard's journal kept)."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from engine.runtime import Engine
from infra import streams
from sandbox import WebhookSink
from tests.integration.helpers import drop_schema, engine_config, wait_rows
from tests.integration.test_resilience import hook_note, publish

pytestmark = pytest.mark.integration

N = 40

REFUSE = """
CREATE FUNCTION refuse_tracking() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'refused by the test' USING ERRCODE = '{state}'; END $$;
CREATE TRIGGER refuse_tracking BEFORE INSERT ON delivery_tracking
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_tracking();
"""
ALLOW = "DROP TRIGGER refuse_tracking ON delivery_tracking; DROP FUNCTION refuse_tracking();"


async def until(check, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def dead_letters(engine: Engine) -> int:
    info = await engine.js.stream_info(streams.dlq_stream(engine.cfg.nats))
    return info.state.messages


@pytest.mark.parametrize("state, retried_in_place", [
    ("25006", True),   # read_only_sql_transaction: the database's state, not the message's
    ("P0001", False),  # raise_exception: maybe the message's; nak'd and redelivered
])
async def test_a_refused_record_is_recorded_later_and_never_sent_again(
        state, retried_in_place, nats_url, database_url, redis_url, ray_address, tmp_path):
    hook = WebhookSink("test-secret", port=0)
    await hook.start()
    cfg = engine_config(nats_url, database_url, str(tmp_path), webhook_url=hook.url, channels=("webhook",),
                        redis_url=redis_url)
    # a slot per message at most: a batch retried in place keeps its slot, and with the
    # default 4 a slow publish (more, smaller batches) would leave some never fetched
    cfg = msgspec.structs.replace(cfg, engine=msgspec.structs.replace(cfg.engine, inflight_batches=N))
    engine = await Engine(cfg).start()
    try:
        await engine.pool.execute(REFUSE.format(state=state))
        notes = [hook_note(i) for i in range(N)]
        await publish(cfg, engine.js, notes)
        await until(lambda: _received(hook, N))
        ingestor = engine.actors.ingestors[0]
        if retried_in_place:
            await until(lambda: _stat(ingestor, "retried", 2))
            assert (await ingestor.info.remote())["nacked"] == 0
        else:
            await until(lambda: _stat(ingestor, "nacked", 2 * N))  # redelivered at least once
        assert await wait_rows(engine.pool, [n["id"] for n in notes], 1, timeout_s=0.1) == 0

        await engine.pool.execute(ALLOW)
        ids = [n["id"] for n in notes]
        assert await wait_rows(engine.pool, ids, N) == N
        statuses = await engine.pool.fetch(
            "SELECT status, count(*) AS n FROM delivery_tracking WHERE notification_id = ANY($1::uuid[]) "
            "GROUP BY status", ids)
        assert {r["status"]: r["n"] for r in statuses} == {"sent": N}
        assert hook.received == N and hook.duplicates == 0
        assert await dead_letters(engine) == 0
        shards = [await s.info.remote() for s in engine.actors.user_shards]
        assert sum(s["unrecorded"] for s in shards) == 0
    finally:
        await engine.stop()
        await hook.stop()
        await drop_schema(database_url, cfg.database.schema)


async def _received(hook: WebhookSink, n: int) -> bool:
    return hook.received >= n


async def _stat(actor, name: str, at_least: int) -> bool:
    return (await actor.info.remote())[name] >= at_least
