"""Consent records through a running engine, SMS to the loopback Twilio
(issue 13, item 3): a marketing grant with its basis, source and evidence waits
for the person's confirmation (a text asks, their YES through Twilio's signed
inbound webhook confirms); sends are held back with the status as the reason
(pending, expired, withdrawn); STOP withdraws every SMS consent; HELP is
answered; the evidence is sealed at rest and opened in the export with the
record's history."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import urllib.parse
import uuid

import aiohttp
import msgspec
import pytest

from infra.config import ChannelConfig, ProviderConfig
from policy.types import UserProfile
from sandbox.twilio import TwilioSink
from tests.integration.helpers import api_session, daytime_zone, engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

ACCOUNT = "AC" + "c3" * 16
TOKEN = "twilio-consent-test-token"
NUMBER = "+14155553301"
THIRD = "+14155553303"
FOURTH = "+14155553304"


@pytest.fixture(scope="module")
async def twilio():
    sink = TwilioSink(ACCOUNT, TOKEN, keep_bodies=True)
    await sink.start()
    yield sink
    await sink.stop()


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, twilio, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), channels=())
    sms = ChannelConfig(providers=[ProviderConfig(name="twilio", type="twilio_sms", settings={
        "account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100", "base_url": twilio.url})])
    cfg = msgspec.structs.replace(cfg, channels={"sms": sms})
    zone = daytime_zone()  # marketing texts go only 08:00-21:00 in the person's zone (the tcpa rule)
    async with serving(cfg, database_url, [UserProfile(user_id="c1", addresses={"sms": NUMBER}, timezone=zone),
                                           UserProfile(user_id="c2", addresses={"sms": "+14155553302"}, timezone=zone),
                                           UserProfile(user_id="c3", addresses={"sms": THIRD}, timezone=zone),
                                           UserProfile(user_id="c4", addresses={"sms": FOURTH}, timezone=zone)]) as eng:
        yield eng


async def send(engine, user: str, category: str) -> tuple[str, str]:
    nid = str(uuid.uuid4())
    async with api_session() as s, s.post(f"{engine.base_url}/v1/notifications", json={
            "id": nid, "user_id": user, "category": category, "channels": ["sms"],
            "content": {"text": f"A {category} text"}}) as r:
        assert r.status == 202, await r.text()
    await wait_rows(engine.pool, [nid], 1)
    row = await engine.pool.fetchrow("SELECT status, reason FROM delivery_tracking WHERE notification_id = $1",
                                     uuid.UUID(nid))
    return row["status"], row["reason"]


async def reply(engine, body: str, number: str = NUMBER, token: str = TOKEN) -> tuple[int, str]:
    """The person's text, as Twilio posts it to the inbound webhook (signed)."""
    url = f"{engine.base_url}/v1/tracking/twilio/inbound"
    params = [("AccountSid", ACCOUNT), ("Body", body), ("From", number), ("MessageSid", "SM" + "d4" * 16),
              ("To", "+14155550100")]
    signed = url + "".join(k + v for k, v in sorted(params))
    sig = base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()).decode()
    async with aiohttp.ClientSession() as twilio_side, twilio_side.post(
            url, data=urllib.parse.urlencode(params), headers={
                "X-Twilio-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"}) as r:
        return r.status, await r.text()


async def test_double_opt_in_then_stop(engine, twilio):
    grant = {"status": "granted", "basis": "consent", "source": "signup_form", "text_version": "offers-v3",
             "evidence": {"method": "web_form", "ip": "203.0.113.7", "text": "Text me offers", "at": time.time()}}
    async with api_session() as s, s.patch(f"{engine.base_url}/v1/users/c1/preferences",
                                           json={"consent": {"sms:marketing": grant, "sms": "granted"}}) as r:
        assert r.status == 200, await r.text()
    asked = [b for b in twilio.bodies if b["To"] == NUMBER]
    assert len(asked) == 1 and "Reply YES" in asked[0]["Body"] and "marketing" in asked[0]["Body"]
    assert await send(engine, "c1", "marketing") == ("suppressed", "consent.pending_sms")
    assert await send(engine, "c1", "messages") == ("sent", "ok")  # the channel's own grant is not held back
    async with api_session() as s, s.patch(f"{engine.base_url}/v1/users/c1/preferences",
                                           json={"consent": {"sms:marketing": "granted"}}) as r:
        assert r.status == 200  # granted again while pending: still pending, and not texted twice
    assert len([b for b in twilio.bodies if b["To"] == NUMBER]) == 2  # the confirmation and the messages text

    assert await reply(engine, "hello") == (200, '<?xml version="1.0" encoding="UTF-8"?><Response></Response>')
    # a STOP from a number nobody has: nothing to stop, and no claim that anything was
    assert (await reply(engine, "STOP", number="+14155550000"))[1].endswith("<Response></Response>")
    status, text = await reply(engine, "HELP")
    assert status == 200 and "Reply STOP" in text
    assert (await reply(engine, "YES", token="wrong"))[0] in (401, 403)
    status, text = await reply(engine, " Yes ")
    assert status == 200 and "subscribed" in text
    assert await send(engine, "c1", "marketing") == ("sent", "ok")

    status, text = await reply(engine, "STOP")
    assert status == 200 and "unsubscribed" in text
    assert await send(engine, "c1", "marketing") == ("suppressed", "consent.withdrawn_sms")
    assert await send(engine, "c1", "messages") == ("suppressed", "consent.withdrawn_sms")

    raw = await engine.pool.fetch("SELECT evidence FROM preference_consent WHERE user_id = 'c1'")
    assert raw and all(b"203.0.113.7" not in (r[0] or b"") for r in raw)  # the IP address is sealed
    async with api_session() as s, s.get(f"{engine.base_url}/v1/users/c1/export") as r:
        doc = await r.json(content_type=None)
    marketing = next(c for c in doc["consent"] if c["purpose"] == "marketing")
    assert (marketing["status"], marketing["basis"]) == ("withdrawn", "consent")
    history = [(h["purpose"], h["status"], h["source"], h["basis"]) for h in doc["consent_history"]
               if h["purpose"] == "marketing"]
    assert history == [("marketing", "pending", "signup_form", "consent"), ("marketing", "pending", "http", "consent"),
                       ("marketing", "granted", "sms_reply", "consent"), ("marketing", "withdrawn", "sms_reply",
                                                                          "consent")]
    first = next(h for h in doc["consent_history"] if h["status"] == "pending")
    assert first["evidence"]["ip"] == "203.0.113.7" and first["text_version"] == "offers-v3"
    confirmed = next(h for h in doc["consent_history"] if h["status"] == "granted" and h["purpose"] == "marketing")
    assert confirmed["text_version"] == "offers-v3"  # the confirmation keeps what the grant it confirms said


async def test_an_expired_grant_holds_sends_back(engine):
    async with api_session() as s, s.patch(f"{engine.base_url}/v1/users/c2/preferences", json={
            "consent": {"sms": {"status": "granted", "basis": "contract", "expires_at": time.time() + 2}}}) as r:
        assert r.status == 200, await r.text()
    assert await send(engine, "c2", "messages") == ("sent", "ok")
    await asyncio.sleep(2.2)
    assert await send(engine, "c2", "messages") == ("suppressed", "consent.expired_sms")
    async with api_session() as s, s.patch(f"{engine.base_url}/v1/users/c2/preferences", json={
            "consent": {"sms": {"status": "granted", "evidence": {"ip": "not-an-ip"}}}}) as r:
        assert r.status == 422 and (await r.json())["errors"][0]["field"] == "consent.sms.evidence.ip"


async def test_start_after_stop_grants_again_what_the_stop_withdrew(engine):
    async with api_session() as s, s.patch(f"{engine.base_url}/v1/users/c3/preferences",
                                           json={"consent": {"sms": "granted"}}) as r:
        assert r.status == 200, await r.text()
    assert await send(engine, "c3", "messages") == ("sent", "ok")
    assert "unsubscribed" in (await reply(engine, "quit", number=THIRD))[1]  # one of the carriers' STOP words
    assert await send(engine, "c3", "messages") == ("suppressed", "consent.withdrawn_sms")
    status, text = await reply(engine, "UNSTOP", number=THIRD)
    assert status == 200 and "subscribed" in text
    assert await send(engine, "c3", "messages") == ("sent", "ok")
    # nothing withdrawn now: a second START changes nothing and claims nothing
    assert (await reply(engine, "start", number=THIRD))[1].endswith("<Response></Response>")
    async with api_session() as s, s.get(f"{engine.base_url}/v1/users/c3/export") as r:
        doc = await r.json(content_type=None)
    assert [(h["status"], h["source"]) for h in doc["consent_history"]] == [
        ("granted", "http"), ("withdrawn", "sms_reply"), ("granted", "sms_reply")]
    audit = await engine.pool.fetch("SELECT performed_by FROM preference_audit_log WHERE user_id = 'c3' "
                                    "AND performed_by = 'user:c3(sms)'")
    assert len(audit) == 2  # the STOP and the START, audited as the person by text


async def test_start_gives_back_only_what_a_stop_withdrew_from_a_grant(engine):
    # marketing withdrawn on purpose through the API, claiming to come from a text; the channel granted
    async with api_session() as s, s.patch(f"{engine.base_url}/v1/users/c4/preferences", json={
            "consent": {"sms": {"status": "granted", "basis": "contract", "text_version": "terms-v2"},
                        "sms:marketing": {"status": "withdrawn", "source": "sms_reply"}}}) as r:
        assert r.status == 200, await r.text()
    assert "unsubscribed" in (await reply(engine, "STOP", number=FOURTH))[1]
    assert "unsubscribed" in (await reply(engine, "stop", number=FOURTH))[1]  # people text it twice
    assert "subscribed" in (await reply(engine, "START", number=FOURTH))[1]
    assert await send(engine, "c4", "messages") == ("sent", "ok")  # the channel's grant is back
    assert await send(engine, "c4", "marketing") == ("suppressed", "consent.withdrawn_sms")  # not this one
    async with api_session() as s, s.get(f"{engine.base_url}/v1/users/c4/export") as r:
        doc = await r.json(content_type=None)
    channel = next(c for c in doc["consent"] if c["purpose"] == "*")
    assert (channel["status"], channel["basis"], channel["text_version"]) == ("granted", "contract", "terms-v2")


async def test_a_start_after_a_stop_that_withdrew_nothing_grants_nothing(engine):
    async with api_session() as s, s.patch(f"{engine.base_url}/v1/users/c2/preferences",
                                           json={"consent": {"sms": "withdrawn"}}) as r:
        assert r.status == 200
    assert "unsubscribed" in (await reply(engine, "STOP", number="+14155553302"))[1]  # recorded all the same
    assert (await reply(engine, "START", number="+14155553302"))[1].endswith("<Response></Response>")
    assert await send(engine, "c2", "messages") == ("suppressed", "consent.withdrawn_sms")
