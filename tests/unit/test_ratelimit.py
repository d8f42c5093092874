"""The rate limiter's GCRA arithmetic, the in-memory limiter (injected clock), the
fallback modes against a Redis that fails, the headers and the middleware."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings, strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError, NoScriptError

from engine import ratelimit
from engine.ratelimit import (
    FALLBACKS,
    RATE_KEY,
    Limiter,
    LimiterUnavailable,
    Verdict,
    gcra,
    headers,
    rate_limit_middleware,
)
from infra.config import RateLimitConfig


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def run(times: list[float], rate: float, burst: float) -> list[Verdict]:
    tat = None
    out = []
    for now in times:
        v, tat = gcra(tat, now, rate, burst)
        out.append(v)
    return out


def test_burst_then_one_per_interval():
    vs = run([0.0] * 6, rate=2.0, burst=5)
    assert [v.allowed for v in vs] == [True] * 5 + [False]
    assert [v.remaining for v in vs] == [4, 3, 2, 1, 0, 0]
    assert vs[0].limit == 5 and vs[0].retry_after_s == 0
    assert vs[4].reset_s == pytest.approx(2.5)  # 5 requests at 2/s: full again in 2.5 s
    assert vs[5].retry_after_s == pytest.approx(0.5) and vs[5].reset_s == pytest.approx(2.5)
    # half a second later exactly one more; fully idle: the whole burst again
    tat = None
    for _ in range(5):
        _, tat = gcra(tat, 0.0, 2.0, 5)
    v, tat = gcra(tat, 0.5, 2.0, 5)
    assert v.allowed and v.remaining == 0
    v, _ = gcra(tat, 0.5, 2.0, 5)
    assert not v.allowed
    v, _ = gcra(tat, 100.0, 2.0, 5)
    assert v.allowed and v.remaining == 4


def test_denial_keeps_state():
    _, tat = gcra(None, 0.0, 1.0, 1)
    v, tat2 = gcra(tat, 0.1, 1.0, 1)
    assert not v.allowed and tat2 == tat


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 50), burst=st.integers(1, 30),
       gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=300))
def test_never_more_than_burst_plus_rate_t(rate, burst, gaps):
    times, now = [], 0.0
    for g in gaps:
        now += g
        times.append(now)
    allowed = [t for t, v in zip(times, run(times, rate, burst), strict=True) if v.allowed]
    # every window [allowed[i], allowed[j]] holds at most burst + rate * length requests
    for i in range(len(allowed)):
        for j in range(i, len(allowed)):
            assert j - i + 1 <= burst + rate * (allowed[j] - allowed[i] + 1e-6) + 1e-9  # times rounded to the µs


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(0.5, 50), burst=st.integers(1, 30), n=st.integers(1, 100))
def test_burst_at_once_is_all_allowed(rate, burst, n):
    vs = run([5.0] * n, rate, burst)
    assert sum(v.allowed for v in vs) == min(n, burst)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(1, 200_000), burst=st.integers(1, 5000), n=st.integers(1, 6000),
       now=st.floats(1.7e9, 2.2e9))
def test_a_burst_at_once_at_high_rates_and_epoch_times(rate, burst, n, now):
    # the float version could give burst - 1 here (rounding of TAT sums at 1.8e9 s)
    vs = run([now] * n, rate, burst)
    assert sum(v.allowed for v in vs) == min(n, burst)
    assert [v.remaining for v in vs[:min(n, burst)]] == list(range(burst - 1, burst - 1 - min(n, burst), -1))


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(0.5, 100_000), burst=st.integers(1, 100), steps=st.integers(1, 2000))
def test_steady_rate_at_epoch_times_is_never_refused(rate, burst, steps):
    # a client sending exactly at the (rounded-up) interval from an epoch time is always on time
    interval, _ = ratelimit.cells(rate, burst)
    start = 1_764_000_000_000_000
    tat = None
    for k in range(steps):
        v, tat = gcra(tat, (start + k * interval) / ratelimit.US, rate, burst)
        assert v.allowed, k


def test_cells_never_exceed_the_configured_rate():
    assert ratelimit.cells(5000, 10) == (200, 2000)
    assert ratelimit.cells(3, 2.5) == (333_334, 833_335)
    assert ratelimit.cells(5_000_000, 1) == (1, 1)


def cfg(**kw) -> RateLimitConfig:
    base = dict(key_per_s=1.0, key_burst=3.0, user_per_s=0.5, user_burst=2.0)
    return RateLimitConfig(**{**base, **kw})


async def test_local_limiter_per_class_and_ident():
    clock = Clock()
    lim = Limiter(None, cfg(), clock)
    assert [(await lim.check("key", "k1")).allowed for _ in range(4)] == [True, True, True, False]
    assert (await lim.check("key", "k2")).allowed  # another key has its own
    assert [(await lim.check("user", "k1")).allowed for _ in range(3)] == [True, True, False]
    clock.t += 1.0
    assert (await lim.check("key", "k1")).allowed
    with pytest.raises(ValueError):
        await lim.check("ip", "x")


async def test_local_limiter_sweeps_idle_clients():
    clock = Clock()
    lim = Limiter(None, cfg(), clock)
    lim.SWEEP_EVERY = 10
    for i in range(9):
        await lim.check("key", f"k{i}")
    assert len(lim.local) == 9
    clock.t += 10
    await lim.check("key", "fresh")
    assert list(lim.local) == [ratelimit.redis_key("key", "fresh")]


def test_redis_key_hides_ident():
    k = ratelimit.redis_key("user", "secret:odd chars\n")
    assert k.startswith("tidings:rl2:user:") and "secret" not in k and len(k.rsplit(":", 1)[1]) == 32


class DownRedis:
    """A client whose script calls fail like an unreachable Redis."""

    def register_script(self, _lua):
        return SimpleNamespace(sha="0" * 40, script=_lua)

    def pipeline(self, transaction=True):
        return _DownPipeline()


class _DownPipeline:
    def evalsha(self, *args):
        return self

    async def execute(self, raise_on_error=True):
        raise RedisConnectionError("refused")


@pytest.mark.parametrize("mode", ["local", "open", "closed"])
async def test_fallback_modes(mode):
    before = FALLBACKS.labels(mode)._value.get()
    lim = Limiter(DownRedis(), cfg(redis_down=mode), Clock())
    if mode == "closed":
        with pytest.raises(LimiterUnavailable):
            await lim.check("key", "k")
        assert FALLBACKS.labels(mode)._value.get() == before + 1
        return
    got = [(await lim.check("key", "k")).allowed for _ in range(5)]
    assert got == ([True] * 3 + [False] * 2 if mode == "local" else [True] * 5)
    assert FALLBACKS.labels(mode)._value.get() == before + 5


def test_headers():
    assert headers(Verdict(True, 10, 7, 2.2, 0.0)) == {
        "RateLimit-Limit": "10", "RateLimit-Remaining": "7", "RateLimit-Reset": "3"}
    h = headers(Verdict(False, 10, 0, 5.0, 0.2))
    assert h["Retry-After"] == "1" and h["RateLimit-Reset"] == "5" and h["RateLimit-Remaining"] == "0"
    assert headers(Verdict(False, 10, 0, 5.0, 2.5))["Retry-After"] == "3"


def app_with(limiter: Limiter, rate_key=("key", "k1")) -> web.Application:
    @web.middleware
    async def auth(request, handler):
        if rate_key is not None:
            request[RATE_KEY] = rate_key
        return await handler(request)

    async def ok(request):
        return web.json_response({"ok": True})

    async def missing(request):
        raise web.HTTPNotFound(text="no")

    app = web.Application(middlewares=[auth, rate_limit_middleware(limiter)])
    app.router.add_get("/ok", ok)
    app.router.add_get("/missing", missing)
    return app


async def test_middleware_allows_then_429():
    lim = Limiter(None, cfg(), Clock())
    async with TestClient(TestServer(app_with(lim))) as client:
        r = await client.get("/ok")
        assert r.status == 200 and r.headers["RateLimit-Limit"] == "3" and r.headers["RateLimit-Remaining"] == "2"
        assert "Retry-After" not in r.headers
        r = await client.get("/missing")  # an HTTPException gets the headers too, and counts
        assert r.status == 404 and r.headers["RateLimit-Remaining"] == "1"
        await client.get("/ok")
        r = await client.get("/ok")
        assert r.status == 429 and r.headers["Retry-After"] == "1" and r.headers["RateLimit-Remaining"] == "0"
        body = await r.json()
        assert body["error"] == "rate limited" and body["errors"][0]["field"] == "$"
        assert "API key" in body["errors"][0]["reason"]


async def test_middleware_skips_without_rate_key_or_when_off():
    lim = Limiter(None, cfg(key_burst=1.0), Clock())
    async with TestClient(TestServer(app_with(lim, rate_key=None))) as client:
        for _ in range(3):
            r = await client.get("/ok")
            assert r.status == 200 and "RateLimit-Limit" not in r.headers
    lim = Limiter(None, cfg(key_burst=1.0, enabled=False), Clock())
    async with TestClient(TestServer(app_with(lim))) as client:
        assert [(await client.get("/ok")).status for _ in range(3)] == [200] * 3


async def test_middleware_closed_answers_503():
    lim = Limiter(DownRedis(), cfg(redis_down="closed"), Clock())
    async with TestClient(TestServer(app_with(lim))) as client:
        r = await client.get("/ok")
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert (await r.json())["error"] == "rate limits unavailable"


def test_reset_is_whole_seconds_until_full():
    v = run([0.0, 0.0], rate=3.0, burst=10)[-1]
    assert math.ceil(v.reset_s) == int(headers(v)["RateLimit-Reset"]) == 1


class ScriptedRedis:
    """A client whose pipelines answer from ``rounds`` in turn and record the keys sent."""

    def __init__(self, rounds):
        self.rounds, self.sent, self.loaded = list(rounds), [], 0

    def register_script(self, lua):
        return SimpleNamespace(sha="old", script=lua)

    async def script_load(self, _lua):
        self.loaded += 1
        return "new"

    def pipeline(self, transaction=True):
        return _ScriptedPipeline(self)


class _ScriptedPipeline:
    def __init__(self, redis):
        self.redis, self.keys = redis, []

    def evalsha(self, sha, _n, key, *_args):
        self.keys.append((sha, key))
        return self

    async def execute(self, raise_on_error=True):
        self.redis.sent.append(self.keys)
        answer = self.redis.rounds.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_only_the_checks_that_found_no_script_are_made_again():
    """A SCRIPT FLUSH between two commands of one pipeline: the checks before it counted
    their request in Redis, so only the one that found no script is sent again."""
    ok = [1, 2, 3_000_000, 0]
    redis = ScriptedRedis([[ok, NoScriptError("NOSCRIPT"), ok], [[1, 0, 3_000_000, 0]]])
    lim = Limiter(redis, cfg())
    vs = await asyncio.gather(*(lim.check("key", who) for who in ("a", "b", "c")))
    assert [v.allowed for v in vs] == [True, True, True]
    assert redis.loaded == 1
    assert len(redis.sent) == 2 and len(redis.sent[0]) == 3
    assert redis.sent[1] == [("new", ratelimit.redis_key("key", "b"))]


async def test_a_failure_that_is_not_redis_falls_back_for_each_check(caplog):
    lim = Limiter(ScriptedRedis([ValueError("a bug of ours")]), cfg(redis_down="open"))
    vs = await asyncio.gather(*(lim.check("key", who) for who in ("a", "b")))
    assert [v.allowed for v in vs] == [True, True]
    assert "rate-limit checks failed" in caplog.text


async def test_a_batch_cancelled_before_it_ran_answers_its_checks():
    """Nothing waits forever: a batch whose task never ran falls back."""
    lim = Limiter(ScriptedRedis([]), cfg(redis_down="open"))
    waiting = asyncio.ensure_future(lim.check("key", "a"))
    await asyncio.sleep(0)  # the check is pending; its flush is scheduled
    await asyncio.sleep(0)  # the flush made the task
    for task in list(lim.batches.sending):
        task.cancel()
    v = await asyncio.wait_for(waiting, 1)
    assert v.allowed
