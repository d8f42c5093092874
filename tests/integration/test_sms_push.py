"""SMS (Twilio) and push (FCM) through a running engine, each to its loopback
server: consent gates SMS, the text arrives as Twilio's form body, the push
arrives as an FCM v1 message, an unregistered token is removed from the user."""

from __future__ import annotations

import time
import uuid

import msgspec
import pytest

from infra import streams
from infra.config import ChannelConfig, ProviderConfig
from policy.types import UserProfile
from sandbox.fcm import FcmSink, make_service_account
from sandbox.twilio import TwilioSink
from tests.integration.helpers import api_session, engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

ACCOUNT = "AC" + "b2" * 16
TOKEN = "twilio-engine-test-token"


@pytest.fixture(scope="module")
async def sinks():
    twilio = TwilioSink(ACCOUNT, TOKEN, keep_bodies=True)
    await twilio.start()
    fcm = FcmSink(make_service_account("tidings-engine-test"), keep_bodies=True)
    await fcm.start()
    yield twilio, fcm
    await twilio.stop()
    await fcm.stop()


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, sinks, tmp_path_factory):
    twilio, fcm = sinks
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), channels=())
    sms = ChannelConfig(providers=[ProviderConfig(name="twilio", type="twilio_sms", settings={
        "account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100", "base_url": twilio.url})])
    push = ChannelConfig(providers=[ProviderConfig(name="fcm", type="fcm", max_attempts=1, settings={
        "service_account": fcm.service_account(), "base_url": fcm.url})])
    cfg = msgspec.structs.replace(cfg, channels={"sms": sms, "push": push})
    fcm.unregistered.add("gone-token")
    async with serving(cfg, database_url, [
        UserProfile(user_id="s1", addresses={"sms": "+14155552671", "push": "live-token"}),
        UserProfile(user_id="s2", addresses={"sms": "+14155552672", "push": "gone-token"}),
    ]) as eng:
        yield eng


async def send(s, engine, user: str, channels: list[str], **extra) -> str:
    nid = str(uuid.uuid4())
    async with s.post(f"{engine.base_url}/v1/notifications", json={
            "id": nid, "user_id": user, "category": "messages", "channels": channels,
            "content": {"subject": "New message", "text": "A recruiter wrote to you"}, **extra}) as r:
        assert r.status == 202, await r.text()
    return nid


async def rows(engine, nid: str) -> dict:
    return {r["channel"]: (r["status"], r["reason"]) for r in await engine.pool.fetch(
        "SELECT channel, status, reason FROM delivery_tracking WHERE notification_id = $1", uuid.UUID(nid))}


async def test_sms_needs_consent_then_goes_out_through_twilio(engine, sinks):
    twilio, _ = sinks
    async with api_session() as s:
        before = await send(s, engine, "s1", ["sms"])
        await wait_rows(engine.pool, [before], 1)
        assert await rows(engine, before) == {"sms": ("suppressed", "consent.missing_sms")}
        async with s.patch(f"{engine.base_url}/v1/users/s1/preferences", json={"consent": {"sms": "granted"}}) as r:
            assert r.status == 200
        after = await send(s, engine, "s1", ["sms"])
        await wait_rows(engine.pool, [after], 1)
    assert await rows(engine, after) == {"sms": ("sent", "ok")}
    assert twilio.bodies[-1]["To"] == "+14155552671" and twilio.bodies[-1]["Body"] == "A recruiter wrote to you"


async def test_push_through_fcm_and_a_gone_token_is_removed(engine, sinks):
    _, fcm = sinks
    async with api_session() as s:
        ok, gone = await send(s, engine, "s1", ["push"]), await send(s, engine, "s2", ["push"])
        await wait_rows(engine.pool, [ok, gone], 2)
        assert await rows(engine, ok) == {"push": ("sent", "ok")}
        assert await rows(engine, gone) == {"push": ("failed", "address_gone")}
        async with s.get(f"{engine.base_url}/v1/users/s2") as r:
            assert "push" not in (await r.json())["addresses"]
    message = fcm.bodies[-1]["message"]
    assert message["token"] == "live-token" and message["notification"]["title"] == "New message"


async def test_a_push_carries_its_life_and_collapse_key_and_a_stale_one_is_not_sent(engine, sinks):
    _, fcm = sinks
    async with api_session() as s:
        fresh = await send(s, engine, "s1", ["push"], ttl_s=300, collapse_key="thread-7")
        # a producer's request, accepted 10 minutes ago with a 5-minute life (as after an outage)
        stale = str(uuid.uuid4())
        await engine.js.publish(streams.notify_subject(engine.cfg.nats, "messages"), msgspec.json.encode({
            "id": stale, "user_id": "s1", "category": "messages", "channels": ["push"], "ttl_s": 300,
            "accepted_at": time.time() - 600, "content": {"text": "Your code is 123456"}}))
        plain = await send(s, engine, "s1", ["push"])  # the shipped rule: a day
        await wait_rows(engine.pool, [fresh, stale, plain], 3)
        assert await rows(engine, fresh) == {"push": ("sent", "ok")}
        assert await rows(engine, stale) == {"push": ("suppressed", "ttl.expired")}
        assert await rows(engine, plain) == {"push": ("sent", "ok")}
        for field, value in (("ttl_s", 0), ("ttl_s", 29 * 86400), ("collapse_key", "has space"),
                             ("collapse_key", "k" * 65)):
            async with s.post(f"{engine.base_url}/v1/notifications", json={
                    "user_id": "s1", "category": "messages", "channels": ["push"],
                    "content": {"text": "x"}, field: value}) as r:
                assert r.status == 422 and field in await r.text(), (field, r.status)
    sent = [b["message"] for b in fcm.bodies[-2:]]  # the stale one never reached FCM
    (first,) = [m for m in sent if "collapse_key" in m["android"]]
    (second,) = [m for m in sent if m is not first]
    assert first["android"]["collapse_key"] == "thread-7" and first["apns"]["headers"]["apns-collapse-id"] == "thread-7"
    assert 290 <= int(first["android"]["ttl"][:-1]) <= 300
    assert 86000 <= int(second["android"]["ttl"][:-1]) <= 86400
