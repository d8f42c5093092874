"""Provider limits for the whole deployment (issue 15 item 3), against a real
Redis and real ChannelShard actors in Ray sending to a loopback webhook receiver:
four shards, made as two instances would make them (two shards each, one
deployment scope), keep the provider's one rate and its one daily quota; a
shard made again (a restart) finds the day spent; with Redis unreachable each
applies its share and counts it. And the Lua script agrees with ``lease``."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import msgspec
import pytest
import ray
import redis.asyncio as aioredis

from actors.channel_shard import ChannelShard
from actors.delivery.shared import LUA, SharedSetup, lease
from infra.config import ChannelConfig, ProviderConfig
from policy import wire
from policy.types import Content, DeliveryTask, Outcome
from sandbox import WebhookSink
from tests.integration.test_metrics import ray_scrape, until, value

pytestmark = pytest.mark.integration

SECRET = "limits-secret"
RATE = 50.0  # the provider's total, per second
BURST = 5.0


class TimedSink(WebhookSink):
    """The webhook receiver, keeping when each request came."""

    def __init__(self):
        super().__init__(SECRET)
        self.times: list[float] = []

    async def _handle(self, request):
        self.times.append(time.monotonic())
        return await super()._handle(request)


@pytest.fixture
async def sink():
    s = TimedSink()
    await s.start()
    yield s
    await s.stop()


def channel(url: str, **limits) -> bytes:
    provider = ProviderConfig(name="hook", type="webhook", concurrency=200, max_wait_s=60.0, timeout_s=10.0,
                              settings={"url": url, "secret": SECRET}, **limits)
    return msgspec.msgpack.encode(ChannelConfig(shards=2, providers=[provider]))


def shards(cfg: bytes, setup: SharedSetup, n: int = 4) -> list:
    actor = ray.remote(ChannelShard)
    return [actor.options(num_cpus=0).remote("webhook", cfg, i, limits=msgspec.msgpack.encode(setup))
            for i in range(n)]


def tasks(n: int, tag: str) -> bytes:
    return wire.encode([DeliveryTask(str(uuid.uuid4()), f"u{tag}{i}", "webhook", "alerts", "", Content(text="hi"))
                        for i in range(n)])


async def deliver_all(actors: list, per_shard: int) -> list[Outcome]:
    answers = await asyncio.gather(*(a.deliver.remote(tasks(per_shard, str(i))) for i, a in enumerate(actors)))
    return [o for answer in answers for o in wire.decode(answer, list[Outcome])]


async def stop(actors: list) -> None:
    await asyncio.gather(*(a.close.remote() for a in actors), return_exceptions=True)
    for a in actors:
        ray.kill(a)


async def test_four_shards_of_two_instances_keep_the_one_rate(ray_address, redis_url, sink):
    scope = f"test-{uuid.uuid4().hex}"
    cfg = channel(sink.url, rate_per_s=RATE, burst=BURST)
    # two instances' worth: each makes its two shards with share 2, in one deployment scope
    actors = shards(cfg, SharedSetup(redis_url=redis_url, scope=scope, share=2))
    try:
        await asyncio.gather(*(a.health.remote() for a in actors))  # set up before the clock starts
        outcomes = await deliver_all(actors, 60)  # 240 calls: ~4.7 s at 50/s after the burst
        assert all(o.status == "sent" for o in outcomes), {o.reason for o in outcomes}
        health = await asyncio.gather(*(a.health.remote() for a in actors))
        # shared all along: a shard on its local share would measure the fallback, not this
        assert [h["limits"]["hook"]["fallbacks"] for h in health] == [0] * 4, health
        times = sorted(sink.times)
        assert len(times) == 240
        # after the burst, the calls come at the rate: ±5% over the run
        rate = (len(times) - BURST) / (times[-1] - times[0])
        assert RATE * 0.95 <= rate <= RATE * 1.05, rate
        # and no second holds more than the rate and the burst allow
        for i, t in enumerate(times):
            within = sum(1 for u in times[i:] if u - t < 1.0)
            assert within <= RATE + BURST + 3, (i, within)  # GCRA's bound, and arrival jitter
        print(f"4 shards, one provider at {RATE:g}/s: {rate:.1f}/s measured over {times[-1] - times[0]:.2f} s")
    finally:
        await stop(actors)


async def test_the_daily_quota_holds_across_shards_and_a_restart(ray_address, redis_url, sink):
    scope = f"test-{uuid.uuid4().hex}"
    cfg = channel(sink.url, daily_limit=30)
    setup = SharedSetup(redis_url=redis_url, scope=scope, share=2)
    actors = shards(cfg, setup)
    try:
        outcomes = await deliver_all(actors, 20)  # 80 asked, 30 allowed in all
        sent = [o for o in outcomes if o.status == "sent"]
        assert len(sent) == 30 and sink.received == 30
        assert {o.reason for o in outcomes if o.status != "sent"} == {"daily_limit"}
    finally:
        await stop(actors)
    again = shards(cfg, setup, 1)  # a shard made again, as Ray would after a crash
    try:
        outcomes = await deliver_all(again, 5)
        assert {o.reason for o in outcomes} == {"daily_limit"} and sink.received == 30
    finally:
        await stop(again)


async def test_redis_unreachable_each_shard_applies_its_share(ray_address, sink, unused_tcp_port):
    cfg = channel(sink.url, daily_limit=10)
    setup = SharedSetup(redis_url=f"redis://127.0.0.1:{unused_tcp_port}/0", scope="nowhere", share=2,
                        timeout_s=0.2, retry_s=60)
    actors = shards(cfg, setup, 2)
    try:
        outcomes = await deliver_all(actors, 8)
        assert sum(o.status == "sent" for o in outcomes) == 10  # 10 // 2 each
        health = await asyncio.gather(*(a.health.remote() for a in actors))
        assert [h["limits"]["hook"]["fallbacks"] for h in health] == [5, 5]
        assert all(h["limits"]["hook"]["redis_down"] for h in health)
        # and counted where Prometheus scrapes the actors (Ray's metrics export port)
        port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])

        async def scrape() -> str:
            return await asyncio.to_thread(ray_scrape, port)

        def counted(f) -> float:
            return value(f, "ray_tidings_provider_limit_fallback_total", channel="webhook", provider="hook")

        await until(scrape, lambda f: counted(f) >= 10, "the fallback counter")
    finally:
        await stop(actors)


async def test_the_script_is_lease(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    script = client.register_script(LUA)
    rng = random.Random(7)
    key = f"tidings:pl:test-{uuid.uuid4().hex}"
    day = f"{key}:day:1"
    try:
        for rate, burst, limit in ((10.0, 3.0, 0), (250.0, 40.0, 500), (0.0, 0.0, 50), (3.5, 1.0, 20)):
            await client.delete(key, day)
            tat, used, now = 0.0, 0, 1_000_000.0
            for _ in range(120):
                now += rng.choice((0.0, 0.001, 0.05, 0.3, 1.2))
                want, pause, spent = rng.randint(1, 30), rng.choice((0.0, 0.0, 0.0, 0.7)), rng.choice((0, 0, 2))
                expected = lease(tat, used, now, rate, burst, want, limit, pause, spent)
                got = await script(keys=[key, day], args=[repr(rate), repr(burst), want, limit, repr(pause), spent,
                                                          repr(now)])
                assert int(got[0]) == expected[0]
                assert float(got[1]) == pytest.approx(expected[1], abs=2e-6)
                assert int(got[2]) == expected[3]
                granted, _, tat, used = expected
                stored = await client.get(key)
                if rate > 0:
                    tat = float(stored)  # Redis keeps it to the microsecond
        # on Redis's own clock (no time given): a fresh account's burst at once, then a
        # wait; the rate's key expires once it would be back at a full burst
        await client.delete(key, day)
        got = await script(keys=[key, day], args=["10.0", "3.0", 5, 0, "0.0", 0])
        assert int(got[0]) == 3 and 0.09 < float(got[1]) <= 0.1
        assert 0 < await client.pttl(key) <= 1300
    finally:
        await client.delete(key, day)
        await client.aclose()
