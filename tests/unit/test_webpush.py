"""WebPushProvider against a loopback push service (sandbox.webpush.WebPushSink)
that verifies VAPID and decrypts the aes128gcm body with the subscription's key."""

import base64
import json
import time

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from provider_helpers import serving, started
from py_vapid import jwt as vapid_jwt

from engine.embedded import free_port
from policy.types import Content, DeliveryTask
from providers.errors import AddressGone, AuthenticationError, ConfigurationError, DestinationError, InvalidMessage
from providers.webpush.provider import MAX_BODY, MAX_PLAINTEXT, WebPushProvider, parse_subscription, topic_for
from sandbox.webpush import WebPushSink, _Refused, verify_vapid

_KEY = ec.generate_private_key(ec.SECP256R1())
VAPID_PEM = _KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode()
VAPID_RAW = base64.urlsafe_b64encode(_KEY.private_numbers().private_value.to_bytes(32, "big")).rstrip(b"=").decode()
SUBJECT = "mailto:ops@tidings.test"
CONTENT = Content(subject="Build finished", text="main is green", data={"url": "/builds/42", "n": 3})


def task(sub, n: int = 1, *, content: Content = CONTENT, priority: str = "normal", metadata=None) -> DeliveryTask:
    address = sub if isinstance(sub, str) else json.dumps(sub)
    return DeliveryTask(notification_id=f"nid-{n}", user_id="u1", channel="web", category="builds",
                        address=address, content=content, priority=priority, metadata=metadata or {})


def make(**settings) -> WebPushProvider:
    base = {"vapid_private_key": VAPID_PEM, "vapid_subject": SUBJECT, "allow_http": True, "timeout_s": 2,
            "egress_allow": ["127.0.0.0/8", "::1/128"]}
    return WebPushProvider("wp-test", {**base, **settings})


@pytest.fixture
async def sink():
    async with serving(WebPushSink()) as s:
        yield s


@pytest.fixture
async def provider():
    async with started(make()) as p:
        yield p


def requests_seen(sink: WebPushSink) -> int:
    return sink.accepted + sink.rejected + sink.gone + sink.bad_vapid + sink.failed


async def test_round_trip_the_sink_decrypts_exactly_the_json_sent(sink, provider):
    sub = sink.subscribe()
    t = task(sub)
    receipt = await provider.send(t)
    assert sink.accepted == 1 and requests_seen(sink) == 1
    got = sink.received[0]
    assert got.payload == provider.plaintext(t)
    assert got.json() == {"title": "Build finished", "body": "main is green", "data": {"url": "/builds/42", "n": 3},
                          "id": "nid-1"}
    assert receipt.message_id == f"{sink.url}/message/{got.message_id}"


async def test_headers_ttl_urgency_encoding_and_topic(sink):
    p = make(ttl_s=600, urgency={"low": "very-low"})
    sub = sink.subscribe()
    try:
        await p.send(task(sub, 1))
        await p.send(task(sub, 2, priority="critical", metadata={"webpush_topic": "build-42"}))
        await p.send(task(sub, 3, priority="low"))
        await p.send(task(sub, 4, priority="high"))
    finally:
        await p.close()
    assert [(r.ttl, r.urgency, r.topic) for r in sink.received] == [
        (600, "normal", None), (600, "high", "build-42"), (600, "very-low", None), (600, "high", None)]
    # the sink refuses anything but aes128gcm, so every accepted message was encoded so
    h = make().headers(task(sub), parse_subscription(json.dumps(sub), allow_http=True))
    assert (h["TTL"], h["Content-Encoding"], h["Urgency"]) == ("86400", "aes128gcm", "normal")
    assert h["Authorization"].startswith("vapid t=") and ", k=" in h["Authorization"]


async def test_vapid_is_verified_by_the_push_service(sink, provider):
    await provider.send(task(sink.subscribe()))
    got = sink.received[0]
    assert got.vapid_key == provider.public_key
    assert got.claims["aud"] == sink.origin and got.claims["sub"] == SUBJECT
    assert time.time() < got.claims["exp"] <= time.time() + 86400
    # A subscription made for another applicationServerKey refuses our key: 403.
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    restricted = sink.subscribe(application_server_key=base64.urlsafe_b64encode(other).rstrip(b"=").decode())
    with pytest.raises(AuthenticationError) as exc:
        await provider.send(task(restricted))
    assert exc.value.status == 403 and sink.bad_vapid == 1
    # ...and takes it when it was made for our key; the raw base64url key form signs the same way.
    mine = sink.subscribe(application_server_key=provider.public_key)
    raw = make(vapid_private_key=VAPID_RAW)
    try:
        assert raw.public_key == provider.public_key
        await raw.send(task(mine, 2))
    finally:
        await raw.close()
    assert sink.accepted == 2


def test_sink_refuses_forged_or_wrong_vapid():
    now = time.time()
    pub = _KEY.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    k = base64.urlsafe_b64encode(pub).rstrip(b"=").decode()
    aud = "http://127.0.0.1:9"

    def header(claims, key=_KEY, k=k):
        return f"vapid t={vapid_jwt.sign(claims, key)}, k={k}"

    good = {"aud": aud, "exp": int(now) + 3600, "sub": SUBJECT}
    assert verify_vapid(header(good), aud, now)[0] == good
    assert verify_vapid(header(good).replace(", k=", ",k="), aud, now)[1] == k
    other = ec.generate_private_key(ec.SECP256R1())
    for bad, reason in [
        (header(good, key=other), "signature"),
        (header({**good, "aud": "http://127.0.0.1:10"}), "aud"),
        (header({**good, "exp": int(now) - 1}), "expired"),
        (header({**good, "exp": int(now) + 86400 + 60}), "24 hours"),
        (header({**good, "sub": "ops@tidings.test"}), "sub"),
        ("Bearer abc", "scheme"),
        (f"vapid k={k}", "t= and k="),
    ]:
        with pytest.raises(_Refused, match=reason):
            verify_vapid(bad, aud, now)


async def test_expired_or_unknown_subscription_is_address_gone(sink, provider):
    sub = sink.subscribe()
    sink.expire(sub)
    with pytest.raises(AddressGone) as exc:
        await provider.send(task(sub))
    assert exc.value.status == 410 and not exc.value.retryable
    unknown = {**sink.subscribe(), "endpoint": f"{sink.url}/push/nope"}
    with pytest.raises(AddressGone) as exc:
        await provider.send(task(unknown))
    assert exc.value.status == 404 and sink.gone == 2
    # A subscription whose expirationTime has passed is gone without asking.
    with pytest.raises(AddressGone, match="expirationTime"):
        await provider.send(task({**sink.subscribe(), "expirationTime": (time.time() - 60) * 1000}))
    assert requests_seen(sink) == 2


def _sub(**changes):
    pub = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    doc = {"endpoint": "https://push.example.net/push/abc", "expirationTime": None,
           "keys": {"p256dh": base64.urlsafe_b64encode(pub).rstrip(b"=").decode(), "auth": "AAAAAAAAAAAAAAAAAAAAAA"}}
    for k, v in changes.items():
        if k.startswith("keys_"):
            doc["keys"][k[5:]] = v
        elif v is None:
            doc.pop(k)
        else:
            doc[k] = v
    return json.dumps(doc)


@pytest.mark.parametrize("address, match", [
    ("", "empty"),
    ("not json", "not a PushSubscription"),
    ('["https://push.example.net/x"]', "not a PushSubscription"),
    (_sub(endpoint=None), "'endpoint'"),
    (_sub(endpoint="ftp://push.example.net/x"), "https://"),
    (_sub(endpoint="http://push.example.net/x"), "https://"),
    (_sub(endpoint="https:///x"), "no host"),
    (_sub(endpoint="https://user:pw@push.example.net/x"), "user info"),
    (_sub(keys=None), "'keys'"),
    (_sub(keys_p256dh=None), "keys.p256dh"),
    (_sub(keys_p256dh="not+base64url/"), "keys.p256dh"),
    (_sub(keys_p256dh="BAAA"), "65-byte"),
    (_sub(keys_p256dh="BA" + "A" * 85), "not a point"),
    (_sub(keys_auth=None), "keys.auth"),
    (_sub(keys_auth="AAAA"), "16 bytes"),
    (_sub(expirationTime="soon"), "expirationTime"),
])
async def test_bad_subscription_is_invalid_message_naming_the_problem(address, match):
    p = make(allow_http=False)
    with pytest.raises(InvalidMessage, match=match) as exc:
        await p.send(task(address))
    assert type(exc.value) is InvalidMessage and p._session is None  # nothing was sent


async def test_too_large_payload_is_refused_before_any_request(sink, provider):
    sub = sink.subscribe()
    big = Content(subject="big", text="x" * MAX_PLAINTEXT)
    with pytest.raises(InvalidMessage, match=f"at most {MAX_PLAINTEXT}"):
        await provider.send(task(sub, content=big))
    assert requests_seen(sink) == 0
    # The largest payload that fits is exactly a 4096-byte body, and it is delivered.
    overhead = len(provider.plaintext(task(sub, content=Content(subject="big", text=""))))
    fits = Content(subject="big", text="x" * (MAX_PLAINTEXT - overhead))
    plain = provider.plaintext(task(sub, content=fits))
    assert len(plain) == MAX_PLAINTEXT
    assert len(provider.encrypt(plain, parse_subscription(json.dumps(sub), allow_http=True))) == MAX_BODY
    await provider.send(task(sub, content=fits))
    assert sink.accepted == 1 and sink.received[0].payload == plain


async def test_topic_and_content_are_checked(sink, provider):
    sub = sink.subscribe()
    with pytest.raises(InvalidMessage, match="topic"):
        await provider.send(task(sub, metadata={"webpush_topic": "not a topic!"}))
    with pytest.raises(InvalidMessage, match="JSON-encodable"):
        await provider.send(task(sub, content=Content(subject="s", data={"x": object()})))
    assert requests_seen(sink) == 0


@pytest.mark.parametrize("status, error", [
    (400, InvalidMessage), (401, AuthenticationError), (403, AuthenticationError), (413, InvalidMessage),
    (408, DestinationError), (500, DestinationError), (502, DestinationError), (503, DestinationError),
])
async def test_status_mapping(sink, provider, status, error):
    sink.fail_status, sink.fail_next = status, 1
    with pytest.raises(error) as exc:
        await provider.send(task(sink.subscribe()))
    assert type(exc.value) is error and exc.value.status == status
    assert exc.value.retryable is (status >= 500 or status == 408)
    assert "/push/" not in str(exc.value)  # the endpoint's capability path is not echoed
    await provider.send(task(sink.subscribe(), 2))  # fail_next used up
    assert (sink.failed, sink.accepted) == (1, 1)


async def test_429_is_a_destination_error_with_retry_after(sink, provider):
    # the endpoint's own slow-down: it must not pause the provider's shared bucket
    sink.fail_status, sink.fail_next, sink.retry_after = 429, 2, "7"
    sub = sink.subscribe()
    for _ in range(2):
        with pytest.raises(DestinationError) as exc:
            await provider.send(task(sub))
        assert exc.value.retry_after == 7.0 and exc.value.retryable and exc.value.status == 429
    await provider.send(task(sub))
    assert (sink.failed, sink.accepted) == (2, 1)


async def test_network_error():
    p = make()
    sub = {**json.loads(_sub()), "endpoint": f"http://127.0.0.1:{free_port()}/push/x"}
    try:
        with pytest.raises(DestinationError) as exc:
            await p.send(task(sub))
    finally:
        await p.close()
    assert exc.value.retryable and "/push/x" not in str(exc.value)
    assert len(p.destinations) == 1  # counted against that endpoint


def test_destination_settings():
    p = make()
    assert p.destination_timeout_s == 0.8 * 2  # below the timeout_s setting
    base = {"vapid_private_key": VAPID_PEM, "vapid_subject": SUBJECT}
    assert WebPushProvider("w", base).destination_timeout_s == 8
    assert WebPushProvider("w", {**base, "destination_timeout_s": 3}).destination_timeout_s == 3
    p = make(destination_breaker_failures=2, destination_breaker_cooloff_s=5, destination_breakers_max=7)
    assert (p.destinations.threshold, p.destinations.cooloff_s, p.destinations.capacity) == (2, 5.0, 7)
    for bad in ({"destination_timeout_s": 0}, {"destination_timeout_s": "x"}, {"destination_breaker_failures": 0},
                {"destination_breakers_max": 0}, {"destination_breaker_cooloff_s": -1}):
        with pytest.raises(ConfigurationError, match="destination"):
            make(**bad)


async def test_vapid_token_is_reused_per_origin(sink, provider):
    a = provider.authorization(sink.origin)
    assert provider.authorization(sink.origin) == a
    assert provider.authorization("https://push.example.net") != a
    later = time.time() + provider.vapid_expiry_s / 2 + 1
    assert provider.authorization(sink.origin, now=later) != a


def test_settings_are_checked_and_the_key_is_never_echoed():
    with pytest.raises(ConfigurationError, match="vapid_private_key"):
        WebPushProvider("w", {"vapid_subject": SUBJECT})
    secret = "c2VjcmV0LW5vdC1hLWtleQ"
    with pytest.raises(ConfigurationError) as exc:
        make(vapid_private_key=secret)
    assert secret not in str(exc.value) and exc.value.__cause__ is None
    rsa_pem = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ConfigurationError, match="vapid_private_key"):
        make(vapid_private_key=rsa_pem)
    for bad in ("ops@tidings.test", "http://tidings.test", "mailto:nobody"):
        with pytest.raises(ConfigurationError, match="vapid_subject"):
            make(vapid_subject=bad)
    with pytest.raises(ConfigurationError, match="urgency"):
        make(urgency={"high": "urgent"})
    with pytest.raises(ConfigurationError, match="ttl_s"):
        make(ttl_s=-1)
    with pytest.raises(ConfigurationError, match="vapid_expiry_s"):
        make(vapid_expiry_s=90000)
    for bad in ({"timeout_s": "soon"}, {"timeout_s": 0}, {"max_connections": 0}):
        with pytest.raises(ConfigurationError, match="timeout_s"):
            make(**bad)
    p = make(vapid_subject="https://tidings.test/contact")
    assert p.settings["vapid_private_key"] == "[redacted]" and VAPID_PEM not in repr(p.settings)
    assert p.channel == "web" and p.ttl_s == 86400 and p.urgency["critical"] == "high"
    assert len(base64.urlsafe_b64decode(p.public_key + "=")) == 65


def test_subscription_parsing_accepts_browser_json():
    sub = parse_subscription(_sub(endpoint="https://Push.Example.net:443/wpush/v2/abc"))
    assert sub.origin == "https://push.example.net" and len(sub.auth) == 16
    assert parse_subscription(_sub(endpoint="https://push.example.net:8443/x")).origin == "https://push.example.net:8443"
    doc = msgspec.json.decode(_sub(expirationTime=(time.time() + 3600) * 1000))
    assert parse_subscription(json.dumps(doc)).expiration_ms is not None


def test_encryption_matches_the_rfc8291_appendix_a_example():
    def d(s):
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    sub = parse_subscription(json.dumps({"endpoint": "https://push.example.net/push/JzLQ3raZJfFBR0aqvOMsLrt54w4rJUsV",
                                         "keys": {"p256dh": "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTB"
                                                            "Hm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
                                                  "auth": "BTBZMqHH6r4Tts7J_aSIgg"}}))
    sender = ec.derive_private_key(int.from_bytes(d("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"), "big"),
                                   ec.SECP256R1())
    body = WebPushProvider.encrypt(b"When I grow up, I want to be a watermelon", sub, sender=sender,
                                   salt=d("DGv6ra1nlYgDCS1FRnbzlw"))
    assert base64.urlsafe_b64encode(body).rstrip(b"=").decode() == (
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6P"
        "Bru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN")


def test_other_key_types_are_refused():
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()).decode()
    for pem in (rsa_pem, p384):
        with pytest.raises(ConfigurationError, match="P-256"):
            make(vapid_private_key=pem)
    sec1 = _KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()).decode()
    assert make(vapid_private_key="\n" + sec1).public_key == make().public_key


async def test_an_end_of_life_shortens_the_ttl_and_the_collapse_key_is_the_topic(sink):
    p = make(ttl_s=600)
    sub = sink.subscribe()
    soon, later, named, hashed = task(sub, 1), task(sub, 2), task(sub, 3), task(sub, 4)
    soon.expires_at = time.time() + 120
    later.expires_at = time.time() + 86400  # longer than ttl_s: ttl_s stays the bound
    named.collapse_key = "build-42"
    hashed.collapse_key = "builds:main:42"  # not base64url: its hash is the topic
    try:
        for t in (soon, later, named, hashed):
            await p.send(t)
    finally:
        await p.close()
    got = sink.received
    assert 115 <= got[0].ttl <= 120 and got[1].ttl == 600
    assert got[2].topic == "build-42"
    assert got[3].topic == topic_for("builds:main:42") and len(got[3].topic) == 32 and got[3].topic != got[2].topic
    assert sink.accepted == 4  # the push service checks the Topic's form
