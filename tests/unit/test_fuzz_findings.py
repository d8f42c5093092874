"""What the fuzz tests (tests/integration/test_fuzz_http.py, test_fuzz_nats.py)
found, pinned down without servers: free-form data that no encoder between our
processes carries (integers beyond 64 bits, nesting past the decoders' limits,
NUL) is refused at the door naming its path; text PostgreSQL cannot store is
refused by the schema; Unicode digits and huge numbers in headers are 400s, not
crashes; and one payload the Ingestor cannot decode rejects only itself."""

from __future__ import annotations

import msgspec
import pytest
from aiohttp.test_utils import make_mocked_request

from actors.ingestor import salvage_user
from engine.http.common import Problem, decode
from engine.http.prefs import if_match
from infra import dead_letters
from policy import wire
from policy.rules import Template
from policy.templating import MessageTemplate
from policy.types import NotificationRequest
from policy.validate import MAX_DATA_DEPTH, data_errors, message_errors
from providers.tracking import PayloadError, parse_sendgrid, read_mailgun, twilio_event
from tests.unit.test_ingest_validation import BASE, Harness, notify

ABYSS = b"[" * 5000 + b"]" * 5000


def nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("data, errors", [
    ({"n": 2**64 - 1, "m": -(2**63), "ok": True}, []),
    ({"n": 2**64}, [("$.d.n", "an integer beyond 64 bits")]),
    ({"n": [-(2**63) - 1]}, [("$.d.n[0]", "an integer beyond 64 bits")]),
    ({"s": "a\x00b"}, [("$.d.s", "contains a NUL character")]),
    ({"a\x00": 1}, [("$.d.a\\u0000", "contains a NUL character")]),
    ({"deep": nested(MAX_DATA_DEPTH - 1)}, []),
    ({"deep": nested(MAX_DATA_DEPTH)}, [("$.d.deep" + "[0]" * (MAX_DATA_DEPTH - 1),
                                          f"nested deeper than {MAX_DATA_DEPTH} levels")]),
    ({"text": "[" * 500}, []),  # brackets in a string are not nesting
])
def test_data_errors(data, errors):
    assert data_errors(data, "$.d") == errors


def test_an_integer_beyond_64_bits_in_content_data_is_named():
    req = msgspec.json.decode(b'{"user_id": "u", "category": "c", "channels": ["webhook"], '
                              b'"content": {"text": "t", "data": {"k": -9223372036854775809}}}', type=NotificationRequest)
    assert message_errors(req) == [("$.content.data.k", "an integer beyond 64 bits")]


def test_nesting_past_msgspecs_limit_is_400_at_the_http_door():
    body = b'{"user_id": "u", "category": "c", "channels": ["webhook"], "content": {"data": {"a": ' + ABYSS + b"}}}"
    with pytest.raises(Problem) as info:
        decode(msgspec.json.Decoder(NotificationRequest), body, "notification")
    assert info.value.status == 400 and b"nested too deeply" in info.value.body


@pytest.mark.parametrize("parse", [read_mailgun, parse_sendgrid])
def test_provider_webhooks_nested_too_deeply_are_payload_errors(parse):
    with pytest.raises(PayloadError, match="nested too deeply"):
        parse(ABYSS)


@pytest.mark.parametrize("struct, fields", [
    (MessageTemplate, {"id": "t", "channel": "email", "subject": "a\x00"}),
    (MessageTemplate, {"id": "t", "channel": "email", "html": "\x00"}),
    (Template, {"id": "t", "extends": "a\x00"}),
    (Template, {"id": "t", "name": "\x00"}),
])
def test_text_postgresql_cannot_store_is_refused_by_the_schema(struct, fields):
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(fields, struct)


@pytest.mark.parametrize("value", ["\u00b2", "\u0661", "9" * 5000, "9" * 19])
def test_if_match_with_unicode_digits_or_too_many_is_400(value):
    with pytest.raises(Problem) as info:
        if_match(make_mocked_request("PUT", "/", headers={"If-Match": value}))
    assert info.value.status == 400


def test_twilio_error_codes_in_unicode_digits_are_no_code():
    event = twilio_event([("MessageSid", "SM1"), ("MessageStatus", "failed"), ("ErrorCode", "\u00b2")], now=0)
    assert event.status == "failed" and "error" not in event.detail


@pytest.mark.parametrize("given, seq", [("\u00b2", 17), ("\u0661", 17), ("12", 12), ("", 17),
                                        ("17", 17), ("18", 17), ("0", 17), ("9" * 5000, 17)])
def test_a_replay_header_is_a_replay_only_of_an_earlier_message(given, seq):
    """Unicode digits, its own or a later sequence, zero: not a replay (a later one
    would claim the id of a message not yet published)."""
    assert dead_letters.origin_seq({dead_letters.REPLAY_OF: given}, 17) == seq


async def test_a_payload_nested_too_deeply_rejects_only_itself():
    h = Harness()
    deep = notify(b'{"user_id": "u1", "category": "job_alerts", "channels": ["in_app"], "content": {"data": {"a": '
                  + ABYSS + b"}}}", 1)
    big = notify({**BASE, "content": {"subject": "s", "text": "t", "data": {"n": 2**64}}}, 2)
    good = notify(BASE, 3)
    await h.ingestor._process([deep, big, good])
    reasons = {headers["Tidings-Stream-Seq"]: headers["Tidings-Reason"] for _, _, headers in h.published}
    assert reasons == {"1": "payload.malformed", "2": "payload.invalid"}
    assert [i.request.user_id for i in h.handled] == ["u1"]
    assert deep.acked and big.acked and good.acked
    assert salvage_user(deep.data) == ""  # too deep to read a user from: the row has none


async def test_a_batch_that_cannot_be_encoded_is_nakd_not_left_hanging():
    h = Harness()
    msg = notify(BASE, 1)
    naks = []

    async def nak(delay=None):
        naks.append(delay)

    msg.nak = nak
    req = msgspec.json.decode(msg.data, type=NotificationRequest)
    req.content = msgspec.structs.replace(req.content, data={"n": 2**64})  # past the door's check
    await h.ingestor._to_shard(0, [(msg, wire.Inbound("id", req))])
    assert naks and not msg.acked and h.handled == []
