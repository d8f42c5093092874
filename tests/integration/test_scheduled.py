"""Scheduled sends through the engine: held (status ``deferred``, reason
``scheduled``) until ``send_at`` or each recipient's ``send_at_local``, released
by the Scheduler and sent then; cancellable meanwhile; refused at the edge when
malformed, over HTTP (422 naming the field) and NATS (the dead-letter subject)."""

from __future__ import annotations

import time
import uuid
import zoneinfo
from datetime import datetime, timedelta

import msgspec
import pytest

from infra import dead_letters, streams
from policy.types import UserProfile
from tests.integration.helpers import engine_config, row_status, serving, wait_rows

pytestmark = pytest.mark.integration

ZONES = {"s-tokyo": "Asia/Tokyo", "s-ny": "America/New_York", "s-utc": "UTC"}


@pytest.fixture(scope="module")
def hook(webhook_sink):
    return webhook_sink


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, redis_url, hook, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), webhook_url=hook.url,
                        channels=("webhook",), redis_url=redis_url, overrides={"scheduler": {"interval_s": 0.2}})
    people = [UserProfile(user_id=u, timezone=tz) for u, tz in ZONES.items()]
    async with serving(cfg, database_url, people) as eng:
        yield eng


def note(user: str = "s-utc", **kw) -> dict:
    return {"id": str(uuid.uuid4()), "user_id": user, "category": "job_alerts", "channels": ["webhook"],
            "content": {"text": "your interview is tomorrow"}, **kw}


async def test_held_until_send_at_then_sent(engine, hook, client):
    n = note(send_at=time.time() + 3)
    async with client.post(f"{engine.base_url}/v1/notifications", json=n) as r:
        assert r.status == 202, await r.text()
    await wait_rows(engine.pool, [n["id"]], 1)
    assert await row_status(engine, n["id"]) == ("deferred", "scheduled")
    assert hook.accepted[n["id"]] == 0
    assert await row_status(engine, n["id"], until="sent", timeout_s=30) == ("sent", "ok")
    assert hook.accepted[n["id"]] == 1


async def test_each_recipient_at_their_own_wall_clock_time(engine, client):
    at = "09:00"
    ids = {}
    for user in ZONES:
        n = note(user, send_at_local=at)
        ids[user] = n["id"]
        async with client.post(f"{engine.base_url}/v1/notifications", json=n) as r:
            assert r.status == 202, await r.text()
    await wait_rows(engine.pool, list(ids.values()), len(ids))
    for user, nid in ids.items():
        due = await engine.pool.fetchval("SELECT extract(epoch FROM due_at) FROM scheduled_notifications "
                                         "WHERE notification_id = $1", uuid.UUID(nid))
        local = datetime.fromtimestamp(float(due), zoneinfo.ZoneInfo(ZONES[user]))
        assert (local.hour, local.minute) == (9, 0), (user, local)
        assert time.time() - 5 < float(due) < time.time() + 86400 + 3600
    # cancelled while held, as anything held is
    async with client.delete(f"{engine.base_url}/v1/notifications/{ids['s-tokyo']}") as r:
        assert r.status == 200, await r.text()
    assert await row_status(engine, ids["s-tokyo"]) == ("cancelled", "cancelled")


async def test_a_local_date_and_time_in_the_past_goes_at_once(engine, client):
    yesterday = (datetime.now(zoneinfo.ZoneInfo("UTC")) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    n = note(send_at_local=yesterday)
    async with client.post(f"{engine.base_url}/v1/notifications", json=n) as r:
        assert r.status == 202
    await wait_rows(engine.pool, [n["id"]], 1)
    assert await row_status(engine, n["id"], until="sent", timeout_s=15) == ("sent", "ok")


async def test_a_scheduled_broadcast_holds_each_recipient(engine, client):
    due = time.time() + 3600
    async with client.post(f"{engine.base_url}/v1/broadcasts?dry_run=true", json={
            "category": "job_alerts", "channels": ["webhook"], "content": {"text": "x"}, "send_at": due}) as r:
        body = await r.json()
    assert {(d["action"], d["reason"], d["count"]) for d in body["decisions"]} == {("defer", "scheduled", len(ZONES))}


async def test_malformed_schedules_are_refused_at_the_edge(engine, client):
    for extra, field in (({"send_at_local": "9am"}, "$.send_at_local"),
                         ({"send_at_local": "2027-02-30T09:00"}, "$.send_at_local"),
                         ({"send_at": 1e12}, "$.send_at"),
                         ({"send_at": time.time() + 60, "send_at_local": "09:00"}, "$.send_at_local")):
        async with client.post(f"{engine.base_url}/v1/notifications", json=note(**extra)) as r:
            body = await r.json()
            assert r.status == 422 and body["errors"][0]["field"] == field, (extra, body)
    # over NATS: to the dead-letter subject, with the reason
    sub = await engine.nc.subscribe(streams.dlq_subject(engine.cfg.nats))
    bad = note(send_at_local="25:00")
    await engine.js.publish(streams.notify_subject(engine.cfg.nats, "job_alerts"), msgspec.json.encode(bad))
    msg = await sub.next_msg(timeout=15)
    headers = msg.headers or {}
    assert headers.get(dead_letters.REASON) == "payload.invalid" and "send_at_local" in headers.get(dead_letters.ERROR, ""), headers
    await sub.unsubscribe()
