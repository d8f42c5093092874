"""Vonage's signed webhooks through a running engine, against the loopback Vonage:
its delivery receipts move the rows (a permanent failure suppresses the number),
and texts people send to our number withdraw and restore SMS consent, each
answered by a text back, once; unsigned, badly signed and replayed requests are
refused."""

from __future__ import annotations

import urllib.parse

import aiohttp
import msgspec
import pytest

from engine.embedded import free_port
from infra.config import ChannelConfig, ProviderConfig
from policy.types import UserProfile
from providers.tracking.vonage import vonage_signature
from sandbox.vonage import VonageSink
from tests.integration.helpers import api_session, engine_config, row_status, send_text, serving

pytestmark = pytest.mark.integration

KEY, SECRET, SIGNING = "vonage-key", "vonage-secret", "vonage-signature-secret"
FIRST, SECOND = "+14155554401", "+14155554402"


@pytest.fixture(scope="module")
async def sink():
    s = VonageSink(KEY, SECRET, keep_bodies=True, signature_secret=SIGNING, signature_method="sha256")
    await s.start()
    yield s
    await s.stop()


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, sink, tmp_path_factory):
    port = free_port()  # known before the engine starts: the receipts' callback URL names it
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), channels=())
    sms = ChannelConfig(providers=[ProviderConfig(name="vonage", type="vonage", max_attempts=1, settings={
        "api_key": KEY, "api_secret": SECRET, "from": "+14155550100", "base_url": sink.url,
        "status_callback": f"http://127.0.0.1:{port}/v1/tracking/vonage",
        "signature_secret": SIGNING, "signature_method": "sha256"})])
    cfg = msgspec.structs.replace(cfg, channels={"sms": sms})
    people = [UserProfile(user_id="v1", addresses={"sms": FIRST}), UserProfile(user_id="v2", addresses={"sms": SECOND})]
    async with serving(cfg, database_url, people, port=port) as eng:
        async with api_session() as s:
            for user in ("v1", "v2"):
                async with s.patch(f"{eng.base_url}/v1/users/{user}/preferences",
                                   json={"consent": {"sms": "granted"}}) as r:
                    assert r.status == 200, await r.text()
        yield eng


async def test_receipts_move_rows_and_a_permanent_failure_suppresses_the_number(engine, sink):
    delivered = await send_text(engine, "v1")
    assert await row_status(engine, delivered, "delivered") == ("delivered", "delivered")
    assert sink.bodies[-1]["client-ref"] == delivered  # how the receipt finds its row
    sink.receipt_status, sink.receipt_err_code = "failed", "3"  # absent subscriber, permanent
    try:
        gone = await send_text(engine, "v2")
        assert (await row_status(engine, gone, "bounced"))[0] == "bounced"
    finally:
        sink.receipt_status, sink.receipt_err_code = "delivered", "0"
    later = await send_text(engine, "v2")
    assert await row_status(engine, later) == ("suppressed", "suppression.bounce")
    assert set(sink.receipt_answers) == {200}


async def post(engine, path: str, params: dict) -> int:
    async with aiohttp.ClientSession() as s, s.post(f"{engine.base_url}{path}", data=urllib.parse.urlencode(params),
                                                    headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
        return r.status


async def test_unsigned_badly_signed_stale_and_replayed_webhooks_are_refused(engine, sink):
    params = {"messageId": "0A0000000123ABCD", "status": "delivered", "msisdn": FIRST[1:], "err-code": "0"}
    assert await post(engine, "/v1/tracking/vonage", params) == 401
    signed = sink.signed(params)
    assert await post(engine, "/v1/tracking/vonage", {**signed, "status": "failed"}) == 401  # tampered
    stale = {**params, "timestamp": "1500000000", "nonce": "n-stale"}
    stale["sig"] = vonage_signature(SIGNING, stale, "sha256")  # signed right, five years ago
    assert await post(engine, "/v1/tracking/vonage", stale) == 401
    assert await post(engine, "/v1/tracking/vonage", signed) == 200  # no such message: nothing moves
    assert await post(engine, "/v1/tracking/vonage", signed) == 401  # the same nonce again
    async with aiohttp.ClientSession() as s:  # as a query (Vonage's GET) and as JSON, signed the same way
        async with s.get(f"{engine.base_url}/v1/tracking/vonage", params=sink.signed(params)) as r:
            assert r.status == 200
        async with s.post(f"{engine.base_url}/v1/tracking/vonage", json=sink.signed(params)) as r:
            assert r.status == 200
        async with s.post(f"{engine.base_url}/v1/tracking/vonage", json={**sink.signed(params), "x": {"y": 1}}) as r:
            assert r.status == 422  # webhook fields are flat


async def test_stop_start_and_help_from_the_phone_are_done_and_answered_once(engine, sink):
    inbound = f"{engine.base_url}/v1/tracking/vonage/inbound"
    c = engine.cfg.compliance
    texts = lambda: [b["text"] for b in sink.bodies if b["to"] == FIRST[1:]]  # noqa: E731
    before = len(texts())
    status, doc = await sink.send_inbound(inbound, FIRST[1:], "14155550100", "Stop")
    assert (status, doc) == (200, {"users": 1, "answer": "sent"})
    assert texts()[before:] == [c.sms_stopped_text]
    assert await row_status(engine, await send_text(engine, "v1")) == ("suppressed", "consent.withdrawn_sms")

    status, doc = await sink.send_inbound(inbound, FIRST[1:], "14155550100", "START")
    assert (status, doc["answer"]) == (200, "sent") and texts()[-1] == c.sms_confirmed_text
    assert (await row_status(engine, await send_text(engine, "v1"), "delivered"))[0] == "delivered"
    status, doc = await sink.send_inbound(inbound, FIRST[1:], "14155550100", "help")
    assert doc["answer"] == "sent" and texts()[-1] == c.sms_help_text

    # Vonage delivers a webhook again when it got no answer: a new nonce, the same messageId
    again = {"msisdn": FIRST[1:], "to": "14155550100", "messageId": "0B00000099887766", "text": "HELP"}
    n = len(texts())
    assert await post(engine, "/v1/tracking/vonage/inbound", sink.signed(again)) == 200
    assert await post(engine, "/v1/tracking/vonage/inbound", sink.signed(again)) == 200
    assert len(texts()) == n + 1  # answered once
    status, doc = await sink.send_inbound(inbound, "14155559999", "14155550100", "STOP")
    assert (status, doc) == (200, {"users": 0, "answer": "nothing"})  # a number nobody has
    audit = await engine.pool.fetch("SELECT performed_by FROM preference_audit_log WHERE user_id = 'v1' "
                                    "AND performed_by = 'user:v1(sms)'")
    assert len(audit) == 2  # the STOP and the START, audited
