"""Fuzzing the HTTP API (issue 12, item 8): Hypothesis sends generated requests to
every route of the running engine's router (a route added later is fuzzed
without touching this file) and no answer may be a 5xx; every error answer is
JSON in the documented shape ``{"error": str, "errors": [{"field", "reason"}]}``.

Each request: a route (its method, or now and then another), path parameters
(known ids and users, or any text, lone surrogates and control characters
percent-encoded), a query string, a body (a valid sample of the route's body,
mostly with fields mutated into wrong types, huge or NUL or surrogate strings,
deep nesting, huge or negative numbers; or any JSON; or bytes that are not
JSON), a content type, and credentials: mostly the admin key, so the request
reaches the handler, sometimes a user token, none or garbage. The provider
webhooks are signed with the keys the engine is configured with, so hostile
event payloads get past the signature check. Afterwards every notification
and broadcast the API accepted (202) has its tracking rows: what the door lets
in, the engine behind it must take. ``TIDINGS_FUZZ_EXAMPLES=10000`` runs the
issue's full count.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import urllib.parse
import uuid
from dataclasses import dataclass

import aiohttp
import msgspec
import pytest
import yarl
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings, strategies as st

from engine.embedded import free_port
from engine.http import make_app
from engine.http.openapi import PAGES
from infra.config import ChannelConfig, ProviderConfig
from policy import links
from policy.types import UserProfile
from providers.tracking import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    TWILIO_SIGNATURE_HEADER,
    mailgun_signature,
    twilio_signature,
)
from providers.tracking.messagebird import SIGNATURE_HEADER, messagebird_jwt
from providers.tracking.vonage import vonage_signature
from sandbox import WebhookSink
from sandbox.sns import SnsTopic
from tests.integration.fuzzing import (
    HUGE_NUMBERS,
    HUGE_TEXT,
    JSON_VALUES,
    RAW_BODIES,
    TEXT,
    dumps,
    examples,
    mutated,
    shaped,
)
from tests.integration.helpers import api_session, engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

SG_KEY = ec.generate_private_key(ec.SECP256R1())
SG_PUBLIC = base64.b64encode(SG_KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
MG_KEY = "mailgun-signing-key-for-the-fuzz-test"
TW_TOKEN = "twilio-auth-token-for-the-fuzz-test"
TW_CALLBACK = "https://hooks.fuzz.test/v1/tracking/twilio"
TW_INBOUND = "https://hooks.fuzz.test/v1/tracking/twilio/inbound"
VG_SIGNING = "vonage-signature-secret-for-the-fuzz-test"
MB_SIGNING = "messagebird-signing-key-for-the-fuzz-test"
MB_REPORTS = "https://hooks.fuzz.test/v1/tracking/messagebird"
MB_INBOUND = "https://hooks.fuzz.test/v1/tracking/messagebird/inbound"
SNS_TOPIC = SnsTopic(port=free_port())  # serves its certificate while the fuzzed engine runs
LINK_SECRET = "fuzz-link-secret-0123456789abcdef"
TEMPLATE = "welcome"
PREF_TEMPLATE = "base"
UNKNOWN_ID = "5f0c8e8e-4b7e-4c1a-9d55-2b1f7a3c9e10"


@pytest.fixture(scope="module")
async def fuzzed(nats_url, database_url, redis_url, ray_address, smtp, tmp_path_factory):
    """An engine with email, webhook and the three providers whose webhooks it
    verifies (configured, disabled: nothing is sent to them), engagement links
    on, rate limits too high to answer 429 to the fuzzer, two users, a message
    template, a preference template and one delivered notification."""
    hook = WebhookSink("test-secret", port=0)
    await hook.start()
    await SNS_TOPIC.start()
    overrides = {"ratelimit": {"key_per_s": 1e6, "key_burst": 1e6, "user_per_s": 1e6, "user_burst": 1e6},
                 "engagement": {"base_url": "http://127.0.0.1:9", "secret": LINK_SECRET}}
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        webhook_url=hook.url, redis_url=redis_url, overrides=overrides)
    cfg = with_tracking_providers(cfg)
    people = [UserProfile(user_id=u, addresses={"email": f"{u}@example.test"}) for u in ("alice", "bob")]
    try:
        async with serving(cfg, database_url, people) as engine, api_session() as client:
            url = engine.base_url
            for path, body in [("/v1/templates", {"id": TEMPLATE, "channel": "email", "subject": "Hi {{ name }}",
                                                  "text": "Hello {{ name }}"}),
                               ("/v1/preference-templates", {"id": PREF_TEMPLATE, "preferences": [
                                   {"channel": "email", "category": "marketing", "enabled": False}]})]:
                async with client.post(url + path, json=body) as r:
                    assert r.status == 201, await r.text()
            async with client.post(f"{url}/v1/notifications", json={
                    "user_id": "alice", "category": "job_alerts", "channels": ["email", "webhook"],
                    "content": {"subject": "s", "text": "t"}}) as r:
                engine.sent_id = (await r.json())["id"]
            assert await wait_rows(engine.pool, [engine.sent_id], 2) == 2
            engine.user_token = (await engine.auth.mint("alice", 3600))[0]
            engine.routes = routes_of(engine)
            engine.accepted = set()  # ("notification_id" | "parent_id", id) of every 202
            yield engine
    finally:
        await hook.stop()
        await SNS_TOPIC.stop()


def with_tracking_providers(cfg):
    email = cfg.channels["email"]
    email = msgspec.structs.replace(email, shards=1, providers=[*email.providers,
        ProviderConfig(name="sg", type="sendgrid", enabled=False, settings={
            "api_key": "SG.x", "sender": "a@example.test", "event_public_key": SG_PUBLIC}),
        ProviderConfig(name="mg", type="mailgun", enabled=False, settings={
            "api_key": "key-x", "domain": "mg.example.test", "sender": "a@example.test",
            "webhook_signing_key": MG_KEY}),
        ProviderConfig(name="ses", type="ses", enabled=False, settings={
            "access_key_id": "AKIDFUZZ", "secret_access_key": "s", "region": "us-east-1",
            "sender": "a@example.test", "events_topic_arn": SNS_TOPIC.topic_arn,
            "events_url_prefix": SNS_TOPIC.url + "/"})])
    sms = ChannelConfig(enabled=False, providers=[ProviderConfig(name="tw", type="twilio", settings={
        "account_sid": "AC" + "0" * 32, "auth_token": TW_TOKEN, "status_callback": TW_CALLBACK,
        "inbound_url": TW_INBOUND}), ProviderConfig(name="vg", type="vonage", settings={
            "api_key": "k", "api_secret": "s", "from": "+14155550100", "signature_secret": VG_SIGNING}),
        ProviderConfig(name="sns", type="sns", settings={
            "access_key_id": "AKIDFUZZ", "secret_access_key": "s", "region": "us-east-1",
            "inbound_topic_arn": SNS_TOPIC.topic_arn, "events_url_prefix": SNS_TOPIC.url + "/"}),
        ProviderConfig(name="mb", type="messagebird", settings={
            "access_key": "k", "originator": "Tidings", "signing_key": MB_SIGNING, "status_callback": MB_REPORTS,
            "inbound_url": MB_INBOUND})])
    return msgspec.structs.replace(cfg, channels={**cfg.channels, "email": email, "sms": sms})


# -- valid samples of each route's body, which the fuzzer mutates --------------------

ROW = {"channel": "email", "category": "marketing", "content_type": "*", "context": {"device": "mobile"},
       "enabled": True, "frequency": "daily", "quiet_hours": [{"start": "22:00", "end": "07:00"}],
       "time_windows": [{"days": ["mon", "tue"], "start": "09:00", "end": "17:00"}], "custom": {"k": "v"},
       "priority": 5, "expires_at": 4e9 - 1}
NOTE = {"user_id": "alice", "category": "job_alerts", "channels": ["webhook", "email"], "idempotency_key": "fuzz-1",
        "content": {"subject": "Hello", "text": "Body", "html": "<p>Body</p>", "data": {"n": 1}},
        "channel_content": {"webhook": {"text": "hook"}}, "template": {"id": TEMPLATE, "data": {"name": "A"}},
        "fallback": ["email"], "fallback_after_s": 60, "fallback_unless": "opened", "priority": "high",
        "content_type": "news", "context": {"device": "mobile"}, "metadata": {"a": "b"}, "accepted_at": 1.7e9}
BROADCAST = {"category": "marketing", "channels": ["webhook"], "content": {"text": "all"}, "audience": "all",
             "idempotency_key": "fuzz-b1"}
PROFILE = {"addresses": {"email": "carol@example.test", "webhook": "https://example.test/h"},
           "opt_outs": ["email:marketing", "*:*"], "timezone": "Europe/Berlin", "locale": "de-DE"}
DOC = {"preferences": [ROW], "consent": {"sms": "granted", "email": "withdrawn"}, "timezone": "UTC",
       "template": PREF_TEMPLATE}
SG_EVENT = {"email": "alice@example.test", "event": "bounce", "type": "bounce", "timestamp": 1.7e9,
            "sg_message_id": "abc.filter0001", "notification_id": "", "reason": "550 no such user", "status": "5.1.1",
            "useragent": "Mozilla", "url": "https://example.test/", "response": "250 ok", "attempt": "1"}
MG_EVENT = {"event": "failed", "severity": "permanent", "reason": "bounce", "recipient": "alice@example.test",
            "timestamp": 1.7e9, "message": {"headers": {"message-id": "<id@mg.example.test>"}},
            "user-variables": {"notification_id": ""}, "delivery-status": {"code": 550, "message": "gone"},
            "reject": {"reason": "r", "description": "d"}, "url": "https://example.test/"}
TW_FORM = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "undelivered", "ErrorCode": "30003",
           "ErrorMessage": "gone", "To": "+15550001111", "CallSid": "", "CallStatus": "completed",
           "Timestamp": "Tue, 10 Aug 2021 19:05:05 +0000", "CallDuration": "10"}


def signed_sendgrid(events):
    """A SendGrid body with a valid signature of its timestamp and bytes."""
    body = dumps(events)
    stamp = str(int(time.time()))
    sig = base64.b64encode(SG_KEY.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    return body, {SENDGRID_SIGNATURE_HEADER: sig, SENDGRID_TIMESTAMP_HEADER: stamp}


@st.composite
def signed_mailgun(draw):
    data = draw(shaped(MG_EVENT))
    stamp, token = str(int(time.time())), draw(st.uuids()).hex
    doc = {"signature": {"timestamp": stamp, "token": token, "signature": mailgun_signature(MG_KEY, stamp, token)},
           "event-data": data}
    return dumps(draw(st.just(doc) | mutated(doc))), {}


def _form_value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)[:2000]


@st.composite
def signed_twilio(draw, url: str = TW_CALLBACK, sample: dict | None = None):
    form = draw(shaped(sample or TW_FORM))
    pairs = [(str(k), _form_value(v)) for k, v in form.items()] if isinstance(form, dict) else [("x", _form_value(form))]
    pairs = [(k.encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
              v.encode("utf-8", "surrogatepass").decode("utf-8", "replace")) for k, v in pairs]
    body = urllib.parse.urlencode(pairs).encode()
    return body, {TWILIO_SIGNATURE_HEADER: twilio_signature(TW_TOKEN, url, pairs),
                  "Content-Type": "application/x-www-form-urlencoded"}


@st.composite
def signed_vonage(draw, sample: dict):
    """A form signed as Vonage signs webhooks, fresh (timestamp now, a new nonce),
    whatever the fuzzer made of the fields."""
    form = draw(shaped(sample))
    pairs = {str(k): _form_value(v) for k, v in form.items()} if isinstance(form, dict) else {"x": _form_value(form)}
    pairs = {k.encode("utf-8", "surrogatepass").decode("utf-8", "replace"):
             v.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for k, v in pairs.items()}
    pairs.update(timestamp=str(int(time.time())), nonce=uuid.uuid4().hex)
    pairs["sig"] = vonage_signature(VG_SIGNING, pairs)
    return urllib.parse.urlencode(pairs).encode(), {"Content-Type": "application/x-www-form-urlencoded"}


@st.composite
def signed_messagebird(draw, url: str, sample: dict):
    """A form body signed as MessageBird signs webhooks (for the configured URL),
    whatever the fuzzer made of the fields."""
    form = draw(shaped(sample))
    pairs = [(str(k), _form_value(v)) for k, v in form.items()] if isinstance(form, dict) else [("x", _form_value(form))]
    body = urllib.parse.urlencode([(k.encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
                                    v.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
                                   for k, v in pairs]).encode()
    return body, {SIGNATURE_HEADER: messagebird_jwt(MB_SIGNING, url, body),
                  "Content-Type": "application/x-www-form-urlencoded"}


SES_EVENT = {"eventType": "Bounce", "mail": {"messageId": "m1", "tags": {"notification_id": [UNKNOWN_ID]}},
             "bounce": {"bounceType": "Permanent", "bouncedRecipients": [{"emailAddress": "a@b.test"}]}}
INBOUND_SMS = {"originationNumber": "+15550001", "destinationNumber": "+15550002", "messageBody": "STOP",
               "inboundMessageId": "c0ffee00-0000-4000-8000-000000000001"}


@st.composite
def signed_sns(draw, sample: dict):
    """An SNS message signed by the loopback topic, what it carries fuzzed."""
    doc = SNS_TOPIC.message("Notification", dumps(draw(shaped(sample))).decode("utf-8", "replace"))
    return dumps(doc), {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "Notification"}


@st.composite
def import_body(draw):
    rows = draw(st.lists(shaped({**ROW, "user_id": "alice"}), min_size=1, max_size=4))
    if draw(st.booleans()):
        return b"\n".join(dumps(r) for r in rows), {"Content-Type": "application/x-ndjson"}
    header = "user_id,channel,category,enabled,quiet_hours,priority\n"
    lines = [",".join(_form_value(draw(TEXT | st.sampled_from(("alice", "email", "true", "5", "[]"))))
                      .replace("\n", " ") for _ in range(6)) for _ in rows]
    text = header + "\n".join(lines)
    return text.encode("utf-8", "surrogatepass"), {"Content-Type": "text/csv"}


def form(value) -> tuple[bytes, dict[str, str]]:
    """A mutated form as a browser or a mailbox provider posts it."""
    pairs = [(str(k), _form_value(v)) for k, v in value.items()] if isinstance(value, dict) else [("x", _form_value(value))]
    pairs = [(k.encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
              v.encode("utf-8", "surrogatepass").decode("utf-8", "replace")) for k, v in pairs]
    return urllib.parse.urlencode(pairs).encode(), {"Content-Type": "application/x-www-form-urlencoded"}


def json_sample(sample) -> st.SearchStrategy:
    return shaped(sample).map(lambda v: (dumps(v), {}))


GRAPHQL = {"query": "query($u: String!, $n: ID!) { user(id: $u) { userId } effectivePreferences(userId: $u) { "
                   "effective { channel enabled why { field level } } } notification(id: $n) { channels { status } } "
                   "channelAnalytics(bucket: \"hour\") { rows { channel } } }",
           "variables": {"u": "alice", "n": UNKNOWN_ID}, "operationName": None}
BODIES: dict[tuple[str, str], st.SearchStrategy] = {
    ("POST", "/v1/notifications"): json_sample(NOTE) | json_sample([NOTE, {**NOTE, "user_id": "bob"}]),
    ("POST", "/v1/broadcasts"): json_sample(BROADCAST),
    ("PUT", "/v1/users/{user_id}"): json_sample(PROFILE),
    ("POST", "/v1/users"): json_sample([{**PROFILE, "user_id": "carol"}]),
    ("POST", "/v1/suppressions"): json_sample({"channel": "email", "address": "x@example.test", "reason": "manual"}),
    ("PUT", "/v1/users/{user_id}/preferences"): json_sample(DOC),
    ("PATCH", "/v1/users/{user_id}/preferences"): json_sample({"set": [ROW], "remove": [
        {"channel": "sms", "category": "*", "content_type": "*", "context": {}}], "consent": {"sms": "granted"},
        "timezone": "Asia/Tokyo", "template": ""}),
    ("POST", "/v1/preferences/validate"): json_sample(DOC),
    ("POST", "/v1/preference-templates"): json_sample({"id": "fuzz-t", "version": 1, "name": "n", "description": "d",
                                                       "extends": PREF_TEMPLATE, "preferences": [ROW]}),
    ("POST", "/v1/preference-templates/{id}/apply"): json_sample({"user_ids": ["alice"], "where": {"locale": "en"}}),
    ("POST", "/v1/templates"): json_sample({"id": "fuzz-m", "channel": "email", "locale": "en",
                                            "subject": "{{ a }}", "text": "{{ a | upper }}", "html": "<b>{{ a }}</b>"}),
    ("POST", "/v1/templates/{id}/preview"): json_sample({"channel": "email", "locale": "en", "data": {"name": "x"},
                                                         "version": 1}),
    ("POST", "/v1/notifications/{id}/events"): json_sample({"channel": "email", "type": "opened", "at": 1.7e9}),
    ("POST", "/v1/users/{user_id}/inbox/read"): json_sample({"seqs": [1, 2]}) | json_sample({"all": True}),
    ("POST", "/v1/users/{user_id}/inbox/seen"): json_sample({"seqs": [1]}) | json_sample({"all": True}),
    ("POST", "/v1/tokens"): json_sample({"user_id": "alice", "ttl_s": 60}),
    ("POST", "/v1/preferences/import"): import_body(),
    ("POST", "/v1/tracking/sendgrid"): shaped([SG_EVENT]).map(signed_sendgrid),
    ("POST", "/v1/tracking/mailgun"): signed_mailgun(),
    ("POST", "/v1/tracking/twilio"): signed_twilio(),
    ("POST", "/v1/tracking/twilio/inbound"): signed_twilio(TW_INBOUND, {"From": "+15550001", "Body": "STOP",
                                                                        "To": "+15550002"}),
    ("POST", "/v1/tracking/vonage"): signed_vonage({"messageId": "0A00000012345678", "status": "failed",
                                                    "err-code": "3", "msisdn": "15550001", "client-ref": UNKNOWN_ID}),
    ("POST", "/v1/tracking/vonage/inbound"): signed_vonage({"msisdn": "15550001", "to": "15550002",
                                                            "messageId": "0B00000012345678", "text": "STOP"}),
    ("POST", "/v1/tracking/messagebird"): signed_messagebird(MB_REPORTS, {
        "id": "m1", "reference": UNKNOWN_ID, "recipient": "15550001", "status": "delivery_failed",
        "statusReason": "opted out", "statusDatetime": "2026-01-01T00:00:00+00:00"}),
    ("POST", "/v1/tracking/messagebird/inbound"): signed_messagebird(MB_INBOUND, {
        "id": "i1", "originator": "15550001", "recipient": "15550002", "body": "STOP"}),
    ("POST", "/v1/tracking/ses"): signed_sns(SES_EVENT),
    ("POST", "/v1/tracking/sns/inbound"): signed_sns(INBOUND_SMS),
    ("POST", "/v1/audit/checkpoints"): json_sample({}),  # no body is read
    ("POST", "/v1/event-subscriptions"): json_sample({"url": "https://hooks.fuzz.test/events", "statuses": ["sent"],
                                                      "channels": ["email"], "categories": ["job_alerts"]}),
    ("PATCH", "/v1/event-subscriptions/{id}"): json_sample({"enabled": False, "statuses": ["bounced"]}),
    ("POST", "/v1/event-subscriptions/{id}/secret"): json_sample({}),  # no body is read
    ("POST", "/v1/event-subscriptions/{id}/dead-letters/replay"): json_sample({}),  # no body is read
    ("POST", "/graphql"): json_sample(GRAPHQL) | json_sample({"query": "mutation($u: String!, $p: JSON!) { "
                                                             "updatePreferences(userId: $u, patch: $p) { version } }",
                                                             "variables": {"u": "alice", "p": {"set": [ROW]}}}),
    ("PUT", "/v1/users/{user_id}/legal-hold"): json_sample({"reason": "case 1"}),
    ("PUT", "/v1/users/{user_id}/devices/{device_id}"): json_sample({"platform": "android", "token": "fcm-fuzz",
                                                                     "app": "com.example", "kind": "tablet"}),
    ("PUT", "/v1/topics/{topic_id}/subscribers/{user_id}"): json_sample({}),  # no body is read
    ("POST", "/v1/topics/{topic_id}/subscribers"): json_sample({"add": ["alice"], "remove": ["bob"]}),
    ("PUT", "/v1/segments/{segment_id}"): json_sample({"description": "d", "where": {"all": [
        {"field": "locale", "op": "in", "value": ["en", "fr"]}, {"not": {"field": "last_opened", "op": "within_days",
                                                                         "value": 30}}]}}),
    ("POST", "/v1/experiments"): json_sample({"id": "fuzz", "category": "news", "kind": "content", "variants": [
        {"name": "control"}, {"name": "b", "weight": 3, "content": {"subject": "s", "text": "t", "data": {"n": 1}}}]}),
    ("POST", "/v1/experiments/{experiment_id}/stop"): json_sample({"winner": "b"}),
    ("POST", "/v1/users/{user_id}/preferences/suggestions/{suggestion_id}"): json_sample({}),  # no body is read
    ("POST", "/v1/audiences/count"): json_sample({"topic": "fuzz", "where": {"field": "address", "op": "has",
                                                                             "value": "email"}}),
    ("POST", "/u/{token}"): shaped({"List-Unsubscribe": "One-Click"}).map(form),
    ("POST", "/p/{token}"): shaped({"version": "1", "on.marketing.email": "on", "freq.marketing": "weekly",
                                    "quiet_start": "22:00", "quiet_end": "07:00", "timezone": "Asia/Tokyo"}).map(form),
}

ANY_BODY = st.one_of(
    st.just((b"", {})),
    JSON_VALUES.map(lambda v: (dumps(v), {})),
    RAW_BODIES.map(lambda b: (b, {})),
    HUGE_TEXT.map(lambda s: (dumps({"a": s}), {})),
)
CONTENT_TYPES = st.sampled_from((
    None, "", "application/json; charset=utf-8", "application/merge-patch+json", "text/plain",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/csv", "application/x-ndjson",
    "application/json; charset=latin-1", "application/", "*/*", "application/json, text/plain", "a" * 2000))
QUERY_NAMES = ("after", "limit", "unread", "since", "format", "from", "to", "bucket", "channel", "access_token",
               "device", "location", "activity", "urgency", "before")
QUERY_VALUES = st.one_of(
    TEXT, st.sampled_from(HUGE_NUMBERS).map(str), st.integers().map(str),
    st.sampled_from(("true", "false", "csv", "ndjson", "hour", "minute", "day", "email", "1970-01-01T00:00:00",
                     "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "nan", "inf", "-0", "1e308")))
# Header values a client can send: printable ASCII (a header is one line).
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=60)


def quote(text: str) -> str:
    """Percent-encoded, lone surrogates as the bytes an unpaired one encodes to."""
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


def path_value(name: str, engine) -> st.SearchStrategy[str]:
    known = {
        "user_id": ("alice", "bob", "nobody"),
        # erasure gets users of its own: erasing alice would delete the rows the last test counts
        "erasable": ("erasable", "nobody"),
        "id": (engine.sent_id, UNKNOWN_ID, TEMPLATE, PREF_TEMPLATE, "00000000-0000-0000-0000-000000000000"),
        "token": ("x",),
    }.get(name, ("x",))
    encoded = st.sampled_from(known).map(quote) | TEXT.map(quote)
    raw = st.sampled_from(("", "%", "%zz", "%00", "%2F", "..", "%2e%2e", "%C3%28", "%ED%A0%80", "a" * 300))
    strategies = [encoded, encoded, raw]
    if name == "token":  # tokens that verify: the handler goes on to record and redirect
        secret = LINK_SECRET.encode()
        strategies.append(st.tuples(st.sampled_from(("o", "c")), st.sampled_from(("email", "webhook", "sms")),
                                    st.sampled_from(("https://example.test/a", "javascript:alert(1)", "",
                                                     "http://127.0.0.1/\x00")))
                          .map(lambda t: links.sign(secret, t[0], engine.sent_id, t[1], t[2])))
    return st.one_of(strategies)


@dataclass
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    route: str = ""

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        return f"{self.method} {self.url[:300]} headers={self.headers} body={self.body[:300]!r}"


@st.composite
def requests(draw, engine, routes: list[tuple[str, str]]):
    method, path = draw(st.sampled_from(routes))
    if draw(st.integers(0, 19)) == 0:  # now and then another method (HEAD, or one the route does not have)
        method = draw(st.sampled_from(("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")))
    erasing = (method, path) == ("DELETE", "/v1/users/{user_id}")
    url = re.sub(r"\{(\w+)\}", lambda m: draw(path_value("erasable" if erasing else m.group(1), engine)), path)
    pairs = draw(st.lists(st.tuples(st.sampled_from(QUERY_NAMES) | TEXT, QUERY_VALUES), max_size=4))
    if pairs:
        url += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)
    sample = BODIES.get((method, path))
    body, headers = draw(st.one_of(sample, sample, ANY_BODY) if sample is not None else ANY_BODY)
    headers = dict(headers)
    if "Content-Type" not in headers or draw(st.integers(0, 9)) == 0:
        ctype = "application/json" if draw(st.integers(0, 9)) < 8 else draw(CONTENT_TYPES)
        if ctype is None:
            headers.pop("Content-Type", None)
        else:
            headers["Content-Type"] = ctype
    auth = draw(st.sampled_from(("admin",) * 7 + ("user", "none", "garbage")))
    if auth == "admin":
        headers.update(engine.headers)
    elif auth == "user":
        headers["Authorization"] = f"Bearer {engine.user_token}"
    elif auth == "garbage":
        headers["Authorization"] = draw(st.sampled_from(("Bearer ", "Basic ", "bearer tdk_", "")) | HEADER_TEXT) \
            + draw(HEADER_TEXT)
    for name in draw(st.lists(st.sampled_from(("If-Match", "Origin", "X-Forwarded-Proto", "X-Forwarded-Host")),
                              max_size=2, unique=True)):
        headers[name] = draw(HEADER_TEXT | st.sampled_from(('"3"', 'W/"1"', "*", "9" * 5000, "\u00b2")))
    return Request(method, engine.base_url + url, headers, body, path)


def routes_of(engine) -> list[tuple[str, str]]:
    """Every (method, path) of the router; HEAD (a GET's twin) only as another
    method now and then."""
    return sorted({(r.method, r.resource.canonical) for r in make_app(engine).router.routes() if r.method != "HEAD"})


def weighted(routes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Routes that read a body three times over: they have the most to get wrong."""
    return [r for r in routes for _ in range(3 if r in BODIES else 1)]


# PAGES: the one-click unsubscribe and the preference center answer HTML (their errors too)

# aiohttp's HTTP parser refuses a longer request line with its own 400 in plain
# text, before any route or middleware runs (as a proxy in front would).
MAX_REQUEST_LINE = 8190


def check_answer(req: Request, status: int, ctype: str, raw: bytes) -> None:
    assert status < 500, (status, raw[:500])
    target = yarl.URL(req.url, encoded=True).raw_path_qs
    if len(f"{req.method} {target} HTTP/1.1") > MAX_REQUEST_LINE:
        assert status == 400, (status, raw[:300])
        return
    if status < 400 or req.method == "HEAD":
        return
    if yarl.URL(req.url, encoded=True).path.startswith(PAGES) and ctype == "text/html":
        return  # pages for people: their errors are pages too (aiohttp's own 405 and 413 stay JSON)
    assert ctype == "application/json", (status, ctype, raw[:300])
    doc = json.loads(raw)
    assert isinstance(doc.get("error"), str) and isinstance(doc.get("errors"), list), doc
    for e in doc["errors"]:
        assert isinstance(e.get("field"), str) and isinstance(e.get("reason"), str), doc


async def test_every_body_route_has_a_sample(fuzzed):
    """A route that reads a body is fuzzed with mutations of a valid one: a new
    such route needs its sample in BODIES."""
    writes = {(m, p) for m, p in fuzzed.routes if m in ("POST", "PUT", "PATCH")}
    assert writes - set(BODIES) == set(), "add a valid sample body for these routes to BODIES"


@pytest.fixture(scope="module")
async def session():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.mark.timeout(300 + examples(1500) // 10)  # a long run (TIDINGS_FUZZ_EXAMPLES) gets its time
@settings(max_examples=examples(1500), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_no_request_gets_a_5xx(fuzzed, session, data):
    req = data.draw(requests(fuzzed, weighted(fuzzed.routes)))
    async with session.request(req.method, yarl.URL(req.url, encoded=True), data=req.body, headers=req.headers,
                               allow_redirects=False, skip_auto_headers=("Content-Type",)) as r:
        raw = await r.read()
        check_answer(req, r.status, r.content_type, raw)
    if r.status == 202 and req.route in ("/v1/notifications", "/v1/broadcasts"):
        doc = json.loads(raw)
        column = "parent_id" if req.route == "/v1/broadcasts" else "notification_id"
        fuzzed.accepted.update((column, n["id"]) for n in doc.get("notifications", [doc]))


async def test_what_was_accepted_is_processed_and_the_engine_is_ready(fuzzed, session):
    """Runs after the fuzzing (the file's order): every notification and
    broadcast answered 202 has its tracking rows (accepted is not the end of
    it: the engine behind the door must take what the door let in), every
    import job the fuzzer started has finished, and readiness holds."""
    deadline = time.monotonic() + 60
    waiting = set(fuzzed.accepted)
    while waiting and time.monotonic() < deadline:
        for column in ("notification_id", "parent_id"):
            ids = [uuid.UUID(nid) for c, nid in waiting if c == column]
            rows = await fuzzed.pool.fetch(f"SELECT DISTINCT {column}::text FROM delivery_tracking "
                                           f"WHERE {column} = ANY($1::uuid[])", ids)
            waiting -= {(column, r[0]) for r in rows}
        await asyncio.sleep(0.2)
    assert not waiting, f"accepted, never processed: {sorted(waiting)[:20]}"
    while (running := await fuzzed.pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'running'")) \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert running == 0
    async with session.get(f"{fuzzed.base_url}/readyz") as r:
        assert r.status == 200, await r.text()
