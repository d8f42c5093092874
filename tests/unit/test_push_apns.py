"""ApnsProvider (aioapns) against an APNs look-alike on loopback: HTTP/2 over TLS
with a self-signed certificate (sandbox.apns.ApnsSink)."""

import asyncio
import logging
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from provider_helpers import serving, started

from engine.embedded import free_port
from policy.types import Content, DeliveryTask
from providers.errors import (
    AddressGone,
    AuthenticationError,
    ConfigurationError,
    InvalidMessage,
    NetworkError,
    ProviderError,
    RateLimited,
)
from providers.push.apns import TOKEN_TTL_S, ApnsProvider
from sandbox.apns import ApnsSink, make_signing_key

KEY_ID, TEAM_ID, TOPIC = "ABC123DEFG", "TEAM123456", "com.example.tidings"
CONTENT = Content(subject="Your order shipped", text="It arrives Tuesday", html="<p>ignored</p>",
                  data={"order": "A-17", "n": 3})


@pytest.fixture(scope="module")
def key():
    return make_signing_key()


def device(n: int = 1) -> str:
    return f"{n:064x}"


def task(n: int = 1, *, address: str | None = None, content: Content = CONTENT, priority: str = "normal"):
    return DeliveryTask(notification_id=f"nid-{n}", user_id="u1", channel="push", category="orders",
                        address=address if address is not None else device(n), content=content, priority=priority)


@pytest.fixture
async def sink(key):
    async with serving(ApnsSink(key, KEY_ID, TEAM_ID, TOPIC, keep_bodies=True)) as s:
        yield s


def make(sink: ApnsSink, key: str, **settings) -> ApnsProvider:
    base = {"key": key, "key_id": KEY_ID, "team_id": TEAM_ID, "topic": TOPIC, "host": "127.0.0.1",
            "port": sink.port, "ca_file": sink.ca_file, "timeout_s": 2}
    return ApnsProvider("apns-test", {**base, **settings})


@pytest.fixture
async def provider(sink, key):
    async with started(make(sink, key)) as p:
        yield p


async def test_send_over_http2_tls_with_a_verified_provider_token(sink, provider):
    receipt = await provider.send(task(1, priority="high"))
    await provider.send(task(2))
    assert receipt.message_id and receipt.message_id != sink.last_apns_id  # the second one's is last
    assert (sink.requests, sink.rejected, sink.connections, sink.tokens) == (2, 0, 1, 1)
    assert sink.alpn == {"h2": 1}
    first, second = sink.bodies
    assert first["token"] == device(1) and first["payload"] == {
        "aps": {"alert": {"title": "Your order shipped", "body": "It arrives Tuesday"}}, "order": "A-17", "n": 3}
    assert first["headers"]["apns-id"] == receipt.message_id
    assert {k: first["headers"][k] for k in ("apns-topic", "apns-push-type", "apns-priority")} == {
        "apns-topic": TOPIC, "apns-push-type": "alert", "apns-priority": "10"}
    assert second["headers"]["apns-priority"] == "5"
    token = first["headers"]["authorization"].split(" ", 1)[1]
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": KEY_ID, "typ": "JWT"}
    claims = jwt.decode(token, sink.public_key, algorithms=["ES256"])
    assert claims["iss"] == TEAM_ID and abs(claims["iat"] - time.time()) < 60


async def test_data_only_is_a_background_push(sink, provider):
    await provider.send(task(content=Content(data={"sync": "inbox"}), priority="critical"))
    body = sink.bodies[0]
    assert body["payload"] == {"aps": {"content-available": 1}, "sync": "inbox"}
    assert (body["headers"]["apns-push-type"], body["headers"]["apns-priority"]) == ("background", "5")


async def test_sound_setting(sink, key):
    p = make(sink, key, sound="default")
    try:
        await p.send(task())
    finally:
        await p.close()
    assert sink.bodies[0]["payload"]["aps"]["sound"] == "default"


async def test_expired_provider_token_is_refreshed_once_and_resent(sink, provider):
    await provider.send(task(1))
    sink.expire_tokens()
    receipt = await provider.send(task(2))
    assert receipt.message_id == sink.last_apns_id
    assert sink.reasons == {"ExpiredProviderToken": 1} and (sink.requests, sink.tokens) == (2, 2)
    assert provider.auth.issued == 2
    await provider.send(task(3))  # the new token is kept
    assert provider.auth.issued == 2


async def test_concurrent_refusals_refresh_the_token_once(sink, provider):
    await provider.send(task(0))
    sink.expire_tokens()
    await asyncio.gather(*(provider.send(task(i)) for i in range(1, 11)))
    assert provider.auth.issued == 2 and sink.requests == 11


async def test_provider_token_is_remade_after_its_lifetime(key):
    p = ApnsProvider("a", {"key": key, "key_id": KEY_ID, "team_id": TEAM_ID, "topic": TOPIC})
    now = [1_700_000_000.0]
    p.auth.clock = lambda: now[0]
    first = p.auth.get_header()
    now[0] += TOKEN_TTL_S - 1
    assert p.auth.get_header() == first
    now[0] += 1
    assert p.auth.get_header() != first and p.auth.issued == 2


async def test_wrong_key_is_authentication_error_after_one_refresh(sink):
    p = make(sink, make_signing_key())
    try:
        with pytest.raises(AuthenticationError) as info:
            await p.send(task())
    finally:
        await p.close()
    assert info.value.status == 403 and "InvalidProviderToken" in str(info.value) and not info.value.retryable
    assert sink.reasons == {"InvalidProviderToken": 2} and sink.requests == 0 and p.auth.issued == 2
    assert "PRIVATE KEY" not in str(info.value) and "PRIVATE KEY" not in repr(p.settings)


async def test_wrong_team_and_other_403_are_authentication_errors(sink, key):
    p = make(sink, key, team_id="OTHERTEAM1")
    try:
        with pytest.raises(AuthenticationError, match="InvalidProviderToken"):
            await p.send(task())
    finally:
        await p.close()
    p = make(sink, key)
    sink.fail_status, sink.fail_next = 403, 1
    try:
        with pytest.raises(AuthenticationError, match="Forbidden"):
            await p.send(task())
    finally:
        await p.close()
    assert p.auth.issued == 1  # Forbidden is not a token problem: no refresh


async def test_unregistered_and_bad_device_token_are_address_gone(sink, provider):
    sink.unregistered.add(device(7))
    with pytest.raises(AddressGone) as info:
        await provider.send(task(7))
    assert info.value.status == 410 and "Unregistered" in str(info.value) and not info.value.retryable
    with pytest.raises(AddressGone, match="BadDeviceToken") as info:
        await provider.send(task(address="abcd" * 4))  # hex, but not a device token
    assert info.value.status == 400
    await provider.send(task(8))
    assert (sink.rejected, sink.requests) == (2, 1)


async def test_invalid_payload_and_topic_are_invalid_message(sink, key):
    p = make(sink, key, max_payload_bytes=10_000)  # let the server judge the size
    try:
        with pytest.raises(InvalidMessage) as info:
            await p.send(task(content=Content(subject="s", data={"blob": "x" * 5000})))
        assert type(info.value) is InvalidMessage and info.value.status == 413 and "PayloadTooLarge" in str(info.value)
    finally:
        await p.close()
    p = make(sink, key, topic="com.example.other")
    try:
        with pytest.raises(InvalidMessage) as info:
            await p.send(task())
        assert type(info.value) is InvalidMessage and info.value.status == 400 and "BadTopic" in str(info.value)
    finally:
        await p.close()
    assert sink.reasons == {"PayloadTooLarge": 1, "BadTopic": 1}


@pytest.mark.parametrize("content, address, match", [
    (CONTENT, "not-hex", "not hex"),
    (CONTENT, "", "not hex"),
    (Content(), None, "title, a body or data"),
    (Content(subject="s", data={"aps": {}}), None, "reserved"),
    (Content(subject="s", data={"blob": "x" * 5000}), None, "exceeds 4096"),
])
async def test_invalid_messages_are_refused_before_sending(sink, provider, content, address, match):
    with pytest.raises(InvalidMessage, match=match):
        await provider.send(task(content=content, address=address))
    assert sink.requests == sink.rejected == sink.connections == 0


async def test_429_is_rate_limited(sink, provider):
    sink.fail_status, sink.fail_next = 429, 1
    with pytest.raises(RateLimited) as info:
        await provider.send(task())
    assert info.value.status == 429 and info.value.retryable and info.value.retry_after is None
    assert "TooManyRequests" in str(info.value)
    sink.fail_status, sink.fail_next, sink.retry_after = 429, 1, "3"
    with pytest.raises(RateLimited) as info:
        await provider.send(task())
    assert info.value.retry_after == 3.0
    await provider.send(task())
    assert (sink.failed, sink.requests) == (2, 1)


@pytest.mark.parametrize("status, reason", [(500, "InternalServerError"), (503, "ServiceUnavailable")])
async def test_5xx_is_provider_error(sink, provider, status, reason):
    sink.fail_status, sink.fail_next = status, 1
    with pytest.raises(ProviderError) as info:
        await provider.send(task())
    assert type(info.value) is ProviderError and info.value.status == status and info.value.retryable
    assert reason in str(info.value)
    await provider.send(task())
    assert (sink.failed, sink.requests) == (1, 1)


async def test_unreachable_server_is_a_prompt_network_error(key):
    p = ApnsProvider("a", {"key": key, "key_id": KEY_ID, "team_id": TEAM_ID, "topic": TOPIC,
                           "host": "127.0.0.1", "port": free_port()})
    started = time.monotonic()
    try:
        with pytest.raises(NetworkError, match="cannot connect") as info:
            await p.send(task())
    finally:
        await p.close()
    assert info.value.retryable and time.monotonic() - started < 0.9  # aioapns alone sleeps 1 s


async def test_an_untrusted_certificate_is_a_network_error(sink, key):
    p = make(sink, key, ca_file=None)
    try:
        with pytest.raises(NetworkError, match="CERTIFICATE_VERIFY_FAILED"):
            await p.send(task())
    finally:
        await p.close()
    assert sink.requests == 0


async def test_many_concurrent_sends_over_few_connections(sink, key):
    p = make(sink, key, max_connections=2)
    try:
        receipts = await asyncio.gather(*(p.send(task(i)) for i in range(300)))
    finally:
        await p.close()
    assert len({r.message_id for r in receipts}) == 300 and sink.requests == 300
    assert 1 <= sink.connections <= 2 and sink.tokens == 1


async def test_error_bodies_past_the_flow_control_window_do_not_stall(sink, key):
    # aioapns 4.0 never acknowledges DATA: after 64 KiB of error bodies on one
    # connection APNs can send no more answers. Ours acknowledges them.
    p = make(sink, key, max_connections=1)
    sink.unregistered.update(device(i) for i in range(1400))
    try:
        results = await asyncio.wait_for(asyncio.gather(*(p.send(task(i)) for i in range(1400)),
                                                        return_exceptions=True), 20)
        await p.send(task(2000))
    finally:
        await p.close()
    assert all(isinstance(r, AddressGone) for r in results) and sink.connections == 1


async def test_a_cancelled_send_leaves_the_connection_usable(sink, provider, caplog):
    await provider.send(task(1))
    sink.delay_s = 0.1
    errors = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        with caplog.at_level(logging.ERROR):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(provider.send(task(2)), 0.02)
            await asyncio.sleep(0.2)  # the late answer arrives for a cancelled request
            sink.delay_s = 0
            await provider.send(task(3))
    finally:
        loop.set_exception_handler(previous)
    assert errors == [] and sink.connections == 1 and sink.requests == 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_configuration(tmp_path, key):
    base = {"key": key, "key_id": KEY_ID, "team_id": TEAM_ID, "topic": TOPIC}
    with pytest.raises(ConfigurationError, match="key"):
        ApnsProvider("a", {k: v for k, v in base.items() if k != "key"})
    for missing in ("key_id", "team_id", "topic"):
        with pytest.raises(ConfigurationError, match=missing):
            ApnsProvider("a", {k: v for k, v in base.items() if k != missing})
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with pytest.raises(ConfigurationError, match="P-256"):
        ApnsProvider("a", {**base, "key": rsa_pem})
    with pytest.raises(ConfigurationError, match="not a PEM"):
        ApnsProvider("a", {**base, "key": "garbage"})
    with pytest.raises(ConfigurationError, match="cannot read"):
        ApnsProvider("a", {**{k: v for k, v in base.items() if k != "key"}, "key_file": str(tmp_path / "no.p8")})
    with pytest.raises(ConfigurationError, match="port"):
        ApnsProvider("a", {**base, "port": 70000})
    path = tmp_path / "AuthKey_ABC123DEFG.p8"
    path.write_text(key)
    p = ApnsProvider("a", {**{k: v for k, v in base.items() if k != "key"}, "key_file": str(path)})
    assert (p.host, p.port, p.channel) == ("api.push.apple.com", 443, "push")
    p = ApnsProvider("a", {**base, "sandbox": True})
    assert (p.host, p.port) == ("api.development.push.apple.com", 443)
    assert "BEGIN" not in repr(p.settings)


async def test_ca_file_that_cannot_be_loaded(key, tmp_path):
    p = ApnsProvider("a", {"key": key, "key_id": KEY_ID, "team_id": TEAM_ID, "topic": TOPIC,
                           "ca_file": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigurationError, match="ca_file"):
        await p.start()


async def test_an_end_of_life_is_apns_expiration_and_the_collapse_key_apns_collapse_id(sink, provider):
    t = task(1)
    t.expires_at, t.collapse_key = time.time() + 600, "sign-in"
    before = int(time.time())
    await provider.send(t)
    await provider.send(task(2))  # no end of life: no header, as before
    first, second = sink.bodies
    assert before + 598 <= int(first["headers"]["apns-expiration"]) <= int(time.time()) + 601
    assert first["headers"]["apns-collapse-id"] == "sign-in"
    assert "apns-expiration" not in second["headers"] and "apns-collapse-id" not in second["headers"]
    assert sink.rejected == 0  # the look-alike checks both headers as APNs does
