"""Two-way SMS through Amazon SNS, against the loopback SNS (SigV4 checked) and
a loopback topic that signs what it delivers: a STOP withdraws SMS consent and is
answered by a text, once per inbound message; START gives the consent back."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from infra.config import ChannelConfig, ProviderConfig
from policy.types import UserProfile
from sandbox.sns import SnsSink, SnsTopic
from tests.integration.helpers import api_session, engine_config, row_status, send_text, serving

pytestmark = pytest.mark.integration

KEY, SECRET = "AKIDTIDINGSSNSINBOUND", "tidings-sns-inbound-secret-key-00000000"
NUMBER = "+14155556601"


@pytest.fixture(scope="module")
async def aws():
    sink, topic = SnsSink(KEY, SECRET, keep_bodies=True), SnsTopic()
    await sink.start()
    await topic.start()
    yield sink, topic
    await sink.stop()
    await topic.stop()


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, aws, tmp_path_factory):
    sink, topic = aws
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), channels=())
    sms = ChannelConfig(providers=[ProviderConfig(name="sns", type="sns", max_attempts=1, settings={
        "access_key_id": KEY, "secret_access_key": SECRET, "region": "us-east-1", "base_url": sink.url,
        "inbound_topic_arn": topic.topic_arn, "events_url_prefix": topic.url + "/"})])
    cfg = msgspec.structs.replace(cfg, channels={"sms": sms})
    async with serving(cfg, database_url, [UserProfile(user_id="s1", addresses={"sms": NUMBER})]) as eng:
        async with api_session() as s, s.patch(f"{eng.base_url}/v1/users/s1/preferences",
                                               json={"consent": {"sms": "granted"}}) as r:
            assert r.status == 200, await r.text()
        eng.inbound_url = f"{eng.base_url}/v1/tracking/sns/inbound"
        yield eng


def text(body: str, mid: str | None = None) -> str:
    return msgspec.json.encode({"originationNumber": NUMBER, "destinationNumber": "+14155550100",
                                "messageKeyword": body.upper(), "messageBody": body,
                                "inboundMessageId": mid or str(uuid.uuid4())}).decode()


async def test_stop_and_start_by_text_are_done_and_answered_once(engine, aws):
    sink, topic = aws
    c = engine.cfg.compliance
    answers = lambda: [b["Message"] for b in sink.bodies if b["PhoneNumber"] == NUMBER]  # noqa: E731
    assert await row_status(engine, await send_text(engine, "s1")) == ("sent", "ok")
    status, body = await topic.publish(engine.inbound_url, text("Stop"))
    assert status == 200 and msgspec.json.decode(body) == {"users": 1, "answer": "sent"}
    assert answers()[-1] == c.sms_stopped_text
    assert await row_status(engine, await send_text(engine, "s1")) == ("suppressed", "consent.withdrawn_sms")
    status, body = await topic.publish(engine.inbound_url, text("START"))
    assert status == 200 and answers()[-1] == c.sms_confirmed_text
    assert await row_status(engine, await send_text(engine, "s1")) == ("sent", "ok")
    # the same text published twice (a new SNS MessageId each time): answered once
    n = len(answers())
    mid = str(uuid.uuid4())
    assert (await topic.publish(engine.inbound_url, text("HELP", mid)))[0] == 200
    status, body = await topic.publish(engine.inbound_url, text("HELP", mid))
    assert status == 200 and msgspec.json.decode(body)["answer"] == "duplicate"
    assert answers()[n:] == [c.sms_help_text]
    # SNS's own retry of one message: not done again
    doc = topic.message("Notification", text("STOP"))
    assert (await topic.post(engine.inbound_url, doc))[0] == 200
    status, body = await topic.post(engine.inbound_url, doc)
    assert status == 200 and b"duplicate" in body
    status, _ = await topic.publish(engine.inbound_url, '{"messageBody": "STOP"}')
    assert status == 400  # not an inbound SMS
