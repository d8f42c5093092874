"""The rate limiter against a real Redis (the ``redis_url`` fixture): the Lua
script's verdicts, headers and key expiry, the same arithmetic as the pure
``gcra``, the ``redis_down`` modes when Redis is unreachable or slow, two HTTP
processes sharing one limit, and the engine's embedded Redis under its home."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from engine.embedded import free_port
from engine.ratelimit import FALLBACKS, LUA, US, Limiter, LimiterUnavailable, cells, gcra, headers, redis_key
from engine.runtime import Engine
from infra.config import RateLimitConfig
from tests.integration.helpers import engine_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).with_name("ratelimit_app.py")


@pytest.fixture
async def client(redis_url):
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


def cfg(**kw) -> RateLimitConfig:
    return RateLimitConfig(**{"key_per_s": 0.01, "key_burst": 3.0, "timeout_s": 2.0, **kw})


async def test_lua_allows_the_burst_then_denies(client):
    lim = Limiter(client, cfg())
    ident = uuid.uuid4().hex
    vs = [await lim.check("key", ident) for _ in range(4)]
    assert [v.allowed for v in vs] == [True, True, True, False]
    assert [v.remaining for v in vs] == [2, 1, 0, 0]
    assert vs[0].limit == 3
    assert vs[2].reset_s == pytest.approx(300, abs=1)  # 3 requests at 0.01/s: full in 300 s
    assert vs[3].retry_after_s == pytest.approx(100, abs=1)
    h = headers(vs[3])
    assert h["Retry-After"] in ("100", "101") and h["RateLimit-Remaining"] == "0" and h["RateLimit-Limit"] == "3"
    key = redis_key("key", ident)
    assert ident not in key
    ttl = await client.pttl(key)
    assert 298_000 < ttl <= 300_000  # the key vanishes once the client is back at its full burst
    # another ident and the other class are separate limits
    assert (await lim.check("key", uuid.uuid4().hex)).allowed
    assert (await lim.check("user", ident)).allowed
    await client.delete(key, redis_key("user", ident))


async def test_checks_of_one_loop_turn_go_as_one_pipeline(client):
    """Twenty checks asked for together: one pipeline, and still exactly the burst allowed."""
    lim = Limiter(client, cfg())
    ident = uuid.uuid4().hex
    before = lim.batches.rounds
    vs = await asyncio.gather(*(lim.check("key", ident) for _ in range(20)))
    assert lim.batches.rounds == before + 1
    assert [v.allowed for v in vs] == [True] * 3 + [False] * 17  # in the order they were asked
    assert [v.remaining for v in vs[:3]] == [2, 1, 0]
    await client.delete(redis_key("key", ident))


async def test_a_script_redis_lost_is_loaded_again(client):
    """After SCRIPT FLUSH (a Redis restarted without its scripts) the next batch loads it once."""
    lim = Limiter(client, cfg())
    ident = uuid.uuid4().hex
    assert (await lim.check("key", ident)).allowed
    await client.script_flush()
    vs = await asyncio.gather(*(lim.check("key", ident) for _ in range(3)))
    assert [v.allowed for v in vs] == [True, True, False]
    await client.delete(redis_key("key", ident))


async def test_a_check_given_up_does_not_spoil_its_batch(client):
    """A request that goes away while its check is in flight: the others of its batch get theirs."""
    lim = Limiter(client, cfg())
    ident = uuid.uuid4().hex
    gone = asyncio.ensure_future(lim.check("key", ident))
    kept = [asyncio.ensure_future(lim.check("key", ident)) for _ in range(3)]
    await asyncio.sleep(0)
    gone.cancel()
    vs = await asyncio.gather(*kept)
    assert [v.allowed for v in vs] == [True, True, False]  # the one given up was counted by Redis all the same
    await client.delete(redis_key("key", ident))


async def test_idle_key_expires(client):
    lim = Limiter(client, cfg(key_per_s=10.0, key_burst=2.0))
    ident = uuid.uuid4().hex
    assert (await lim.check("key", ident)).allowed
    assert 0 < await client.pttl(redis_key("key", ident)) <= 100  # one request at 10/s: full again in 0.1 s
    await asyncio.sleep(0.3)
    assert not await client.exists(redis_key("key", ident))


async def test_lua_matches_the_pure_gcra(client):
    """The script with an injected time (ARGV[3]) against ``gcra`` on the same requests."""
    lim = Limiter(client, cfg())
    rng = random.Random(7)
    for _ in range(5):
        rate, burst = rng.choice([0.5, 2.0, 7.0, 100.0]), rng.choice([1.0, 3.0, 10.0, 2.5])
        key = redis_key("key", uuid.uuid4().hex)
        now, tat = 1_700_000_000.0, None
        for _ in range(60):
            now = round(now + rng.choice([0.0, 0.0, 0.01, 0.1, 0.5, 1.0, 3.0]) / rate, 6)
            expected, tat = gcra(tat, now, rate, burst)
            allowed, remaining, reset_us, retry_us = await lim.script(
                keys=[key], args=[*cells(rate, burst), round(now * US)])
            assert (bool(allowed), int(remaining)) == (expected.allowed, expected.remaining), (rate, burst, now)
            assert int(reset_us) / US == expected.reset_s and int(retry_us) / US == expected.retry_after_s
        await client.delete(key)


async def test_a_burst_at_a_high_rate_is_whole(client):
    """5,000 requests at one instant (injected, 2026) at 5,000/s, in the Lua step:
    all 5,000 allowed, the next refused; with floats in seconds since the epoch one
    could be refused early."""
    rate, burst = 5000.0, 5000.0
    key = redis_key("key", uuid.uuid4().hex)
    now_us = 1_796_400_000_123_457
    args = [*cells(rate, burst), now_us]
    sha = await client.script_load(LUA)
    answers = [await client.evalsha(sha, 1, key, *args) for _ in range(5001)]
    assert [int(a[0]) for a in answers] == [1] * 5000 + [0]
    assert [int(a[1]) for a in answers[:3]] == [4999, 4998, 4997] and int(answers[4999][1]) == 0
    await client.delete(key)


@pytest.mark.parametrize("mode", ["local", "open", "closed"])
async def test_unreachable_redis_applies_redis_down(mode):
    down = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    lim = Limiter(down, cfg(redis_down=mode, timeout_s=0.5))
    before = FALLBACKS.labels(mode)._value.get()
    try:
        if mode == "closed":
            with pytest.raises(LimiterUnavailable):
                await lim.check("key", "k")
            assert FALLBACKS.labels(mode)._value.get() == before + 1
            return
        got = [(await lim.check("key", "k")).allowed for _ in range(4)]
        assert got == ([True, True, True, False] if mode == "local" else [True] * 4)
        assert FALLBACKS.labels(mode)._value.get() == before + 4
    finally:
        await down.aclose()


async def test_slow_redis_counts_as_down():
    """A server that accepts and never answers: each check gives up after timeout_s."""
    async def silent(reader, writer):
        await reader.read(1 << 16)
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    slow = aioredis.Redis(host="127.0.0.1", port=port)
    lim = Limiter(slow, cfg(redis_down="local", timeout_s=0.05))
    before = FALLBACKS.labels("local")._value.get()
    try:
        started = time.monotonic()
        v = await lim.check("key", "k")
        assert v.allowed and v.remaining == 2
        assert time.monotonic() - started < 1.0
        assert FALLBACKS.labels("local")._value.get() == before + 1
    finally:
        await slow.aclose()
        server.close()


def start_app(redis_url: str, burst: int, per_s: float) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(APP), redis_url, str(burst), str(per_s)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # the port, once it listens
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError(f"ratelimit_app did not start: {line!r}")
    return proc, int(line)


async def test_two_processes_share_one_limit(redis_url, client):
    burst, requests = 10, 40
    await client.delete(redis_key("key", "shared-test-key"))
    procs = []
    try:
        for _ in range(2):
            procs.append(await asyncio.to_thread(start_app, redis_url, burst, 0.001))  # no refill during the test
        ports = [port for _, port in procs]
        statuses = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            for i in range(requests):
                async with s.get(f"http://127.0.0.1:{ports[i % 2]}/") as r:
                    statuses.append(r.status)
                    if r.status == 429:
                        assert int(r.headers["Retry-After"]) >= 1
                        assert r.headers["RateLimit-Remaining"] == "0"
                        assert (await r.json())["error"] == "rate limited"
                    else:
                        assert r.headers["RateLimit-Limit"] == str(burst)
        assert statuses.count(200) == burst  # not twice the burst
        assert statuses.count(429) == requests - burst
        assert set(statuses[:burst]) == {200}  # both processes served the first ones
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await client.delete(redis_key("key", "shared-test-key"))


async def test_engine_redis_from_config_or_embedded(redis_url, tmp_path):
    # given: the engine uses it
    eng = Engine(engine_config("nats://unused", "postgresql://unused", str(tmp_path), redis_url=redis_url))
    assert eng.services.redis is None
    eng.services.start()
    assert eng.redis_url == redis_url
    # not given: an embedded Redis under the engine's home, stopped with it
    eng = Engine(engine_config("nats://unused", "postgresql://unused", str(tmp_path)))
    eng.services.start()
    try:
        assert eng.redis_url.startswith("redis://127.0.0.1:")
        assert (tmp_path / "redis.json").exists() and (tmp_path / "redis").is_dir()
        c = aioredis.Redis.from_url(eng.redis_url)
        assert await c.ping()
        await c.aclose()
    finally:
        eng.services.stop()
    assert not (tmp_path / "redis.json").exists()
    # rate limits off: no Redis at all
    off = engine_config("nats://unused", "postgresql://unused", str(tmp_path), overrides={"ratelimit": {"enabled": False}})
    eng = Engine(off)
    assert eng.services.redis is None and eng.redis_url == ""
