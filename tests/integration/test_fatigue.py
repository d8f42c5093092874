"""Fatigue caps through a real engine (policy/fatigue.py): a person's third
marketing notification of the day is held until their day ends, reason
``fatigue.day``; critical and transactional ones go; a UserShard that Ray restarts
(its counts gone) counts the day again from PostgreSQL and keeps holding."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import ray

from policy.types import UserProfile
from tests.integration.helpers import api_session, daytime_zone, engine_config, row_status, serving, wait_rows

pytestmark = pytest.mark.integration

ZONE = daytime_zone()  # about 13:00 there: the test does not cross the person's midnight


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, webhook_sink, tmp_path_factory):
    caps = {"caps": [{"name": "daily", "window": "day", "limit": 2, "category": "marketing"},
                     {"name": "news", "window": "day", "limit": 1, "category": "news", "over": "digest"}]}
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), webhook_url=webhook_sink.url,
                        channels=("webhook",), overrides={"preferences": {"fatigue": caps}})
    people = [UserProfile(user_id=u, timezone=ZONE) for u in ("tired", "other", "reader", "counted")]
    async with serving(cfg, database_url, people) as eng:
        yield eng


async def submit(engine, user_id: str, category: str = "marketing", priority: str = "normal") -> tuple[str, str]:
    nid = str(uuid.uuid4())
    async with api_session() as s, s.post(f"{engine.base_url}/v1/notifications", json={
            "id": nid, "user_id": user_id, "category": category, "priority": priority, "channels": ["webhook"],
            "content": {"text": "hello"}}) as r:
        assert r.status == 202, await r.text()
    assert await wait_rows(engine.pool, [nid], 1, timeout_s=60) == 1
    return await row_status(engine, nid)


async def test_the_third_of_the_day_waits_for_the_next_day_and_exempt_ones_go(engine):
    assert [await submit(engine, "tired") for _ in range(2)] == [("sent", "ok")] * 2
    assert await submit(engine, "tired") == ("deferred", "fatigue.day")
    due = await engine.pool.fetchval("SELECT extract(epoch FROM due_at)::float8 FROM scheduled_notifications "
                                     "WHERE user_id = 'tired' AND kind = 'deferred' AND status = 'pending'")
    assert due is not None and time.time() < due <= time.time() + 86_400  # the person's midnight
    assert await submit(engine, "tired", priority="critical") == ("sent", "ok")
    assert await submit(engine, "tired", category="security") == ("sent", "ok")
    assert await submit(engine, "other") == ("sent", "ok")  # caps are per person


async def test_a_digesting_cap_collects_the_rest_of_the_day_into_its_digest(engine):
    assert await submit(engine, "reader", category="news") == ("sent", "ok")
    assert await submit(engine, "reader", category="news") == ("digested", "fatigue.day")
    assert await submit(engine, "reader", category="news") == ("digested", "fatigue.day")
    keys = await engine.pool.fetch("SELECT digest_key FROM scheduled_notifications "
                                   "WHERE user_id = 'reader' AND kind = 'digest'")
    assert len(keys) == 2 and len({k[0] for k in keys}) == 1 and "|news|daily|" in keys[0][0]  # one bucket
    assert await submit(engine, "reader", category="marketing") == ("sent", "ok")  # the news cap only


# a lambda: cloudpickle sends it by value (the actors' workers cannot import this module)
PID = lambda _actor: __import__("os").getpid()  # noqa: E731


async def test_a_restarted_shard_counts_the_day_again_from_postgresql(engine):
    assert [await submit(engine, "counted") for _ in range(2)] == [("sent", "ok")] * 2
    shards = engine.actors.user_shards
    before = [await s.__ray_call__.remote(PID) for s in shards]
    for shard in shards:
        ray.kill(shard, no_restart=False)  # Ray restarts it with no counts
    deadline, after = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        try:
            after = [await asyncio.wait_for(s.__ray_call__.remote(PID), 10) for s in shards]
            if all(a != b for a, b in zip(after, before, strict=True)):
                break
        except (TimeoutError, ray.exceptions.RayError):
            pass
        await asyncio.sleep(0.3)
    assert after and all(a != b for a, b in zip(after, before, strict=True)), "the UserShards were not restarted"
    # its two sends today are read back from PostgreSQL: the third waits
    assert await submit(engine, "counted") == ("deferred", "fatigue.day")
    assert await submit(engine, "counted", category="security") == ("sent", "ok")
