"""The shared provider limits' arithmetic (``lease``, the Lua script's twin) and
the shard's side of them (``SharedLimits``: leases shared by concurrent calls,
the local share when Redis fails, a provider's pause). The Redis side, with the
real script, is tests/integration/test_provider_limits.py; here a stand-in runs
``lease`` so the shard's logic is tested without the network."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from hypothesis import given, settings, strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError

from actors.delivery.shared import SharedLimits, lease

# (seconds since the last request, tokens wanted) per request
steps = st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 40)), min_size=1, max_size=200)


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(0.5, 500), burst=st.integers(1, 50), seq=steps)
def test_no_window_gets_more_than_the_burst_and_the_rate_allow(rate, burst, seq):
    """GCRA's promise: in any window of t seconds at most burst + rate * t tokens."""
    tat, used, now, granted_at = 0.0, 0, 1000.0, []
    for dt, want in seq:
        now += dt
        granted, wait, tat, used = lease(tat, used, now, rate, burst, want, 0)
        assert 0 <= granted <= want
        assert wait == 0.0 if granted == want else wait > 0
        granted_at += [now] * granted
    for i, start in enumerate(granted_at):
        for j in range(i, len(granted_at)):
            n = j - i + 1
            assert n <= burst + rate * (granted_at[j] - start) + 1e-6


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(1, 200), burst=st.integers(1, 20), want=st.integers(1, 30), idle=st.floats(0, 3))
def test_the_wait_it_gives_is_enough_for_one_more(rate, burst, want, idle):
    tat, used, now = 0.0, 0, 50.0
    granted, wait, tat, used = lease(tat, used, now, rate, burst, 10_000, 0)  # empty it
    now += idle
    granted, wait, tat, used = lease(tat, used, now, rate, burst, want, 0)
    if granted < want:
        more, _, _, _ = lease(tat, used, now + wait, rate, burst, 1, 0)
        assert more == 1


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 300), seq=steps, spent=st.integers(0, 20))
def test_the_day_never_counts_past_its_limit(limit, seq, spent):
    tat, used, total = 0.0, 0, 0
    for i, (_, want) in enumerate(seq):
        granted, wait, tat, used = lease(tat, used, 10.0, 0, 0, want, limit, spent=spent if i == 0 else 0)
        total += granted
        if wait < 0:
            assert granted == 0 and used >= limit
    assert total <= max(0, limit - spent)


def test_a_pause_holds_until_it_ends_then_gives_one():
    tat, used, now = 0.0, 0, 100.0
    granted, wait, tat, used = lease(tat, used, now, 10, 5, 5, 0, pause_s=2.0)
    assert granted == 0 and wait == pytest.approx(2.0)
    granted, _, tat, used = lease(tat, used, now + 2.0, 10, 5, 5, 0)
    assert granted == 1  # not a whole burst at once after a Retry-After


class FakeRedis:
    """Runs ``lease`` where Redis runs the Lua script, on a hand-driven clock."""

    def __init__(self, clock):
        self.clock = clock
        self.tat: dict[str, float] = {}
        self.days: dict[str, int] = {}
        self.calls = 0
        self.down = False

    def register_script(self, _lua):
        async def script(keys, args):
            self.calls += 1
            await asyncio.sleep(0)
            if self.down:
                raise RedisConnectionError("refused")
            rate, burst, want, limit, pause, spent = (float(args[0]), float(args[1]), int(args[2]), int(args[3]),
                                                      float(args[4]), int(args[5]))
            granted, wait, self.tat[keys[0]], self.days[keys[1]] = lease(
                self.tat.get(keys[0], 0.0), self.days.get(keys[1], 0), self.clock(), rate, burst, want, limit,
                pause, spent)
            return [granted, f"{wait:.6f}", self.days[keys[1]]]
        return script


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t

    async def sleep(self, s):
        self.t += s
        await asyncio.sleep(0)


def limits(redis, clock, rate=10.0, burst=5.0, daily=0, share=2, **kw):
    return SharedLimits(redis, "k", rate, burst, daily, share, clock=clock, wall=lambda: 86_400 * 20_000 + 10, **kw)


async def test_concurrent_calls_share_one_redis_step():
    clock = Clock()
    redis = FakeRedis(clock)
    shard = limits(redis, clock, rate=100, burst=20)
    got = await asyncio.gather(*(shard.acquire(clock.sleep, 5) for _ in range(20)))
    assert all(got)
    assert redis.calls == 1  # twenty calls waiting at once: one lease


async def test_two_shards_together_keep_the_one_rate():
    """Real time (a lower bound only: a loaded machine is slower, never faster):
    100 tokens at 200/s with a burst of 1 cannot all come in under 0.495 s,
    however the two shards share them; each alone would have been twice as fast."""
    redis = FakeRedis(time.monotonic)
    a, b = (SharedLimits(redis, "k", 200, 1, 0, 2) for _ in range(2))
    start = time.monotonic()
    got = await asyncio.gather(*(s.acquire(asyncio.sleep, 10) for s in (a, b) for _ in range(50)))
    assert all(got)
    assert time.monotonic() - start >= 99 / 200 - 1e-3


async def test_redis_down_applies_the_local_share_and_counts_it():
    clock = Clock()
    redis = FakeRedis(clock)
    redis.down = True
    shard = limits(redis, clock, rate=10, burst=4, daily=5, share=2)  # share: 5/s, burst 2, 2 a day
    got = [await shard.acquire(clock.sleep, 10) for _ in range(4)]
    assert got == [True, True, False, False]  # the day's share is 5 // 2
    assert shard.exhausted()
    assert shard.drain_fallbacks() == 2
    # Redis back after retry_s: the local sends are added to its day
    redis.down = False
    clock.t += shard.retry_s
    assert await shard.acquire(clock.sleep, 10)
    assert sum(redis.days.values()) == 3


async def test_a_waiter_on_the_local_share_goes_back_to_redis_when_the_outage_ends():
    clock = Clock()
    redis = FakeRedis(clock)
    redis.down = True
    shard = limits(redis, clock, rate=10, burst=1, share=10, retry_s=0.5)  # share: 1/s
    assert await shard.acquire(clock.sleep, 10)  # the local share's one token
    redis.down = False
    started = clock()
    assert await shard.acquire(clock.sleep, 10)
    assert clock() - started < 0.6  # back on Redis's 10/s after the outage, not the share's 1 s
    assert shard.drain_fallbacks() == 1


async def test_a_blip_after_the_day_is_spent_sends_nothing_more():
    clock = Clock()
    redis = FakeRedis(clock)
    shard = limits(redis, clock, rate=0, burst=0, daily=4, share=2)
    assert [await shard.acquire(clock.sleep, 1) for _ in range(5)] == [True] * 4 + [False]
    redis.down = True
    assert not await shard.acquire(clock.sleep, 1)  # the local share of nothing left
    assert shard.exhausted() and shard.drain_fallbacks() == 0


async def test_the_day_spent_refuses_and_says_so():
    clock = Clock()
    redis = FakeRedis(clock)
    shard = limits(redis, clock, rate=0, burst=0, daily=3)
    got = [await shard.acquire(clock.sleep, 1) for _ in range(5)]
    assert got == [True, True, True, False, False]
    assert shard.exhausted() and shard.take()


async def test_a_refusal_past_max_wait_is_counted():
    clock = Clock()
    redis = FakeRedis(clock)
    shard = limits(redis, clock, rate=1, burst=1)
    assert await shard.acquire(clock.sleep, 0)
    assert not await shard.acquire(clock.sleep, 0.5)  # the next token is 1 s away
    assert shard.drain_waits() == ([], 1)


async def test_a_rate_under_one_a_second_still_sends():
    clock = Clock()
    shard = limits(FakeRedis(clock), clock, rate=0.5, burst=0.5)  # burst unset: one second's worth
    assert await shard.acquire(clock.sleep, 0)
    assert await shard.acquire(clock.sleep, 2.5)


async def test_a_pause_holds_every_shard():
    clock = Clock()
    redis = FakeRedis(clock)
    a, b = limits(redis, clock, rate=100, burst=10), limits(redis, clock, rate=100, burst=10)
    a.pause_until(clock() + 3.0)
    assert not await a.acquire(clock.sleep, 0)  # carries the pause to Redis; 3 s is too long
    assert not await b.acquire(clock.sleep, 1.0)  # b was told nothing: Redis holds it
    start = clock()
    assert await b.acquire(clock.sleep, 5.0)
    assert clock() - start >= 3.0 - 0.01


async def test_a_daily_only_account_counts_nothing_while_paused():
    clock = Clock()
    redis = FakeRedis(clock)
    shard = limits(redis, clock, rate=0, burst=0, daily=100)
    assert await shard.acquire(clock.sleep, 1)
    shard.pause_until(clock() + 2.0)
    got = await asyncio.gather(*(shard.acquire(clock.sleep, 5) for _ in range(20)))
    assert all(got)
    assert sum(redis.days.values()) == 21  # one each, none leased and dropped during the pause


def test_without_redis_each_shard_takes_its_share():
    from actors.channel_shard import build_slot
    from actors.delivery.shared import SharedSetup
    from infra.config import ProviderConfig

    p = ProviderConfig(name="hook", type="webhook", rate_per_s=90, burst=12, daily_limit=10,
                       settings={"url": "http://127.0.0.1:9/hook", "secret": "s"})
    slot = build_slot(p, "webhook", SharedSetup(share=3))
    assert (slot.bucket.rate, slot.bucket.burst, slot.daily.limit) == (30, 4, 3)
    alone = build_slot(p, "webhook")
    assert (alone.bucket.rate, alone.bucket.burst, alone.daily.limit) == (90, 12, 10)


def test_redis_is_wanted_for_limited_providers_even_without_api_limits():
    from infra.config import Config, env_overrides, shares_provider_limits, wants_redis

    hook = {"name": "hook", "type": "webhook", "rate_per_s": 5}
    cfg = msgspec.convert({"ratelimit": {"enabled": False},
                          "channels": {"webhook": {"providers": [hook]}}}, Config)
    assert shares_provider_limits(cfg) and wants_redis(cfg)
    off = msgspec.structs.replace(cfg, provider_limits=msgspec.structs.replace(cfg.provider_limits, shared=False))
    assert not wants_redis(off)
    assert not wants_redis(Config(ratelimit=msgspec.structs.replace(Config().ratelimit, enabled=False)))
    assert env_overrides({"TIDINGS_PROVIDER_LIMITS_SHARED": "false"}) == {"provider_limits": {"shared": "false"}}
