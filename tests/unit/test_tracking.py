"""providers.tracking: each provider's signature verification with real keys, and
the parsing of their events to TrackingEvent."""

import base64
import hashlib
import hmac
import time
import urllib.parse

import msgspec
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from providers.tracking import (
    PayloadError,
    SignatureError,
    TokenMemory,
    TrackingEvent,
    load_sendgrid_key,
    mailgun_event,
    parse_form,
    parse_mailgun,
    parse_sendgrid,
    parse_twilio,
    read_mailgun,
    reason_of,
    twilio_event,
    twilio_signature,
    url_variants,
    verify_mailgun,
    verify_sendgrid,
    verify_twilio,
)

NOW = 1_750_000_000.0


# -- SendGrid -----------------------------------------------------------------

def ec_keys():
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(der).decode()


def sg_sign(private, timestamp: str, body: bytes) -> str:
    return base64.b64encode(private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()


SG_BODY = msgspec.json.encode([
    {"email": "a@example.com", "event": "processed", "timestamp": 1750000001, "sg_message_id": "msg1.filter0001.1",
     "notification_id": "11111111-1111-1111-1111-111111111111"},
    {"email": "a@example.com", "event": "delivered", "timestamp": 1750000002, "response": "250 OK",
     "sg_message_id": "msg1.filter0001.1", "notification_id": "11111111-1111-1111-1111-111111111111"},
])


def test_sendgrid_valid_signature_with_base64_der_and_pem_keys():
    private, public_b64 = ec_keys()
    ts = str(int(NOW))
    sig = sg_sign(private, ts, SG_BODY)
    verify_sendgrid(public_b64, sig, ts, SG_BODY)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    verify_sendgrid(pem, sig, ts, SG_BODY)
    verify_sendgrid(load_sendgrid_key(public_b64), sig, ts, SG_BODY, now=NOW + 10, tolerance_s=300)
    _, other_public = ec_keys()
    verify_sendgrid([other_public, public_b64], sig, ts, SG_BODY)  # key rotation: any configured key


@pytest.mark.parametrize("tamper", ["body", "timestamp", "other_key", "not_base64", "garbage_der", "missing_sig",
                                    "missing_ts"])
def test_sendgrid_tampered_requests_are_refused(tamper):
    private, public_b64 = ec_keys()
    ts = str(int(NOW))
    sig = sg_sign(private, ts, SG_BODY)
    body = SG_BODY
    if tamper == "body":
        body = SG_BODY.replace(b"delivered", b"bounce")
    elif tamper == "timestamp":
        ts = str(int(NOW) + 1)
    elif tamper == "other_key":
        sig = sg_sign(ec_keys()[0], ts, SG_BODY)
    elif tamper == "not_base64":
        sig = "not base64!"
    elif tamper == "garbage_der":
        sig = base64.b64encode(b"\x30\x02\x01\x01").decode()
    elif tamper == "missing_sig":
        sig = None
    elif tamper == "missing_ts":
        ts = None
    with pytest.raises(SignatureError):
        verify_sendgrid(public_b64, sig, ts, body)


def test_sendgrid_stale_timestamp_with_a_tolerance():
    private, public_b64 = ec_keys()
    ts = str(int(NOW) - 3600)
    sig = sg_sign(private, ts, SG_BODY)
    verify_sendgrid(public_b64, sig, ts, SG_BODY, now=NOW)  # no age check by default
    with pytest.raises(SignatureError, match="from now"):
        verify_sendgrid(public_b64, sig, ts, SG_BODY, now=NOW, tolerance_s=600)


def test_sendgrid_key_loading_refuses_what_is_not_an_ec_key():
    rsa_der = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="elliptic"):
        load_sendgrid_key(base64.b64encode(rsa_der).decode())
    for bad in ("", "not base64!", base64.b64encode(b"not der").decode()):
        with pytest.raises(ValueError):
            load_sendgrid_key(bad)


def test_sendgrid_events_are_normalized():
    nid = "22222222-2222-2222-2222-222222222222"
    body = msgspec.json.encode([
        {"email": "d@example.com", "event": "delivered", "timestamp": 1750000010, "sg_message_id": "abc.f1.x",
         "notification_id": nid, "response": "250 2.0.0 OK"},
        {"email": "b@example.com", "event": "bounce", "type": "bounce", "status": "5.1.1",
         "reason": "550 no such user", "timestamp": 1750000011, "sg_message_id": "abc.f2.x", "notification_id": nid},
        {"email": "k@example.com", "event": "bounce", "type": "blocked", "status": "4.0.0", "reason": "IP blocked",
         "timestamp": 1750000012},
        {"email": "x@example.com", "event": "dropped", "reason": "Bounced Address", "timestamp": 1750000013},
        {"email": "y@example.com", "event": "dropped", "reason": "Spam Reporting Address", "timestamp": 1},
        {"email": "z@example.com", "event": "dropped", "reason": "Unsubscribed Address", "timestamp": 1},
        {"email": "s@example.com", "event": "spamreport", "timestamp": 1750000014},
        {"email": "f@example.com", "event": "deferred", "attempt": "2", "response": "421 try later", "timestamp": 1},
        {"email": "o@example.com", "event": "open", "timestamp": 1, "useragent": "Mozilla"},
        {"email": "c@example.com", "event": "click", "url": "https://t.test/x", "timestamp": 1},
        {"email": "u@example.com", "event": "unsubscribe", "timestamp": 1},
    ])
    events = parse_sendgrid(body)
    assert events[0] == TrackingEvent("sendgrid", nid, "abc", "email", "d@example.com", "delivered", False,
                                      1750000010.0, "250 2.0.0 OK", "delivered")
    assert (events[1].status, events[1].hard, events[1].provider_message_id) == ("bounced", True, "abc")
    assert events[1].detail == "bounce 5.1.1 550 no such user" and events[1].notification_id == nid
    assert (events[2].status, events[2].hard, events[2].notification_id) == ("failed", False, None)
    assert [(e.status, e.hard) for e in events[3:7]] == [("bounced", True), ("complained", True), ("failed", False),
                                                         ("complained", True)]
    assert [e.status for e in events[7:]] == [None, None, None, None]
    assert events[7].detail == "attempt 2: 421 try later" and events[9].detail == "https://t.test/x"
    assert [reason_of(e) for e in events[:3]] == ["delivered", "bounce", "bounce"]
    assert [e.engagement for e in events] == [None] * 8 + ["opened", "clicked", None]


@pytest.mark.parametrize("body, match", [
    (b"not json", "not JSON"),
    (b'{"event": "delivered"}', "array"),
    (b'[1]', "event 0 is not an object"),
    (b'[{"event": "delivered"}, {"email": "a@b.c"}]', "event 1"),
])
def test_sendgrid_bodies_that_do_not_parse(body, match):
    with pytest.raises(PayloadError, match=match):
        parse_sendgrid(body)


# -- Mailgun ------------------------------------------------------------------

MG_KEY = "key-mailgun-signing-0123456789abcdef"


def mg_body(event_data: dict, *, key: str = MG_KEY, timestamp: float = NOW, token: str = "tok-1",
            signature: str | None = None) -> bytes:
    ts = str(int(timestamp))
    sig = signature or hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    return msgspec.json.encode({"signature": {"timestamp": ts, "token": token, "signature": sig},
                                "event-data": event_data})


MG_DELIVERED = {"event": "delivered", "timestamp": 1750000020.25, "recipient": "a@example.com",
                "user-variables": {"notification_id": "33333333-3333-3333-3333-333333333333"},
                "message": {"headers": {"message-id": "20250615.abc@mg.tidings.test"}},
                "delivery-status": {"code": 250, "message": "OK"}}


def test_mailgun_valid_signature_and_event():
    tokens = TokenMemory()
    ev = parse_mailgun(mg_body(MG_DELIVERED), MG_KEY, now=NOW + 5, tokens=tokens)
    assert ev == TrackingEvent("mailgun", "33333333-3333-3333-3333-333333333333", "20250615.abc@mg.tidings.test",
                               "email", "a@example.com", "delivered", False, 1750000020.25, "250 OK", "delivered")
    assert "tok-1" in tokens
    # a second configured key: either verifies
    assert parse_mailgun(mg_body(MG_DELIVERED, token="tok-2"), ["other", MG_KEY], now=NOW).status == "delivered"


@pytest.mark.parametrize("case", ["wrong_key", "tampered_signature", "tampered_token", "uppercase_garbage"])
def test_mailgun_bad_signatures(case):
    body = mg_body(MG_DELIVERED)
    if case == "wrong_key":
        body = mg_body(MG_DELIVERED, key="not-the-key")
    elif case == "tampered_signature":
        doc = msgspec.json.decode(body)
        doc["signature"]["signature"] = doc["signature"]["signature"][:-1] + (
            "0" if doc["signature"]["signature"][-1] != "0" else "1")
        body = msgspec.json.encode(doc)
    elif case == "tampered_token":
        doc = msgspec.json.decode(body)
        doc["signature"]["token"] = "tok-evil"
        body = msgspec.json.encode(doc)
    else:
        body = mg_body(MG_DELIVERED, signature="Z" * 64)
    tokens = TokenMemory()
    with pytest.raises(SignatureError, match="does not match"):
        parse_mailgun(body, MG_KEY, now=NOW, tokens=tokens)
    assert len(tokens) == 0  # a refused request's token is not remembered


def test_mailgun_stale_and_future_timestamps():
    with pytest.raises(SignatureError, match="from now"):
        parse_mailgun(mg_body(MG_DELIVERED, timestamp=NOW - 301), MG_KEY, now=NOW)
    with pytest.raises(SignatureError, match="from now"):
        parse_mailgun(mg_body(MG_DELIVERED, timestamp=NOW + 301), MG_KEY, now=NOW)
    ts = str(int(NOW - 301))
    sig = hmac.new(MG_KEY.encode(), (ts + "t").encode(), hashlib.sha256).hexdigest()
    verify_mailgun(MG_KEY, ts, "t", sig, now=NOW, tolerance_s=600)  # the tolerance is a parameter
    assert parse_mailgun(mg_body(MG_DELIVERED, timestamp=NOW - 299), MG_KEY, now=NOW).status == "delivered"


def test_mailgun_replayed_token_is_refused():
    tokens = TokenMemory()
    body = mg_body(MG_DELIVERED, token="tok-replay")
    parse_mailgun(body, MG_KEY, now=NOW, tokens=tokens)
    with pytest.raises(SignatureError, match="replayed"):
        parse_mailgun(body, MG_KEY, now=NOW + 1, tokens=tokens)
    tokens.forget("tok-replay")  # what the route does when it could not process the event
    parse_mailgun(body, MG_KEY, now=NOW + 2, tokens=tokens)


def test_token_memory_is_bounded_and_expires():
    tokens = TokenMemory(max_tokens=3, window_s=300)
    assert all(tokens.remember(t, NOW) for t in ("a", "b", "c", "d"))
    assert len(tokens) == 3 and "a" not in tokens and "d" in tokens
    assert not tokens.remember("d", NOW)
    assert tokens.remember("e", NOW + 601) and len(tokens) == 1  # the others aged out of 2 windows


def test_mailgun_event_data_that_does_not_parse_forgets_the_token():
    tokens = TokenMemory()
    with pytest.raises(PayloadError, match="event"):
        parse_mailgun(mg_body({"recipient": "a@example.com"}), MG_KEY, now=NOW, tokens=tokens)
    assert "tok-1" not in tokens


@pytest.mark.parametrize("body, error", [
    (b"not json", PayloadError),
    (b"[]", PayloadError),
    (b'{"event-data": {"event": "delivered"}}', SignatureError),
    (b'{"signature": {"timestamp": "1", "token": "t"}, "event-data": {}}', SignatureError),
    (b'{"signature": {"timestamp": "1", "token": "t", "signature": "s"}}', PayloadError),
])
def test_mailgun_bodies_that_do_not_parse(body, error):
    with pytest.raises(error):
        read_mailgun(body)


@pytest.mark.parametrize("data, status, hard", [
    ({"event": "failed", "severity": "permanent", "reason": "bounce"}, "bounced", True),
    ({"event": "failed", "severity": "permanent", "reason": "suppress-bounce"}, "bounced", True),
    ({"event": "failed", "severity": "permanent", "reason": "suppress-complaint"}, "complained", True),
    ({"event": "failed", "severity": "permanent", "reason": "old"}, "failed", False),
    ({"event": "failed", "severity": "permanent", "reason": "suppress-unsubscribe"}, "failed", False),
    ({"event": "failed", "severity": "temporary", "reason": "generic"}, None, False),
    ({"event": "complained"}, "complained", True),
    ({"event": "rejected", "reject": {"reason": "policy"}}, "failed", False),
    ({"event": "opened"}, None, False),
    ({"event": "clicked", "url": "https://t.test"}, None, False),
    ({"event": "accepted"}, None, False),
])
def test_mailgun_events_are_normalized(data, status, hard):
    ev = mailgun_event({"recipient": "r@example.com", "timestamp": 1750000000.5,
                        "message": {"headers": {"message-id": "<m1@mg.test>"}}, **data})
    assert (ev.status, ev.hard, ev.channel, ev.address, ev.at) == (status, hard, "email", "r@example.com",
                                                                   1750000000.5)
    assert ev.provider_message_id == "m1@mg.test" and ev.notification_id is None and ev.event == data["event"]


def test_mailgun_opens_and_clicks_are_engagement():
    def engagement(event: str) -> str | None:
        return mailgun_event({"event": event, "recipient": "r@example.com", "timestamp": 1}).engagement

    assert [engagement(e) for e in ("opened", "clicked", "delivered", "complained", "unsubscribed")] == [
        "opened", "clicked", None, None, None]


def test_mailgun_failure_detail():
    ev = mailgun_event({"event": "failed", "severity": "permanent", "reason": "bounce",
                        "delivery-status": {"code": 550, "message": "5.1.1 mailbox does not exist"}})
    assert ev.detail == "permanent bounce (550 5.1.1 mailbox does not exist)"


# -- Twilio -------------------------------------------------------------------

def test_twilio_published_test_vectors():
    # Twilio's documented example (its helper libraries test against it).
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234", "From": "+14158675309",
              "To": "+18005551212"}
    assert twilio_signature("12345", url, params.items()) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234"),
                ("Digits", "1234")]
    assert twilio_signature("12345", url, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def tw_sign(token: str, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's algorithm written out independently of providers.tracking."""
    data = url + "".join(k + v for k, v in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


TW_TOKEN = "twilio-auth-token-0123456789abcdef"
TW_URL = "https://hooks.tidings.test/v1/tracking/twilio"
TW_SMS = [("MessageSid", "SM" + "a" * 32), ("MessageStatus", "undelivered"), ("ErrorCode", "30005"),
          ("To", "+15551230001"), ("From", "+15550000000"), ("AccountSid", "AC" + "b" * 32),
          ("ApiVersion", "2010-04-01")]


def test_twilio_valid_tampered_and_wrong_url():
    sig = tw_sign(TW_TOKEN, TW_URL, TW_SMS)
    verify_twilio(TW_TOKEN, sig, TW_URL, TW_SMS)
    verify_twilio(TW_TOKEN, sig, ["http://internal:8080/v1/tracking/twilio", TW_URL], TW_SMS)
    with pytest.raises(SignatureError, match="does not match"):
        verify_twilio(TW_TOKEN, sig, TW_URL, [*TW_SMS[:2], ("ErrorCode", "30003"), *TW_SMS[3:]])
    with pytest.raises(SignatureError, match="does not match"):
        verify_twilio("other-token", sig, TW_URL, TW_SMS)
    with pytest.raises(SignatureError, match="does not match"):
        verify_twilio(TW_TOKEN, sig, TW_URL + "?x=1", TW_SMS)
    with pytest.raises(SignatureError, match="does not match"):
        verify_twilio(TW_TOKEN, sig, TW_URL, [*TW_SMS, ("Extra", "1")])
    with pytest.raises(SignatureError, match="missing"):
        verify_twilio(TW_TOKEN, None, TW_URL, TW_SMS)


def test_twilio_default_port_variants():
    assert url_variants("https://a.test/x?q=1") == ["https://a.test/x?q=1", "https://a.test:443/x?q=1"]
    assert url_variants("https://a.test:443/x") == ["https://a.test:443/x", "https://a.test/x"]
    assert url_variants("http://a.test:8080/x") == ["http://a.test:8080/x"]
    sig = tw_sign(TW_TOKEN, "https://hooks.tidings.test:443/v1/tracking/twilio", TW_SMS)
    verify_twilio(TW_TOKEN, sig, TW_URL, TW_SMS)


def test_twilio_sms_and_voice_events():
    body = urllib.parse.urlencode(TW_SMS).encode()
    params, ev = parse_twilio(body, now=NOW)
    assert params == TW_SMS
    assert ev == TrackingEvent("twilio", None, "SM" + "a" * 32, "sms", "+15551230001", "bounced", True, NOW,
                               "error 30005", "undelivered")

    def sms(status, code=None):
        form = [("MessageSid", "SM1"), ("MessageStatus", status), ("To", "+15551230001")]
        return twilio_event(form + ([("ErrorCode", str(code))] if code else []), now=NOW)

    assert (sms("delivered").status, sms("sent").status, sms("queued").status) == ("delivered", None, None)
    assert (sms("failed", 30003).status, sms("failed", 30003).hard) == ("failed", False)
    assert (sms("undelivered", 21610).status, sms("undelivered", 21610).hard) == ("complained", True)
    assert (sms("failed", 21211).status, sms("failed", 21211).hard) == ("bounced", True)

    def call(status, **extra):
        return twilio_event([("CallSid", "CA1"), ("CallStatus", status), ("To", "+15551230002"),
                             *extra.items()], now=NOW)

    done = call("completed", CallDuration="12", Timestamp="Mon, 16 Jun 2025 10:00:00 +0000")
    assert (done.channel, done.status, done.provider_message_id, done.detail) == ("voice", "delivered", "CA1", "12 s")
    assert done.at == 1750068000.0
    assert [call(s).status for s in ("busy", "no-answer", "failed", "canceled", "ringing", "initiated")] == [
        "failed", "failed", "failed", "failed", None, None]
    assert reason_of(call("no-answer")) == "no_answer"
    # legacy SMS fields
    assert twilio_event([("SmsSid", "SM2"), ("SmsStatus", "delivered")], now=NOW).status == "delivered"


@pytest.mark.parametrize("body", [b"To=%2B1555", b"MessageSid=SM1", b"\xff\xfe=1"])
def test_twilio_bodies_that_do_not_parse(body):
    with pytest.raises(PayloadError):
        parse_twilio(body)


def test_form_parsing_keeps_repeats_and_blanks():
    assert parse_form(b"a=1&a=2&b=&c=%2B1") == [("a", "1"), ("a", "2"), ("b", ""), ("c", "+1")]


def test_event_times_default_to_now():
    ev = mailgun_event({"event": "delivered"})
    assert abs(ev.at - time.time()) < 5
