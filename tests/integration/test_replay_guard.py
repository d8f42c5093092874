"""The webhooks' replay guard across HTTP processes: two guards on one Redis stand
for two processes; a name one claimed is refused by the other, a forgotten one
is let in again, and with Redis gone each process still guards itself."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from engine.http.replays import LOCAL_ONLY, SharedTokens

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url):
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
    yield client
    await client.aclose()


async def test_a_name_is_taken_once_across_processes(redis):
    a, b = SharedTokens("test", redis, 300), SharedTokens("test", redis, 300)
    name = f"nonce-{uuid.uuid4()}"
    assert await a.remember(name)
    assert not await b.remember(name)  # the other process: a replay
    assert not await a.remember(name)  # the same process: refused without asking Redis
    ttl = await redis.ttl(a._key(name))
    assert 590 <= ttl <= 601  # twice the window
    await a.forget(name)  # not processed: the provider's retry must get in, wherever it lands
    assert await b.remember(name)
    other_kind = SharedTokens("other", redis, 300)
    assert await other_kind.remember(name)  # kinds do not share names


async def test_without_redis_each_process_guards_itself():
    gone = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    before = LOCAL_ONLY.labels("down")._value.get()
    a = SharedTokens("down", gone, 300)
    name = f"nonce-{uuid.uuid4()}"
    assert await a.remember(name)
    assert not await a.remember(name)
    assert LOCAL_ONLY.labels("down")._value.get() == before + 1
    await a.forget(name)  # no error either
    await gone.aclose()
