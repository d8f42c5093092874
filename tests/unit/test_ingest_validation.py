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
from policy.types import NotificationRequest, Outcome, derive_id
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
        self.events: list[tuple[str, bytes, dict]] = []  # the accepted events (policy/events.py)

        async def publish(subject, data, headers=None):
            self.published.append((subject, data, headers))

        async def publish_events(messages, timeout_s):
            self.events.extend(messages)
            return [False] * len(messages)

        async def record(payload):
            self.recorded.extend(wire.decode(payload, list[Outcome]))

        async def handle(payload):
            self.handled.extend(wire.decode(payload, list[wire.Inbound]))

        shard = SimpleNamespace(handle=SimpleNamespace(remote=handle))
        self.ingestor = Ingestor(encode(CFG), "nats://unused", [shard], SimpleNamespace(
            record=SimpleNamespace(remote=record)))
        self.ingestor.js = SimpleNamespace(publish=publish)
        self.ingestor.publisher = SimpleNamespace(publish=publish_events)


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


async def test_control_characters_and_nul_are_dead_lettered_naming_the_field():
    h = Harness()
    subject = notify({**BASE, "content": {"subject": "a\x0bb", "text": "t"}}, 6)
    nul_text = notify({**BASE, "content": {"subject": "s", "text": "a\x00b"}}, 7)
    nul_data = notify({**BASE, "content": {"subject": "s", "text": "t", "data": {"x": ["ok", "b\x00d"]}}}, 8)
    key = notify({**BASE, "idempotency_key": "k\u2028"}, 9)
    good = notify({**BASE, "content": {"subject": "s", "text": "tab\there\nnewline"}}, 10)
    await h.ingestor._process([subject, nul_text, nul_data, key, good])
    errors = {p[2]["Tidings-Stream-Seq"]: (p[2]["Tidings-Reason"], p[2]["Tidings-Error"]) for p in h.published}
    assert set(errors) == {"6", "7", "8", "9"}
    assert all(reason == "payload.invalid" for reason, _ in errors.values())
    assert "$.content.subject" in errors["6"][1] and "$.content.text" in errors["7"][1]
    assert errors["8"][1] == "contains a NUL character - at `$.content.data.x[1]`"
    assert "$.idempotency_key" in errors["9"][1]
    assert all("\x00" not in (row.detail or "") for row in h.recorded) and len(h.recorded) == 4
    [inbound] = h.handled
    assert inbound.request.content.text == "tab\there\nnewline"
    assert all(m.acked for m in (subject, nul_text, nul_data, key, good))


def test_message_errors_find_nul_in_template_and_channel_data():
    r = msgspec.convert({**BASE, "template": {"id": "t", "data": {"a": {"b\x00": "x"}}},
                         "channel_content": {"email": {"subject": "s", "text": "t", "data": {"l": [["\x00"]]}}}},
                        NotificationRequest)
    assert message_errors(r) == [("$.template.data.a.b\\u0000", "contains a NUL character"),
                                 ("$.channel_content.email.data.l[0][0]", "contains a NUL character")]


async def test_each_valid_request_is_announced_accepted_once_before_its_shard_sees_it():
    h = Harness()
    good, bad = notify(BASE, 21), notify({**BASE, "channels": []}, 22)
    await h.ingestor._process([good, bad])
    [inbound] = h.handled
    [(subject, data, headers)] = h.events
    event = msgspec.json.decode(data)
    assert subject == f"{CFG.nats.prefix}.events.any.accepted"
    assert event["notification_id"] == inbound.id and event["status"] == "accepted" and event["channel"] == "any"
    assert headers == {"Nats-Msg-Id": event["id"]} and event["id"] == derive_id(f"accepted:{inbound.id}")
