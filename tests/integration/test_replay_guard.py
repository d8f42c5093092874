"""The webhooks' replay guard across HTTP processes: guards on one Redis stand for
processes. A name being processed is busy everywhere, a processed one done
everywhere, a failed one free again; only its own claim moves a name; two
deployments never share names; with Redis gone each process guards itself."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from engine.http.replays import LOCAL_ONLY, SharedTokens, guarded

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url):
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
    yield client
    await client.aclose()


def pair(redis, ns: str = "schema:STREAM"):
    return SharedTokens("test", redis, 300, ns), SharedTokens("test", redis, 300, ns)


async def test_busy_then_done_across_processes(redis):
    a, b = pair(redis)
    name = f"mid-{uuid.uuid4()}"
    state, claim = await a.claim(name)
    assert state == "new"
    assert (await b.claim(name))[0] == "busy"  # SNS's copy at another process while the first runs: 503, not lost
    assert (await a.claim(name))[0] == "busy"  # and at the same one
    await a.done(claim)
    assert (await b.claim(name))[0] == "done"
    assert (await a.claim(name))[0] == "done"
    assert 600 < await redis.ttl(a._key(name)) <= 660  # twice the window and a margin


async def test_a_failed_request_frees_its_name_everywhere(redis):
    a, b = pair(redis)
    name = f"mid-{uuid.uuid4()}"

    async def failing():
        raise RuntimeError("database down")

    state, claim = await a.claim(name)
    with pytest.raises(RuntimeError):
        await guarded(a, claim, failing())
    state, claim = await b.claim(name)
    assert state == "new"  # the provider's retry, wherever it lands, gets in
    await guarded(b, claim, asyncio.sleep(0))
    assert (await a.claim(name))[0] == "done"


async def test_only_its_own_claim_moves_a_name(redis):
    """A's claim expired (say A stalled past busy_s) and B took the name: A's
    release must not free B's claim, nor A's done overwrite it."""
    a, b = pair(redis)
    name = f"mid-{uuid.uuid4()}"
    _, stale = await a.claim(name)
    await redis.delete(a._key(name))  # A's busy claim ran out
    b.local.forget(name)
    state, mine = await b.claim(name)
    assert state == "new"
    await a.release(stale)
    assert (await redis.get(b._key(name))) == mine.value
    await a.done(stale)
    assert (await redis.get(b._key(name))) == mine.value


async def test_a_request_that_outlived_its_claim_still_marks_the_name_done(redis):
    a, b = pair(redis)
    name = f"mid-{uuid.uuid4()}"
    _, claim = await a.claim(name)
    await redis.delete(a._key(name))  # its busy mark ran out while it worked
    await a.done(claim)
    assert (await b.claim(name))[0] == "done"


async def test_deployments_do_not_share_names(redis):
    prod, staging = SharedTokens("sns", redis, 300, "public:TIDINGS"), SharedTokens("sns", redis, 300, "stg:TIDINGS")
    name = f"mid-{uuid.uuid4()}"
    _, claim = await prod.claim(name)
    await prod.done(claim)
    assert (await staging.claim(name))[0] == "new"  # SNS gives each subscription the same MessageId


async def test_a_cancelled_claim_holds_nothing(redis):
    a, b = pair(redis)
    name = f"mid-{uuid.uuid4()}"
    _, claim = await a.claim(name)
    task = asyncio.ensure_future(guarded(a, claim, asyncio.sleep(10)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await b.claim(name))[0] == "new"


async def test_without_redis_each_process_guards_itself():
    gone = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    before = LOCAL_ONLY.labels("down")._value.get()
    a = SharedTokens("down", gone, 300)
    name = f"mid-{uuid.uuid4()}"
    state, claim = await a.claim(name)
    assert state == "new"
    assert (await a.claim(name))[0] == "busy"
    await a.done(claim)
    assert (await a.claim(name))[0] == "done"
    assert LOCAL_ONLY.labels("down")._value.get() == before + 1
    await gone.aclose()
