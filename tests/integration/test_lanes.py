"""Priority lanes: a critical notification submitted while a bulk backlog drains
is consumed by its own Ingestor, delivered by the channel's urgent ChannelShard
(``urgent_shards``), and delivered before the backlog is through."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import pytest

from infra import streams
from sandbox import WebhookSink
from tests.integration.helpers import api_session, engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

BULK = 15_000


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, tmp_path_factory):
    hook = WebhookSink("lane-secret", port=0)
    await hook.start()
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), webhook_url=hook.url,
                        secret="lane-secret", channels=("webhook",),
                        overrides={"channels": {"webhook": {"urgent_shards": 1}}})
    async with serving(cfg, database_url) as eng:
        yield eng
    await hook.stop()


async def recorded(pool, ids: list[str]) -> int:
    return await pool.fetchval("SELECT count(*) FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])", ids)


async def test_critical_overtakes_a_bulk_backlog(engine):
    cfg = engine.cfg.nats
    bulk_ids = [str(uuid.uuid4()) for _ in range(BULK)]
    pending = []
    for nid in bulk_ids:
        body = {"id": nid, "user_id": f"b{nid[:4]}", "category": "marketing", "channels": ["webhook"],
                "content": {"text": "bulk"}}
        pending.append(await engine.js.publish_async(streams.notify_subject(cfg, "marketing"),
                                                     msgspec.json.encode(body)))
    await asyncio.gather(*pending)
    while await recorded(engine.pool, bulk_ids) < 500:  # the backlog is draining
        await asyncio.sleep(0.05)
    async with api_session() as s:
        started = time.monotonic()
        async with s.post(f"{engine.base_url}/v1/notifications", json={
                "user_id": "vip", "category": "security", "channels": ["webhook"], "priority": "critical",
                "content": {"text": "new sign-in"}}) as r:
            critical = (await r.json())["id"]
    await wait_rows(engine.pool, [critical], 1, timeout_s=60)
    took = time.monotonic() - started
    bulk_done = await recorded(engine.pool, bulk_ids)
    assert bulk_done < BULK, "the backlog drained first: the critical notification waited behind it"
    print(f"critical recorded {took * 1000:.0f} ms after submit; bulk at {bulk_done}/{BULK}")
    await wait_rows(engine.pool, bulk_ids, BULK, timeout_s=180)
    urgent = await engine.actors.urgent_shards["webhook"][0].health.remote()
    bulk = await asyncio.gather(*(s.health.remote() for s in engine.actors.channel_shards["webhook"]))
    assert urgent["delivered"] == 1, "the critical one, and only it, went to the urgent shard"
    assert sum(h["delivered"] for h in bulk) >= BULK  # a delivery held and retried counts again
    assert urgent["shard"] == len(bulk)  # numbered after the others


# a lambda: cloudpickle sends it by value (a function of this module would be looked up
# by its module's name, which the actors' workers cannot import)
_niceness = lambda _actor: __import__("os").getpriority(0, 0)  # noqa: E731 - PRIO_PROCESS 0: the calling thread (the actor's loop)


async def test_the_actors_after_the_provider_call_run_nicer_than_the_priority_lane(engine):
    """ray.bulk_niceness: on a machine out of CPU, the priority lane's Ingestor and
    ChannelShard and the UserShards get the cores before the bulk ones, the Recorder and
    the EventSender (measured in bench/RESULTS.md, "Priority lane … niceness")."""
    a = engine.actors
    step = engine.cfg.ray.bulk_niceness
    assert step > 0
    nice = [await x.__ray_call__.remote(_niceness) for x in a.ingestors]
    *bulk_ingestors, priority_ingestor = nice
    urgent = await a.urgent_shards["webhook"][0].__ray_call__.remote(_niceness)
    users = await a.user_shards[0].__ray_call__.remote(_niceness)
    bulk = [await s.__ray_call__.remote(_niceness) for s in a.channel_shards["webhook"]]
    recorder = await a.recorder.__ray_call__.remote(_niceness)
    assert priority_ingestor == urgent == users
    assert all(n == min(19, users + step) for n in [*bulk_ingestors, *bulk, recorder]), (users, bulk_ingestors, bulk, recorder)
    if a.events is not None:
        assert await a.events.__ray_call__.remote(_niceness) == min(19, users + step)


async def test_the_bulk_lane_hears_the_priority_lane_and_yields(engine):
    """engine.priority_yield_s: the priority lane's Ingestor says over core NATS that
    it has work; the bulk lane's Ingestor hears it and, while bulk notifications come,
    takes them in small batches (the loop's rule: tests/unit/test_ingest_yield.py).
    A high notification and a few bulk ones each round, until both are seen: the
    yield lasts a second, and a loaded machine may be slower than that once."""
    cfg = engine.cfg.nats
    *bulk, _priority = engine.actors.ingestors

    async def counts() -> list[tuple[int, int]]:
        return [((i := await b.info.remote())["priority_busy_heard"], i["yielded"]) for b in bulk]

    def publish(subject: str, text: str) -> asyncio.Future:
        body = {"id": str(uuid.uuid4()), "user_id": f"y{text}", "category": "security", "channels": ["webhook"],
                "content": {"text": text}}
        return engine.js.publish(subject, msgspec.json.encode(body))

    before = await counts()
    deadline = time.monotonic() + 30
    while True:
        await publish(streams.priority_subject(cfg, "security"), "high")
        await asyncio.sleep(0.1)  # the priority lane fetches it and says so
        await asyncio.gather(*(publish(streams.notify_subject(cfg, "security"), f"bulk{i}") for i in range(5)))
        await asyncio.sleep(0.3)
        now = await counts()
        if all(h > hb and y > yb for (h, y), (hb, yb) in zip(now, before, strict=True)):
            break
        assert time.monotonic() < deadline, (before, now)
