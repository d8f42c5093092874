"""The Ingestor's validation of NATS payloads, without NATS or Ray: a payload
that does not decode, or that decodes but breaks a rule the HTTP API answers
with 422 (``policy.validate.message_errors``), is dead-lettered with its reason,
recorded as ``rejected`` and acked; a good one goes to its UserShard."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
from nats.aio.msg import Msg

from actors.ingestor import Ingestor
from infra import streams
from infra.config import Config, encode
from policy import wire
from policy.types import NotificationRequest, Outcome
from policy.validate import message_errors

CFG = Config()
BASE = {"user_id": "u1", "category": "job_alerts", "channels": ["in_app"], "fallback": ["email"],
        "content": {"subject": "s", "text": "t"}}


class FakeMsg(Msg):
    def __init__(self, subject: str, body: dict | bytes, seq: int):
        data = body if isinstance(body, bytes) else msgspec.json.encode(body)
        super().__init__(None, subject=subject, data=data,
                         reply=f"$JS.ACK.{CFG.nats.stream}.c.1.{seq}.{seq}.1700000000000000000.0")
        self.acked = False

    async def ack(self):
        self.acked = True


class Harness:
    def __init__(self):
        self.published: list[tuple[str, bytes, dict]] = []
        self.recorded: list[Outcome] = []
        self.handled: list[wire.Inbound] = []

        async def publish(subject, data, headers=None):
            self.published.append((subject, data, headers))

        async def record(payload):
            self.recorded.extend(wire.decode(payload, list[Outcome]))

        async def handle(payload):
            self.handled.extend(wire.decode(payload, list[wire.Inbound]))

        shard = SimpleNamespace(handle=SimpleNamespace(remote=handle))
        self.ingestor = Ingestor(encode(CFG), "nats://unused", [shard], SimpleNamespace(
            record=SimpleNamespace(remote=record)))
        self.ingestor.js = SimpleNamespace(publish=publish)


def notify(body: dict | bytes, seq: int) -> FakeMsg:
    return FakeMsg(streams.notify_subject(CFG.nats, "job_alerts"), body, seq)


async def test_fallback_unless_without_fallback_after_s_is_dead_lettered():
    h = Harness()
    bad, good = notify({**BASE, "fallback_unless": "opened"}, 1), notify(
        {**BASE, "fallback_unless": "opened", "fallback_after_s": 60}, 2)
    await h.ingestor._process([bad, good])
    [(subject, data, headers)] = h.published
    assert subject == streams.dlq_subject(CFG.nats) and data == bad.data
    assert headers["Tidings-Reason"] == "payload.invalid" and headers["Tidings-Stream-Seq"] == "1"
    assert headers["Tidings-Error"] == "needs fallback_after_s (the time to wait) - at `$.fallback_unless`"
    [row] = h.recorded
    assert (row.user_id, row.channel, row.status, row.reason) == ("u1", "*", "rejected", "payload.invalid")
    assert "$.fallback_unless" in row.detail
    [inbound] = h.handled
    assert inbound.request.fallback_unless == "opened" and inbound.request.fallback_after_s == 60
    assert bad.acked and good.acked


async def test_a_broadcast_is_checked_the_same_way():
    h = Harness()
    msg = FakeMsg(streams.broadcast_subject(CFG.nats, "job_alerts"),
                  {k: v for k, v in BASE.items() if k != "user_id"} | {"fallback_unless": "delivered"}, 3)
    await h.ingestor._process([msg])
    assert [p[2]["Tidings-Reason"] for p in h.published] == ["payload.invalid"]
    assert "$.fallback_unless" in h.published[0][2]["Tidings-Error"] and msg.acked
    assert not h.ingestor.broadcasts and h.handled == []


async def test_schema_errors_keep_their_reasons():
    h = Harness()
    await h.ingestor._process([notify({**BASE, "user_id": 42}, 4), notify(b"{not json", 5)])
    assert [(p[2]["Tidings-Reason"], p[2]["Tidings-Stream-Seq"]) for p in h.published] == [
        ("payload.invalid", "4"), ("payload.malformed", "5")]
    assert "$.user_id" in h.published[0][2]["Tidings-Error"] and h.handled == []


def test_message_errors_name_the_field_at_its_path():
    def req(**extra) -> NotificationRequest:
        return msgspec.convert({**BASE, **extra}, NotificationRequest)

    assert message_errors(req(fallback_unless="opened"), "$[3]") == [
        ("$[3].fallback_unless", "needs fallback_after_s (the time to wait)")]
    assert message_errors(req(fallback_unless="delivered", fallback_after_s=5)) == []
    assert message_errors(req()) == []
