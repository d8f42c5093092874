"""Amazon SES through a running engine: mail goes out through the loopback SES
(SigV4 checked), and SES's events come back as SNS delivers them (signed with
the topic's certificate): the subscription is confirmed, a delivery moves the
row, a permanent bounce and a complaint suppress the address; messages from
another topic, tampered, replayed or pointing at another certificate host are
refused."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest
from prometheus_client import REGISTRY

from infra.config import ChannelConfig, ProviderConfig
from policy.types import UserProfile
from sandbox.ses import SesSink
from sandbox.sns import SnsTopic
from tests.integration.helpers import api_session, engine_config, row_status, serving, wait_rows

pytestmark = pytest.mark.integration

KEY, SECRET = "AKIDTIDINGSSESEVENTS", "tidings-ses-events-secret-key-000000000"


@pytest.fixture(scope="module")
async def aws():
    ses, topic = SesSink(KEY, SECRET, keep_bodies=True), SnsTopic()
    await ses.start()
    await topic.start()
    yield ses, topic
    await ses.stop()
    await topic.stop()


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, aws, tmp_path_factory):
    ses, topic = aws
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), channels=())
    email = ChannelConfig(providers=[ProviderConfig(name="ses", type="ses", max_attempts=1, settings={
        "access_key_id": KEY, "secret_access_key": SECRET, "region": "us-east-1", "base_url": ses.url,
        "sender": "Tidings <noreply@tidings.test>", "configuration_set": "tidings",
        "events_topic_arn": topic.topic_arn, "events_url_prefix": topic.url + "/"})])
    cfg = msgspec.structs.replace(cfg, channels={"email": email})
    people = [UserProfile(user_id=u, addresses={"email": f"{u}@example.com"}) for u in ("e1", "e2", "e3", "e4")]
    async with serving(cfg, database_url, people) as eng:
        eng.events_url = f"{eng.base_url}/v1/tracking/ses"
        yield eng


async def send(engine, user: str) -> str:
    nid = str(uuid.uuid4())
    async with api_session() as s, s.post(f"{engine.base_url}/v1/notifications", json={
            "id": nid, "user_id": user, "category": "orders", "channels": ["email"],
            "content": {"subject": "Your order", "text": "It shipped"}}) as r:
        assert r.status == 202, await r.text()
    await wait_rows(engine.pool, [nid], 1)
    return nid


async def message_id(engine, nid: str) -> str:
    return await engine.pool.fetchval("SELECT provider_message_id FROM delivery_tracking WHERE notification_id = $1",
                                      uuid.UUID(nid))


def event(kind: str, nid: str, mid: str, address: str, **body) -> str:
    mail = {"messageId": mid, "timestamp": "2026-12-03T10:00:00.000Z", "source": "noreply@tidings.test",
            "destination": [address], "tags": {"notification_id": [nid], "category": ["orders"]}}
    return msgspec.json.encode({"eventType": kind, "mail": mail, **body}).decode()


async def test_the_subscription_is_confirmed(engine, aws):
    _, topic = aws
    status, _ = await topic.subscribe(engine.events_url)
    assert status == 200 and topic.confirmations == 1


def provider_events(status: str) -> float:
    return REGISTRY.get_sample_value("tidings_provider_events_total", {"channel": "email", "status": status}) or 0.0


async def test_delivery_bounce_and_complaint_move_rows_and_suppress(engine, aws):
    _, topic = aws
    delivered, bounced, complained = await send(engine, "e1"), await send(engine, "e2"), await send(engine, "e3")
    counted = {s: provider_events(s) for s in ("delivered", "bounced", "complained")}
    at = "2026-12-03T10:00:01.000Z"
    for nid, address, doc in (
            (delivered, "e1@example.com", {"delivery": {"timestamp": at, "recipients": ["e1@example.com"],
                                                        "smtpResponse": "250 2.6.0 Message received"}}),
            (bounced, "e2@example.com", {"bounce": {"bounceType": "Permanent", "bounceSubType": "General",
                                                    "timestamp": at, "bouncedRecipients": [
                                                        {"emailAddress": "e2@example.com",
                                                         "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}}),
            (complained, "e3@example.com", {"complaint": {"timestamp": at, "complaintFeedbackType": "abuse",
                                                          "complainedRecipients": [{"emailAddress": "E3@example.com"}]}})):
        kind = next(iter(doc)).capitalize()
        status, body = await topic.publish(engine.events_url, event(kind, nid, await message_id(engine, nid), address,
                                                                    **doc))
        assert status == 200, body
    assert await row_status(engine, delivered, "delivered") == ("delivered", "delivery")  # SES names it so
    assert (await row_status(engine, bounced, "bounced"))[0] == "bounced"
    assert (await row_status(engine, complained, "complained"))[0] == "complained"
    # each change counted once, in the HTTP process's /metrics
    assert {s: provider_events(s) - n for s, n in counted.items()} == {"delivered": 1, "bounced": 1, "complained": 1}
    await asyncio.sleep(0.5)  # the shards reload the suppressed users after the commit
    assert await row_status(engine, await send(engine, "e2")) == ("suppressed", "suppression.bounce")
    assert await row_status(engine, await send(engine, "e3")) == ("suppressed", "suppression.complaint")


async def test_a_transient_bounce_only_goes_on_the_timeline(engine, aws):
    _, topic = aws
    nid = await send(engine, "e4")
    doc = {"bounce": {"bounceType": "Transient", "bounceSubType": "MailboxFull", "timestamp": "2026-12-03T10:00:01Z",
                      "bouncedRecipients": [{"emailAddress": "e4@example.com"}]}}
    status, _ = await topic.publish(engine.events_url, event("Bounce", nid, await message_id(engine, nid),
                                                             "e4@example.com", **doc))
    assert status == 200
    assert await row_status(engine, nid) == ("sent", "ok")
    timeline = await engine.pool.fetchval("SELECT timeline FROM delivery_tracking WHERE notification_id = $1",
                                          uuid.UUID(nid))
    assert "MailboxFull" in timeline


async def test_what_sns_did_not_send_is_refused(engine, aws):
    _, topic = aws
    good = topic.message("Notification", event("Delivery", str(uuid.uuid4()), "m", "x@example.com"))
    tampered = {**good, "Message": good["Message"].replace("Delivery", "Bounce")}
    elsewhere = {**good, "SigningCertURL": "https://attacker.example/cert.pem"}
    other = SnsTopic(topic_arn="arn:aws:sns:us-east-1:123456789012:someone-else")
    other.port = topic.port  # its certificate would not be this server's either
    foreign = other.message("Notification", good["Message"])
    for doc in (tampered, elsewhere, foreign):
        status, _ = await topic.post(engine.events_url, doc)
        assert status == 401, doc
    assert (await topic.post(engine.events_url, good))[0] == 200
    status, body = await topic.post(engine.events_url, good)  # SNS delivering it again
    assert status == 200 and b"duplicate" in body
    assert topic.cert_fetches == 1  # the certificate was fetched once and kept
