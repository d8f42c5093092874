"""MessageBird's signed webhooks through a running engine, against the loopback
MessageBird: its status reports move the rows (an opt-out suppresses the
number), and texts people send to our number withdraw and restore SMS consent,
each answered by a text back; unsigned, badly signed and replayed requests are
refused."""

from __future__ import annotations

import urllib.parse

import aiohttp
import msgspec
import pytest

from engine.embedded import free_port
from infra.config import ChannelConfig, ProviderConfig
from policy.types import UserProfile
from providers.tracking.messagebird import SIGNATURE_HEADER, messagebird_jwt
from sandbox.messagebird import MessageBirdSink
from tests.integration.helpers import api_session, engine_config, row_status, send_text, serving

pytestmark = pytest.mark.integration

ACCESS, SIGNING = "messagebird-access-key", "messagebird-signing-key-0123456789abcdef"
FIRST, SECOND = "+31612340001", "+31612340002"


@pytest.fixture(scope="module")
async def sink():
    s = MessageBirdSink(ACCESS, keep_bodies=True, signing_key=SIGNING)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, sink, tmp_path_factory):
    port = free_port()  # known before the engine starts: the reportUrl names it
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), channels=())
    sms = ChannelConfig(providers=[ProviderConfig(name="mb", type="messagebird", max_attempts=1, settings={
        "access_key": ACCESS, "originator": "Tidings", "base_url": sink.url, "signing_key": SIGNING,
        "status_callback": f"http://127.0.0.1:{port}/v1/tracking/messagebird"})])
    cfg = msgspec.structs.replace(cfg, channels={"sms": sms})
    people = [UserProfile(user_id="m1", addresses={"sms": FIRST}), UserProfile(user_id="m2", addresses={"sms": SECOND})]
    async with serving(cfg, database_url, people, port=port) as eng:
        async with api_session() as s:
            for user in ("m1", "m2"):
                async with s.patch(f"{eng.base_url}/v1/users/{user}/preferences",
                                   json={"consent": {"sms": "granted"}}) as r:
                    assert r.status == 200, await r.text()
        yield eng


async def test_reports_move_rows_and_an_opt_out_suppresses_the_number(engine, sink):
    delivered = await send_text(engine, "m1")
    assert await row_status(engine, delivered, "delivered") == ("delivered", "delivered")
    assert sink.bodies[-1]["reference"] == delivered
    sink.report_status, sink.report_reason = "delivery_failed", "opted out"
    try:
        stopped = await send_text(engine, "m2")
        assert (await row_status(engine, stopped, "complained"))[0] == "complained"
    finally:
        sink.report_status, sink.report_reason = "delivered", "successfully delivered"
    later = await send_text(engine, "m2")
    assert await row_status(engine, later) == ("suppressed", "suppression.complaint")
    assert set(sink.report_answers) == {200}


async def test_unsigned_tampered_and_replayed_reports_are_refused(engine, sink):
    url = f"{engine.base_url}/v1/tracking/messagebird?" + urllib.parse.urlencode(
        {"id": "m-none", "status": "delivered", "recipient": FIRST[1:]})
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 401
        token = messagebird_jwt(SIGNING, url)
        async with s.get(url.replace("delivered", "delivery_failed"), headers={SIGNATURE_HEADER: token}) as r:
            assert r.status == 401  # the URL it signed is not the one called
        async with s.get(url, headers={SIGNATURE_HEADER: messagebird_jwt("a-key-that-is-not-the-signing-key!", url)}) as r:
            assert r.status == 401
        async with s.get(url, headers={SIGNATURE_HEADER: token}) as r:
            assert r.status == 200  # no such message: nothing moves
        async with s.get(url, headers={SIGNATURE_HEADER: token}) as r:
            assert r.status == 401  # the same token again


async def test_stop_start_and_help_from_the_phone_are_done_and_answered(engine, sink):
    inbound = f"{engine.base_url}/v1/tracking/messagebird/inbound"
    c = engine.cfg.compliance
    texts = lambda: [b["body"] for b in sink.bodies if b["recipients"] == [int(FIRST[1:])]]  # noqa: E731
    status, doc = await sink.send_inbound(inbound, FIRST[1:], "3197010200000", "stop")
    assert (status, doc) == (200, {"users": 1, "answer": "sent"}) and texts()[-1] == c.sms_stopped_text
    assert await row_status(engine, await send_text(engine, "m1")) == ("suppressed", "consent.withdrawn_sms")
    status, doc = await sink.send_inbound(inbound, FIRST[1:], "3197010200000", "START")
    assert doc["answer"] == "sent" and texts()[-1] == c.sms_confirmed_text
    assert (await row_status(engine, await send_text(engine, "m1"), "delivered"))[0] == "delivered"
    status, doc = await sink.send_inbound(inbound, FIRST[1:], "3197010200000", "HELP")
    assert doc["answer"] == "sent" and texts()[-1] == c.sms_help_text
