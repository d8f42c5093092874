"""Dry runs (``?dry_run=true``): a broadcast or notifications decided by the
UserShards exactly as a send decides them, with nothing sent, held or recorded;
then the same broadcast sent for real lands on the same decisions."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import pytest

from policy.types import UserProfile
from sandbox import SmtpSink, WebhookSink
from tests.integration.helpers import api_session, engine_config, serving

pytestmark = pytest.mark.integration

USERS = 40
STATUS = {"send": "sent", "defer": "deferred", "digest": "digested", "suppress": "suppressed", "reject": "rejected"}


def person(i: int) -> UserProfile:
    # every 10th has marketing off on email; d3 has no email address
    return UserProfile(user_id=f"d{i}", addresses={} if i == 3 else {"email": f"d{i}@example.test"},
                       opt_outs=["email:marketing"] if i % 10 == 0 else [])


@pytest.fixture(scope="module")
async def sinks():
    smtp = SmtpSink(port=0)
    smtp.start()
    hook = WebhookSink("test-secret", port=0)
    await hook.start()
    yield smtp, hook
    smtp.stop()
    await hook.stop()


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, redis_url, sinks, tmp_path_factory):
    smtp, hook = sinks
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        webhook_url=hook.url, redis_url=redis_url)
    async with serving(cfg, database_url, [person(i) for i in range(USERS)]) as eng:
        hour = time.gmtime().tm_hour
        quiet = {"start": f"{(hour - 1) % 24:02d}:00", "end": f"{(hour + 2) % 24:02d}:00"}
        for user, prefs in (("d5", [{"channel": "email", "quiet_hours": [quiet]}]),  # quiet now, on email
                            ("d7", [{"channel": "email", "category": "marketing", "frequency": "daily"}])):
            async with api_session() as client, client.put(f"{eng.base_url}/v1/users/{user}/preferences",
                                  json={"timezone": "UTC", "preferences": prefs}) as r:
                assert r.status == 200, await r.text()
        yield eng


BROADCAST = {"category": "marketing", "channels": ["email", "webhook"],
             "content": {"subject": "Job fair next week", "text": "Come along."}}


async def counts_now(engine, sinks) -> tuple:
    smtp, hook = sinks
    tracked = await engine.pool.fetchval("SELECT count(*) FROM delivery_tracking")
    held = await engine.pool.fetchval("SELECT count(*) FROM scheduled_notifications")
    return tracked, held, smtp.count, hook.received


def by_decision(body: dict) -> Counter:
    return Counter({(d["channel"], d["action"], d["reason"]): d["count"] for d in body["decisions"]})


async def test_a_broadcast_dry_run_decides_everyone_and_does_nothing(engine, sinks, client):
    before = await counts_now(engine, sinks)
    async with client.post(f"{engine.base_url}/v1/broadcasts?dry_run=true", json=BROADCAST) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert body["dry_run"] is True and body["recipients"] == USERS
    got = by_decision(body)
    opted_out = len(range(0, USERS, 10))
    assert got == Counter({
        ("email", "send", "ok"): USERS - opted_out - 3,  # less d3, d5 and d7
        ("email", "suppress", "pref.category_off"): opted_out,
        ("email", "suppress", "address.missing_email"): 1,
        ("email", "defer", "quiet_hours"): 1,
        ("email", "digest", "digest.daily"): 1,
        ("webhook", "send", "ok"): USERS}), body
    samples = {(d["channel"], d["action"], d["reason"]): d["sample"] for d in body["decisions"]}
    assert samples[("email", "defer", "quiet_hours")] == ["d5"]
    assert set(samples[("email", "suppress", "pref.category_off")]) <= {f"d{i}" for i in range(0, USERS, 10)}
    assert all(len(s) <= 5 for s in samples.values())
    await asyncio.sleep(1.0)  # anything sent or recorded would show by now
    assert await counts_now(engine, sinks) == before  # nothing recorded, held or sent

    # sent for real, it lands on the same decisions
    async with client.post(f"{engine.base_url}/v1/broadcasts", json=BROADCAST) as r:
        assert r.status == 202, await r.text()
        bid = uuid.UUID((await r.json())["id"])
    for _ in range(300):
        if await engine.pool.fetchval("SELECT count(*) FROM delivery_tracking WHERE parent_id = $1", bid) >= 2 * USERS:
            break
        await asyncio.sleep(0.2)
    rows = await engine.pool.fetch("SELECT channel, status, reason FROM delivery_tracking WHERE parent_id = $1", bid)
    real = Counter((r["channel"], r["status"], r["reason"] if r["status"] != "sent" else "ok") for r in rows)
    assert real == Counter({(ch, STATUS[action], reason): n for (ch, action, reason), n in got.items()})


async def test_notifications_dry_run_answers_per_decision_and_records_nothing(engine, sinks, client):
    before = await counts_now(engine, sinks)
    ids = [str(uuid.uuid4()) for _ in range(4)]
    content = {"subject": "s", "text": "t"}
    batch = [{"id": ids[0], "user_id": "d10", "category": "marketing", "channels": ["email"],  # opted out
              "content": content},
             {"id": ids[1], "user_id": "d11", "category": "marketing", "channels": ["email", "webhook"],
              "content": content},
             {"id": ids[2], "user_id": "d5", "category": "job_alerts", "channels": ["email"],  # quiet hours
              "content": content},
             # opted out of marketing email: its fallback channel goes at once
             {"id": ids[3], "user_id": "d20", "category": "marketing", "channels": ["email"], "fallback": ["webhook"],
              "content": content}]
    async with client.post(f"{engine.base_url}/v1/notifications?dry_run=1", json=batch) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert body["recipients"] == 4
    got = by_decision(body)
    assert got == Counter({("email", "suppress", "pref.category_off"): 2, ("email", "send", "ok"): 1,
                           ("webhook", "send", "ok"): 2, ("email", "defer", "quiet_hours"): 1})
    await asyncio.sleep(1.0)
    assert await counts_now(engine, sinks) == before
    for nid in ids:
        async with client.get(f"{engine.base_url}/v1/notifications/{nid}") as r:
            assert r.status == 404

    # sent for real, the same decisions
    async with client.post(f"{engine.base_url}/v1/notifications", json=batch) as r:
        assert r.status == 202, await r.text()
    for _ in range(150):
        if await engine.pool.fetchval("SELECT count(*) FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])",
                                      ids) >= 6:
            break
        await asyncio.sleep(0.2)
    rows = await engine.pool.fetch("SELECT channel, status, reason FROM delivery_tracking "
                                   "WHERE notification_id = ANY($1::uuid[])", ids)
    real = Counter((r["channel"], r["status"], r["reason"] if r["status"] != "sent" else "ok") for r in rows)
    assert real == Counter({(ch, STATUS[action], reason): n for (ch, action, reason), n in got.items()})


async def test_a_dry_run_needs_its_own_scope_besides_the_sends(engine, client):
    from engine import auth
    async with engine.pool.acquire() as conn:
        _, sender = await auth.create_key(conn, "sender", ["notifications:send", "broadcasts:send"])
        _, previewer = await auth.create_key(conn, "previewer", ["notifications:send", "broadcasts:send",
                                                                 "decisions:read"])
    note = {"user_id": "d11", "category": "marketing", "channels": ["email"], "content": {"subject": "s", "text": "t"}}
    for path, body in (("/v1/notifications", note), ("/v1/broadcasts", BROADCAST)):
        async with client.post(f"{engine.base_url}{path}?dry_run=true", json=body,
                               headers={"Authorization": f"Bearer {sender}"}) as r:
            assert r.status == 403, await r.text()
            assert "decisions:read" in (await r.json())["errors"][0]["reason"]
        async with client.post(f"{engine.base_url}{path}?dry_run=true", json=body,
                               headers={"Authorization": f"Bearer {previewer}"}) as r:
            assert r.status == 200, await r.text()


async def test_one_broadcast_dry_run_at_a_time(engine, client):
    async with engine.broadcast_dry_run:  # as if one were running
        async with client.post(f"{engine.base_url}/v1/broadcasts?dry_run=true", json=BROADCAST) as r:
            assert r.status == 429 and (await r.json())["errors"][0]["field"] == "dry_run"
    async with client.post(f"{engine.base_url}/v1/broadcasts?dry_run=true", json=BROADCAST) as r:
        assert r.status == 200


async def test_a_dry_run_is_checked_like_a_send(engine, client):
    async with client.post(f"{engine.base_url}/v1/broadcasts?dry_run=maybe", json=BROADCAST) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "dry_run"
    async with client.post(f"{engine.base_url}/v1/broadcasts?dry_run=true",
                           json={**BROADCAST, "channels": ["fax"]}) as r:
        assert r.status == 422 and "channels" in await r.text()
    async with client.post(f"{engine.base_url}/v1/notifications?dry_run=true",
                           json={"user_id": "d1", "category": "marketing", "channels": ["email"]}) as r:
        assert r.status == 422
