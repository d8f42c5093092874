"""FcmProvider against an FCM HTTP v1 + OAuth token endpoint look-alike on loopback
(sandbox.fcm.FcmSink)."""

import asyncio
import json
import time

import aiohttp
import jwt
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
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
from providers.push.fcm import GRANT_TYPE, SCOPE, FcmProvider, parse_error
from sandbox.fcm import FcmSink, _check_message, _Refused, make_service_account

PROJECT = "tidings-test"
CONTENT = Content(subject="Your order shipped", text="It arrives Tuesday", html="<p>ignored</p>",
                  data={"order": "A-17", "count": 3, "flags": {"gift": True}})


@pytest.fixture(scope="module")
def account():
    return make_service_account(PROJECT)


@pytest.fixture(scope="module")
def other_account():
    return make_service_account(PROJECT)  # same email below: a key Google does not know


def task(n: int = 1, *, address: str | None = None, content: Content = CONTENT, priority: str = "normal"):
    return DeliveryTask(notification_id=f"nid-{n}", user_id="u1", channel="push", category="orders",
                        address=address if address is not None else f"fcm-token-{n}", content=content,
                        priority=priority)


@pytest.fixture
async def sink(account):
    async with serving(FcmSink(account, keep_bodies=True)) as s:
        yield s


def make(sink: FcmSink, **settings) -> FcmProvider:
    base = {"service_account": sink.service_account(), "base_url": sink.url, "timeout_s": 2}
    return FcmProvider("fcm-test", {**base, **settings})


@pytest.fixture
async def provider(sink):
    async with started(make(sink)) as p:
        yield p


async def test_send_fetches_a_token_once_and_sends_the_documented_message(sink, provider):
    receipt = await provider.send(task(1, priority="high"))
    await provider.send(task(2))
    assert (sink.token_requests, sink.tokens_issued, sink.requests, sink.rejected) == (1, 1, 2, 0)
    assert receipt.message_id and receipt.message_id.startswith(f"projects/{PROJECT}/messages/0:")
    assert sink.bodies[0] == {"message": {
        "token": "fcm-token-1",
        "notification": {"title": "Your order shipped", "body": "It arrives Tuesday"},
        "data": {"order": "A-17", "count": "3", "flags": '{"gift":true}'},
        "android": {"priority": "high"},
        "apns": {"headers": {"apns-priority": "10"}},
    }}
    assert sink.bodies[1]["message"]["android"] == {"priority": "normal"}
    assert sink.bodies[1]["message"]["apns"] == {"headers": {"apns-priority": "5"}}


async def test_the_jwt_is_the_documented_assertion(sink, provider):
    claims = jwt.decode(provider.assertion(now=1_700_000_000), sink.public_key, algorithms=["RS256"],
                        audience=sink.token_uri, options={"verify_exp": False})
    assert claims == {"iss": sink.client_email, "scope": SCOPE, "aud": sink.token_uri, "iat": 1_700_000_000,
                      "exp": 1_700_003_600}
    assert jwt.get_unverified_header(provider.assertion())["kid"] == sink.key_id


async def test_data_only_is_a_background_push_on_ios(sink, provider):
    await provider.send(task(content=Content(data={"sync": "inbox"})))
    msg = sink.bodies[0]["message"]
    assert "notification" not in msg and msg["data"] == {"sync": "inbox"}
    assert msg["apns"] == {"headers": {"apns-priority": "5", "apns-push-type": "background"},
                           "payload": {"aps": {"content-available": 1}}}


async def test_concurrent_sends_share_one_token_fetch(sink, provider):
    await asyncio.gather(*(provider.send(task(i)) for i in range(20)))
    assert (sink.token_requests, sink.requests) == (1, 20)


async def test_token_is_refreshed_shortly_before_expiry(sink, provider):
    now = [1000.0]
    provider.clock = lambda: now[0]
    await provider.send(task(1))
    now[0] += 3599 - 300 - 1  # just before the refresh margin
    await provider.send(task(2))
    assert sink.token_requests == 1
    now[0] += 2
    await provider.send(task(3))
    assert sink.token_requests == 2 and sink.requests == 3


async def test_401_refreshes_the_token_once_and_resends(sink, provider):
    await provider.send(task(1))
    sink.revoke_tokens()
    receipt = await provider.send(task(2))
    assert receipt.message_id and (sink.unauthorized, sink.token_requests, sink.requests) == (1, 2, 2)


async def test_401_again_after_refresh_is_authentication_error(sink, provider, monkeypatch):
    await provider.send(task(1))
    monkeypatch.setattr(sink, "token_ttl_s", -10)  # tokens it issues are already expired
    sink.revoke_tokens()
    with pytest.raises(AuthenticationError) as info:
        await provider.send(task(2))
    assert info.value.status == 401 and "UNAUTHENTICATED" in str(info.value) and not info.value.retryable
    assert (sink.unauthorized, sink.token_requests) == (2, 2)
    assert "ya29." not in str(info.value)


async def test_unregistered_token_is_address_gone(sink, provider):
    sink.unregistered.add("fcm-token-7")
    with pytest.raises(AddressGone) as info:
        await provider.send(task(7))
    assert info.value.status == 404 and "UNREGISTERED" in str(info.value) and not info.value.retryable
    await provider.send(task(8))
    assert (sink.rejected, sink.requests) == (1, 1)


async def test_unregistered_error_code_with_400_is_address_gone(sink, provider):
    body = {"error": {"code": 400, "message": "gone", "status": "INVALID_ARGUMENT", "details": [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}
    assert isinstance(provider.error(400, {}, msgspec.json.encode(body)), AddressGone)


def test_404_without_unregistered_drops_no_token(account):
    p = FcmProvider("f", {"service_account": account})
    body = {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}}
    err = p.error(404, {}, msgspec.json.encode(body))
    assert type(err) is ConfigurationError and "project_id" in str(err)


async def test_404_without_a_google_body_drops_no_token(sink):
    p = make(sink, base_url=f"{sink.url}/wrong")
    try:
        with pytest.raises(ConfigurationError, match="base_url"):
            await p.send(task())
    finally:
        await p.close()


async def test_invalid_payload_is_invalid_message(sink, provider, monkeypatch):
    original = provider.message

    def bad(t):
        doc = original(t)
        doc["message"]["data"]["n"] = 5  # FCM wants strings
        return doc

    monkeypatch.setattr(provider, "message", bad)
    with pytest.raises(InvalidMessage) as info:
        await provider.send(task())
    assert type(info.value) is InvalidMessage and info.value.status == 400
    assert "INVALID_ARGUMENT" in str(info.value) and "message.data[3].value" in str(info.value)
    assert sink.rejected == 1


async def test_invalid_token_and_oversized_message_are_refused_by_fcm(sink, provider):
    with pytest.raises(InvalidMessage, match="not a valid FCM registration token"):
        await provider.send(task(address="has space"))
    with pytest.raises(InvalidMessage, match="too big"):
        await provider.send(task(content=Content(subject="s", text="x" * 5000)))
    assert sink.rejected == 2 and sink.requests == 0


@pytest.mark.parametrize("content, address, match", [
    (Content(), "t", "title, a body or data"),
    (Content(subject="s", data={"from": "x"}), "t", "reserved"),
    (Content(subject="s", data={"google.c.a": "x"}), "t", "reserved"),
    (CONTENT, "", "no registration token"),
])
async def test_invalid_messages_are_refused_before_sending(sink, provider, content, address, match):
    with pytest.raises(InvalidMessage, match=match):
        await provider.send(task(content=content, address=address))
    assert sink.requests == sink.rejected == 0


async def test_wrong_key_is_authentication_error_from_the_token_endpoint(sink, other_account):
    forged = {**other_account, "client_email": sink.client_email, "token_uri": sink.token_uri}
    p = make(sink, service_account=forged)
    try:
        with pytest.raises(AuthenticationError) as info:
            await p.send(task())
    finally:
        await p.close()
    assert info.value.status == 400 and "invalid_grant" in str(info.value) and "Signature" in str(info.value)
    assert "PRIVATE KEY" not in str(info.value) and "PRIVATE KEY" not in repr(p.settings)
    assert (sink.tokens_issued, sink.requests) == (0, 0)


async def test_unknown_account_and_wrong_project(sink, account):
    p = make(sink, service_account={**sink.service_account(), "client_email": "x@y.iam.gserviceaccount.com"})
    try:
        with pytest.raises(AuthenticationError, match="account not found"):
            await p.send(task())
    finally:
        await p.close()
    p = make(sink, project_id="someone-else")
    try:
        with pytest.raises(AuthenticationError, match="PERMISSION_DENIED"):
            await p.send(task())
    finally:
        await p.close()


async def test_sender_id_mismatch_is_authentication_error_not_address_gone(sink, provider):
    sink.other_sender.add("fcm-token-3")
    with pytest.raises(AuthenticationError) as info:
        await provider.send(task(3))
    assert type(info.value) is AuthenticationError and "SENDER_ID_MISMATCH" in str(info.value)


async def test_429_is_rate_limited_with_retry_after(sink, provider):
    sink.fail_status, sink.fail_next, sink.retry_after = 429, 1, "7"
    with pytest.raises(RateLimited) as info:
        await provider.send(task())
    assert info.value.status == 429 and info.value.retry_after == 7.0 and info.value.retryable
    assert "QUOTA_EXCEEDED" in str(info.value)
    await provider.send(task())
    assert (sink.failed, sink.requests) == (1, 1)


@pytest.mark.parametrize("status, code", [(500, "INTERNAL"), (503, "UNAVAILABLE")])
async def test_5xx_is_provider_error(sink, provider, status, code):
    sink.fail_status, sink.fail_next = status, 1
    with pytest.raises(ProviderError) as info:
        await provider.send(task())
    assert type(info.value) is ProviderError and info.value.status == status and info.value.retryable
    assert code in str(info.value)
    assert info.value.retry_after == (1.0 if status == 503 else None)


async def test_third_party_auth_error_is_not_retried_with_a_new_token(sink, provider):
    sink.fail_status, sink.fail_next = 401, 1
    with pytest.raises(AuthenticationError, match="THIRD_PARTY_AUTH_ERROR"):
        await provider.send(task())
    assert sink.token_requests == 1 and sink.failed == 1


@pytest.fixture
async def token_server():
    """A token endpoint that answers what ``answers[path]`` says: (status, headers)."""
    answers = {}

    async def handler(request):
        status, headers = answers[request.path]
        return web.json_response({"error": "backendError", "error_description": "try later"}, status=status,
                                 headers=headers)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", answers
    await runner.cleanup()


@pytest.mark.parametrize("status, headers, error", [
    (503, None, ProviderError), (429, {"Retry-After": "30"}, RateLimited), (401, None, AuthenticationError),
    (302, {"Location": "http://elsewhere.test/"}, AuthenticationError),
])
async def test_token_endpoint_errors(sink, token_server, status, headers, error):
    url, answers = token_server
    answers["/token"] = (status, headers)
    p = make(sink, token_uri=f"{url}/token")
    try:
        with pytest.raises(error) as info:
            await p.send(task())
    finally:
        await p.close()
    assert type(info.value) is error and info.value.status == status and "backendError" in str(info.value)
    assert info.value.retry_after == (30.0 if status == 429 else None)
    assert sink.requests == 0


async def test_token_endpoint_unreachable_or_missing(sink):
    p = make(sink, token_uri=f"{sink.url}/nowhere")
    try:
        with pytest.raises(AuthenticationError, match="HTTP 404"):
            await p.send(task())
    finally:
        await p.close()
    p = make(sink, token_uri=f"http://127.0.0.1:{free_port()}/token")
    try:
        with pytest.raises(NetworkError):
            await p.send(task())
    finally:
        await p.close()


async def test_unreachable_fcm_is_network_error(sink):
    p = make(sink, base_url=f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(NetworkError) as info:
            await p.send(task())
    finally:
        await p.close()
    assert info.value.retryable and "ya29." not in str(info.value)


async def test_validate_only(sink):
    p = make(sink, validate_only=True)
    try:
        receipt = await p.send(task())
    finally:
        await p.close()
    assert receipt.message_id == f"projects/{PROJECT}/messages/fake_message_id"
    assert sink.bodies[0]["validate_only"] is True


def test_configuration(tmp_path, account):
    with pytest.raises(ConfigurationError, match="service_account"):
        FcmProvider("f", {})
    with pytest.raises(ConfigurationError, match="private_key"):
        FcmProvider("f", {"service_account": {"client_email": "a@b", "private_key": "nope", "project_id": "p"}})
    with pytest.raises(ConfigurationError, match="project_id"):
        FcmProvider("f", {"service_account": {k: v for k, v in account.items() if k != "project_id"}})
    with pytest.raises(ConfigurationError, match="cannot read"):
        FcmProvider("f", {"service_account_file": str(tmp_path / "missing.json")})
    with pytest.raises(ConfigurationError, match="base_url"):
        FcmProvider("f", {"service_account": account, "base_url": "ftp://x"})
    path = tmp_path / "key.json"
    path.write_text(json.dumps(account))
    p = FcmProvider("f", {"service_account_file": str(path)})
    assert p.endpoint == f"https://fcm.googleapis.com/v1/projects/{PROJECT}/messages:send"
    assert p.token_uri == "https://oauth2.googleapis.com/token" and p.channel == "push"
    p = FcmProvider("f", {"service_account": account, "project_id": "other"})
    assert "/projects/other/" in p.endpoint and "BEGIN" not in repr(p.settings)


async def test_credentials_an_answer_echoes_are_scrubbed(sink, provider, account):
    """Neither the signed assertion (quoted back by a token endpoint), the
    access token (quoted back by FCM) nor the private key reach an error or
    ``settings``."""
    async def echo(request):
        form = await request.post()
        return web.json_response({"error": "invalid_grant", "error_description": f"bad {form['assertion']}"},
                                 status=400)

    app = web.Application()
    app.router.add_post("/token", echo)
    async with TestServer(app) as server:
        p = make(sink, token_uri=str(server.make_url("/token")))
        try:
            with pytest.raises(AuthenticationError) as info:
                await p.send(task())
        finally:
            await p.close()
    assert str(info.value) == "fcm token endpoint HTTP 400: invalid_grant bad [redacted]"
    await provider.send(task())  # holds an access token now
    token = provider._token
    err = provider.error(401, {}, msgspec.json.encode({"error": {"status": "UNAUTHENTICATED",
                                                                 "message": f"token {token} expired"}}))
    assert token and token not in str(err) and "token [redacted] expired" in str(err)
    assert provider.settings["service_account"] == {"client_email": account["client_email"], "private_key": "[redacted]"}
    assert account["private_key"] not in repr(provider.settings)


def test_parse_error():
    assert parse_error(b"<html>") == (None, None, None)
    body = {"error": {"code": 404, "message": "m", "status": "NOT_FOUND", "details": [
        {"@type": "type.googleapis.com/google.rpc.BadRequest"},
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}
    assert parse_error(msgspec.json.encode(body)) == ("NOT_FOUND", "m", "UNREGISTERED")


# -- the sink itself, as Google documents the endpoints -----------------------

async def test_sink_token_endpoint_refuses_what_google_refuses(sink, account):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(account["private_key"].encode(), password=None)
    now = int(time.time())
    good = {"iss": sink.client_email, "scope": SCOPE, "aud": sink.token_uri, "iat": now, "exp": now + 3600}
    cases = [
        ({"grant_type": "client_credentials", "assertion": "x"}, "unsupported_grant_type"),
        ({"grant_type": GRANT_TYPE, "assertion": "not.a.jwt"}, "invalid_grant"),
        ({"grant_type": GRANT_TYPE, "assertion": jwt.encode({**good, "exp": now + 7200}, key, "RS256")},
         "short-lived"),
        ({"grant_type": GRANT_TYPE, "assertion": jwt.encode({**good, "aud": "https://elsewhere"}, key, "RS256")},
         "audience"),
        ({"grant_type": GRANT_TYPE, "assertion": jwt.encode({**good, "scope": "email"}, key, "RS256")},
         "invalid_scope"),
        ({"grant_type": GRANT_TYPE, "assertion": jwt.encode(good, key, "RS256", headers={"kid": "other"})},
         "Signature"),
    ]
    async with aiohttp.ClientSession() as session:
        for form, expected in cases:
            async with session.post(sink.token_uri, data=form) as resp:
                doc = await resp.json()
                assert resp.status == 400 and expected in f"{doc['error']} {doc['error_description']}", form
        async with session.post(sink.token_uri, data={"grant_type": GRANT_TYPE,
                                                      "assertion": jwt.encode(good, key, "RS256")}) as resp:
            doc = await resp.json()
            assert resp.status == 200 and doc["token_type"] == "Bearer" and doc["expires_in"] == 3599
        token = doc["access_token"]
        send = f"{sink.url}/v1/projects/{PROJECT}/messages:send"
        auth = {"Authorization": f"Bearer {token}"}
        async with session.post(send, json={"message": {"token": "t"}}) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["status"] == "UNAUTHENTICATED"
        for body, field in [({"message": {"token": "t", "topic": "x"}}, "message"),
                            ({"message": {"token": "t", "colour": "red"}}, "message.colour"),
                            ({"msg": {}}, "message")]:
            async with session.post(send, json=body, headers=auth) as resp:
                err = (await resp.json())["error"]
                assert resp.status == 400 and err["status"] == "INVALID_ARGUMENT"
                fields = [v["field"] for d in err.get("details", []) for v in d.get("fieldViolations", [])]
                assert field in fields or not fields, err
        async with session.post(send, json={"message": {"token": "t"}}, headers=auth) as resp:
            assert resp.status == 200 and (await resp.json())["name"].startswith(f"projects/{PROJECT}/messages/")
    assert (sink.tokens_issued, sink.requests, sink.unauthorized) == (1, 1, 1)


async def test_an_end_of_life_is_android_ttl_and_apns_expiration_and_the_collapse_key_both(sink, provider):
    t = task(1)
    t.expires_at, t.collapse_key = time.time() + 3600, "inbox"
    before = int(time.time())
    await provider.send(t)
    msg = sink.bodies[0]["message"]
    assert msg["android"]["collapse_key"] == "inbox" and msg["apns"]["headers"]["apns-collapse-id"] == "inbox"
    ttl = msg["android"]["ttl"]
    assert ttl.endswith("s") and 3595 <= int(ttl[:-1]) <= 3600
    assert before + 3595 <= int(msg["apns"]["headers"]["apns-expiration"]) <= int(time.time()) + 3601
    assert 3595 <= int(msg["webpush"]["headers"]["TTL"]) <= 3600  # a web app's token
    assert sink.rejected == 0


async def test_a_life_past_fcms_four_weeks_is_sent_as_four_weeks_and_the_look_alike_refuses_more(sink, provider):
    t = task(1)
    t.expires_at = time.time() + 28 * 86400 + 5  # the planning shard's clock a little ahead of this one
    await provider.send(t)
    assert sink.bodies[0]["message"]["android"]["ttl"] == "2419200s" and sink.rejected == 0
    for ttl in ("2419201s", "1h", "-5s", 60):
        with pytest.raises(_Refused):
            _check_message({"message": {"token": "x", "data": {"a": "b"}, "android": {"ttl": ttl}}})
