"""Several devices per user through a running engine (issue 16 item 5): an
iPhone (APNs) and an Android tablet (FCM) registered over HTTP, a push reaching
each through the provider that speaks its token, with the rich fields mapped
per platform; one record for the notification; a device's gone token removes
that device only; a contextual preference for one kind of device holds for it
alone; the token moves to the new owner of a phone."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from infra.config import ChannelConfig, ProviderConfig
from policy.types import UserProfile
from sandbox.apns import ApnsSink, make_signing_key
from sandbox.fcm import FcmSink, make_service_account
from tests.integration.helpers import api_session, engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

KEY_ID, TEAM_ID, TOPIC = "ABC123DEFG", "TEAM123456", "com.example.tidings"
IPHONE, GONE_IPHONE = "a1" * 32, "b2" * 32


@pytest.fixture(scope="module")
async def sinks():
    key = make_signing_key()
    apns = ApnsSink(key, KEY_ID, TEAM_ID, TOPIC, keep_bodies=True)
    await apns.start()
    fcm = FcmSink(make_service_account("tidings-devices-test"), keep_bodies=True)
    await fcm.start()
    apns.unregistered.add(GONE_IPHONE)
    yield key, apns, fcm
    await apns.stop()
    await fcm.stop()


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, redis_url, sinks, tmp_path_factory):
    key, apns, fcm = sinks
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), channels=(),
                        redis_url=redis_url)
    push = ChannelConfig(providers=[
        ProviderConfig(name="apns", type="apns", max_attempts=1, settings={
            "key": key, "key_id": KEY_ID, "team_id": TEAM_ID, "topic": TOPIC, "host": "127.0.0.1",
            "port": apns.port, "ca_file": apns.ca_file, "timeout_s": 5}),
        ProviderConfig(name="fcm", type="fcm", max_attempts=1, priority=1, settings={
            "service_account": fcm.service_account(), "base_url": fcm.url})])
    cfg = msgspec.structs.replace(cfg, channels={"push": push})
    async with serving(cfg, database_url, [UserProfile(user_id=u) for u in ("d1", "d2", "d3", "d4", "d5")]) as eng:
        yield eng


async def register(s, engine, user: str, device: str, body: dict, status: int = 200) -> dict:
    async with s.put(f"{engine.base_url}/v1/users/{user}/devices/{device}", json=body) as r:
        assert r.status == status, await r.text()
        return await r.json()


async def push(s, engine, user: str, **extra) -> str:
    nid = str(uuid.uuid4())
    async with s.post(f"{engine.base_url}/v1/notifications", json={
            "id": nid, "user_id": user, "category": "messages", "channels": ["push"],
            "content": {"subject": "New message", "text": "A recruiter wrote to you"}, **extra}) as r:
        assert r.status == 202, await r.text()
    await wait_rows(engine.pool, [nid], 1)
    return nid


async def row(engine, nid: str) -> tuple:
    r = await engine.pool.fetchrow("SELECT status, reason, timeline::text AS timeline FROM delivery_tracking "
                                   "WHERE notification_id = $1", uuid.UUID(nid))
    return r["status"], r["reason"], msgspec.json.decode(r["timeline"] or "[]")


RICH = {"image": "https://cdn.example.com/a.png", "badge": 3, "sound": "chime", "thread": "chat-7",
        "actions": [{"id": "reply", "title": "Reply"}, {"id": "later", "title": "Later"}]}


async def test_a_push_reaches_every_device_through_its_own_service(engine, sinks):
    _, apns, fcm = sinks
    async with api_session() as s:
        phone = await register(s, engine, "d1", "iphone-1", {"platform": "ios", "token": IPHONE, "app": "jobs"})
        assert phone["service"] == "apns" and phone["kind"] == "mobile" and "token" not in phone
        await register(s, engine, "d1", "tab-1", {"platform": "android", "token": "fcm-tablet", "kind": "tablet"})
        async with s.get(f"{engine.base_url}/v1/users/d1/devices") as r:
            listed = await r.json()
        assert [d["device_id"] for d in listed["devices"]] == ["iphone-1", "tab-1"]
        assert IPHONE not in str(listed) and "fcm-tablet" not in str(listed)
        a0, f0 = len(apns.bodies), len(fcm.bodies)
        nid = await push(s, engine, "d1", push=RICH)
    status, reason, timeline = await row(engine, nid)
    assert (status, reason) == ("sent", "ok")
    assert sorted(a["provider"] for a in timeline if a.get("provider")) == ["apns", "fcm"], timeline
    assert len(apns.bodies) == a0 + 1 and len(fcm.bodies) == f0 + 1  # each device once, by its own service
    ios = apns.bodies[-1]
    assert ios["token"] == IPHONE
    aps = ios["payload"]["aps"]
    assert aps["badge"] == 3 and aps["sound"] == "chime" and aps["thread-id"] == "chat-7"
    assert aps["category"] == "tidings.reply.later" and aps["mutable-content"] == 1
    assert ios["payload"]["image"] == RICH["image"]
    android = fcm.bodies[-1]["message"]
    assert android["token"] == "fcm-tablet" and android["notification"]["image"] == RICH["image"]
    # no click_action: Android opens the activity an app's own category names, and none was given
    assert android["android"]["notification"] == {"sound": "chime", "tag": "chat-7", "notification_count": 3}
    assert android["apns"]["payload"]["aps"]["category"] == "tidings.reply.later"


async def test_a_gone_token_removes_that_device_only(engine, sinks):
    _, apns, fcm = sinks
    async with api_session() as s:
        await register(s, engine, "d2", "old-iphone", {"platform": "ios", "token": GONE_IPHONE})
        await register(s, engine, "d2", "pixel", {"platform": "android", "token": "fcm-pixel"})
        nid = await push(s, engine, "d2")
        assert (await row(engine, nid))[:2] == ("sent", "ok")
        async with s.get(f"{engine.base_url}/v1/users/d2/devices") as r:
            assert [d["device_id"] for d in (await r.json())["devices"]] == ["pixel"]
        audit = await engine.pool.fetch("SELECT action FROM preference_audit_log WHERE user_id = 'd2' "
                                        "AND action LIKE 'device.%' ORDER BY id")
        assert [a["action"] for a in audit] == ["device.register", "device.register", "device.gone"]
        # its only device gone: the push fails as address_gone, and the user has no device left
        await register(s, engine, "d3", "only", {"platform": "ios", "token": GONE_IPHONE})
        nid = await push(s, engine, "d3")
        assert (await row(engine, nid))[:2] == ("failed", "address_gone")
        async with s.get(f"{engine.base_url}/v1/users/d3/devices") as r:
            assert (await r.json())["devices"] == []


async def test_a_contextual_preference_holds_for_its_kind_of_device(engine, sinks):
    _, apns, fcm = sinks
    async with api_session() as s:
        async with s.put(f"{engine.base_url}/v1/users/d1/preferences", json={"preferences": [
                {"channel": "push", "context": {"device": "tablet"}, "enabled": False}]}) as r:
            assert r.status == 200, await r.text()
        a0, f0 = len(apns.bodies), len(fcm.bodies)
        nid = await push(s, engine, "d1")
        assert (await row(engine, nid))[:2] == ("sent", "ok")
        assert len(apns.bodies) == a0 + 1 and len(fcm.bodies) == f0  # the phone only
        async with s.put(f"{engine.base_url}/v1/users/d1/preferences", json={"preferences": [
                {"channel": "push", "context": {"device": "tablet"}, "enabled": False},
                {"channel": "push", "context": {"device": "mobile"}, "enabled": False}]}) as r:
            assert r.status == 200, await r.text()
        nid = await push(s, engine, "d1")
        assert (await row(engine, nid))[:2] == ("suppressed", "pref.device_off")


async def test_a_token_moves_to_its_new_owner_and_bad_devices_are_refused(engine, client):
    async with api_session() as s:
        await register(s, engine, "d3", "second-hand", {"platform": "android", "token": "fcm-pixel"})
        async with s.get(f"{engine.base_url}/v1/users/d2/devices") as r:
            assert (await r.json())["devices"] == []  # d2's pixel is d3's now
        for body, field in (({"platform": "ios", "token": "not-hex"}, "$.token"),
                            ({"platform": "web", "token": "x"}, "$.subscription"),
                            ({"platform": "web", "subscription": {"endpoint": "ftp://x"}}, "$.subscription"),
                            ({"platform": "android"}, "$.token"),
                            ({"platform": "phone", "token": "x"}, "$.platform")):
            async with s.put(f"{engine.base_url}/v1/users/d3/devices/x1", json=body) as r:
                assert r.status == 422 and field in [e["field"] for e in (await r.json())["errors"]], body
        await register(s, engine, "nobody", "x1", {"platform": "android", "token": "t"}, status=404)
        async with s.delete(f"{engine.base_url}/v1/users/d3/devices/second-hand") as r:
            assert await r.json() == {"device_id": "second-hand", "removed": True}
    token, _ = await engine.auth.mint("d3", 600)  # the app on the phone registers itself
    me = {"Authorization": f"Bearer {token}"}
    async with client.put(f"{engine.base_url}/v1/users/d3/devices/own", json={"platform": "android", "token": "t3"},
                          headers=me) as r:
        assert r.status == 200, await r.text()
    async with client.put(f"{engine.base_url}/v1/users/d1/devices/own", json={"platform": "android", "token": "t4"},
                          headers=me) as r:
        assert r.status == 403


async def test_registering_again_unchanged_writes_nothing_and_one_token_has_one_owner(engine):
    async with api_session() as s:
        body = {"platform": "android", "token": "fcm-same"}
        await register(s, engine, "d1", "again", body)
        count = "SELECT count(*) FROM preference_audit_log WHERE user_id = 'd1' AND action = 'device.register'"
        before = await engine.pool.fetchval(count)
        await register(s, engine, "d1", "again", body)  # an app's next start
        assert await engine.pool.fetchval(count) == before
        # two users register one phone's token at once: one of them has it (users no other test pushes to,
        # so the winner's extra device cannot show up in another test's sink)
        import asyncio
        await asyncio.gather(register(s, engine, "d4", "race", {"platform": "android", "token": "fcm-race"}),
                             register(s, engine, "d5", "race", {"platform": "android", "token": "fcm-race"}))
        holders = await engine.pool.fetch("SELECT user_id FROM user_devices WHERE device_id = 'race'")
        assert len(holders) == 1


async def test_a_suppressed_token_is_not_pushed_to(engine, sinks):
    _, apns, fcm = sinks
    async with api_session() as s:
        await register(s, engine, "d2", "blocked", {"platform": "android", "token": "fcm-blocked"})
        await register(s, engine, "d2", "fine", {"platform": "android", "token": "fcm-fine"})
        async with s.post(f"{engine.base_url}/v1/suppressions", json={"channel": "push", "address": "fcm-blocked",
                                                                      "reason": "manual"}) as r:
            assert r.status == 201 and "d2" in (await r.json())["users"]
        f0 = len(fcm.bodies)
        nid = await push(s, engine, "d2")
        assert (await row(engine, nid))[:2] == ("sent", "ok")
        assert [b["message"]["token"] for b in fcm.bodies[f0:]] == ["fcm-fine"]
