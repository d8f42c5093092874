"""Batches that follow the load (``engine.coalesce_s``, docs/design.md), through a
real engine: a steady stream is fetched in batches of several messages, a lone
notification on an idle engine is fetched alone. How much a stream coalesces
depends on how long a batch takes on the machine, so the bound here is loose; the
loop's rule itself is checked in tests/unit/test_ingest_coalesce.py."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import pytest

from bench.e2e import until_due
from infra import streams
from sandbox.faults import Faults
from tests.integration.helpers import engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

STREAM = 600  # notifications
RATE = 300.0  # per second, each at its own time


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, webhook_sink, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), webhook_url=webhook_sink.url,
                        channels=("webhook",), overrides={"engine": {"coalesce_s": 0.05, "ingestors": 1}})
    async with serving(cfg, database_url) as eng:
        yield eng


async def publish(engine, n: int, rate: float) -> list[str]:
    ids, pending, started = [], [], time.perf_counter()
    for i in range(n):
        await until_due(started + i / rate)
        nid = str(uuid.uuid4())
        ids.append(nid)
        body = {"id": nid, "user_id": f"u{i % 40}", "category": "jobs", "channels": ["webhook"],
                "content": {"text": "steady"}}
        pending.append(await engine.js.publish_async(streams.notify_subject(engine.cfg.nats, "jobs"),
                                                     msgspec.json.encode(body)))
    await asyncio.gather(*pending)
    return ids


async def bulk_stats(engine) -> dict:
    """The bulk lane's Ingestor's counts (the last one is the priority lane's)."""
    return await engine.actors.ingestors[0].info.remote()


async def test_a_steady_stream_goes_in_batches_and_a_lone_notification_at_once(engine, webhook_sink):
    # a lone notification on an idle engine: fetched alone, at once
    before = await bulk_stats(engine)
    started = time.monotonic()
    [lone] = await publish(engine, 1, RATE)
    assert await wait_rows(engine.pool, [lone], 1, timeout_s=30) == 1
    assert time.monotonic() - started < 5  # generous: the point is that it is not held for company
    after = await bulk_stats(engine)
    assert after["fetched"] - before["fetched"] == 1 and after["batches"] - before["batches"] == 1

    # a steady stream: while a batch is in flight the next fetch waits for it, so
    # the messages that come meanwhile share a batch (one per message without it)
    # The receiver takes 5 ms, so a batch is in flight when the next message comes
    # (3.3 ms apart): on a fast idle machine a whole batch took less than that, and
    # there was nothing to wait for (without coalescing: a batch per message here)
    before = after
    webhook_sink.faults = Faults(delay_s=0.005)
    try:
        ids = await publish(engine, STREAM, RATE)
        assert await wait_rows(engine.pool, ids, STREAM, timeout_s=60) == STREAM
    finally:
        webhook_sink.faults = Faults()
    after = await bulk_stats(engine)
    fetched, batches = after["fetched"] - before["fetched"], after["batches"] - before["batches"]
    assert fetched == STREAM
    print(f"{batches} batches for {fetched} messages at {RATE:.0f}/s")
    assert batches <= STREAM * 0.8, f"{batches} batches for {fetched} messages: the stream was not coalesced"
