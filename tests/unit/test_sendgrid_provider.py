"""SendGridProvider against a real SendGrid look-alike on loopback (sandbox.SendGridSink)."""

import aiohttp
import msgspec
import pytest
from provider_helpers import EMAIL_CONTENT as CONTENT, email_task as task, pointed_at, serving, started

from policy.types import Content
from providers.email.sendgrid import SendGridProvider, rate_limit_reset
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidMessage,
    NetworkError,
    ProviderError,
    RateLimited,
)
from providers.registry import create
from sandbox import SendGridSink, SinkProcess, free_port

API_KEY = "SG.unit-test-key.sup3rs3cret"


@pytest.fixture
async def sink():
    async with serving(SendGridSink(API_KEY, keep_bodies=True)) as s:
        yield s


def make(sink: SendGridSink | None = None, **settings) -> SendGridProvider:
    base = {"api_key": API_KEY, "sender": "Tidings <noreply@tidings.test>", "timeout_s": 2}
    return SendGridProvider("sg-test", pointed_at(sink, base, settings))


@pytest.fixture
async def provider(sink):
    async with started(make(sink)) as p:
        yield p


async def test_single_send_is_counted_and_has_the_documented_body(sink, provider):
    receipt = await provider.send(task(1))
    assert (sink.requests, sink.recipients, sink.rejected, sink.duplicates) == (1, 1, 0, 0)
    assert receipt.message_id is not None and receipt.message_id == sink.last_message_id
    assert sink.notification_ids == {"nid-1"}
    assert sink.bodies == [{
        "personalizations": [{
            "to": [{"email": "user1@example.com"}],
            "custom_args": {"notification_id": "nid-1", "user_id": "u1", "category": "digest"},
        }],
        "from": {"email": "noreply@tidings.test", "name": "Tidings"},
        "subject": "Your weekly digest",
        "content": [{"type": "text/plain", "value": "plain body"}, {"type": "text/html", "value": "<p>html body</p>"}],
    }]


async def test_html_only_and_bare_sender(sink):
    p = make(sink, sender="noreply@tidings.test")
    try:
        await p.send(task(1, content=Content(subject="s", html="<b>x</b>")))
    finally:
        await p.close()
    body = sink.bodies[0]
    assert body["from"] == {"email": "noreply@tidings.test"}
    assert body["content"] == [{"type": "text/html", "value": "<b>x</b>"}]


async def test_batch_of_1000_is_one_request(sink, provider):
    tasks = [task(i) for i in range(1000)]
    receipt = await provider.send_batch(tasks)
    assert (sink.requests, sink.recipients, sink.duplicates) == (1, 1000, 0)
    assert len(sink.notification_ids) == 1000 and receipt.message_id == sink.last_message_id
    assert [p["to"][0]["email"] for p in sink.bodies[0]["personalizations"]][:2] == ["user0@example.com",
                                                                                      "user1@example.com"]


async def test_resending_counts_duplicates(sink, provider):
    await provider.send_batch([task(1), task(2)])
    await provider.send(task(2))
    assert (sink.requests, sink.recipients, sink.duplicates) == (2, 3, 1)


async def test_batch_limits_and_mixed_content(sink, provider):
    assert provider.max_batch == 1000 and make(max_batch=5000).max_batch == 1000 and make(max_batch=10).max_batch == 10
    with pytest.raises(InvalidMessage, match="1001"):
        await provider.send_batch([task(i) for i in range(1001)])
    with pytest.raises(InvalidMessage, match="empty"):
        await provider.send_batch([])
    other = Content(subject="Your weekly digest", text="plain body", html="<p>different</p>")
    mixed = [task(0), task(1), task(2, content=Content(subject=CONTENT.subject, text=CONTENT.text,
                                                       html=CONTENT.html)), task(3, content=other)]
    with pytest.raises(InvalidMessage, match="task 3"):
        await provider.send_batch(mixed)
    with pytest.raises(InvalidMessage, match="max_batch 10"):
        await make(sink, max_batch=10).send_batch([task(i) for i in range(11)])
    assert sink.requests == 0 and sink.rejected == 0


@pytest.mark.parametrize("content, address, match", [
    (CONTENT, "Bob <bob@example.com>", "bare email"),
    (CONTENT, "", "bare email"),
    (Content(text="no subject"), "a@example.com", "subject"),
    (Content(subject="a\r\nBcc: x@y.z", text="t"), "a@example.com", "line break"),
    (Content(subject="no body"), "a@example.com", "text or html"),
])
async def test_invalid_messages_are_refused_before_sending(sink, provider, content, address, match):
    with pytest.raises(InvalidMessage, match=match):
        await provider.send(task(1, content=content, address=address))
    assert sink.requests == 0 and sink.rejected == 0


async def test_wrong_api_key_is_authentication_error_without_the_key(sink):
    wrong = "SG.wrong-key.d0nt-leak-me"
    p = make(sink, api_key=wrong)
    try:
        with pytest.raises(AuthenticationError) as info:
            await p.send(task())
    finally:
        await p.close()
    assert info.value.status == 401 and not info.value.retryable
    assert "authorization grant is invalid" in str(info.value)
    assert wrong not in str(info.value) and API_KEY not in str(info.value)
    assert sink.rejected == 1 and sink.requests == 0
    assert wrong not in repr(p.settings)


async def test_400_is_invalid_message_naming_the_field(sink, provider, monkeypatch):
    original = provider.payload

    def without_subject(tasks):
        doc = original(tasks)
        del doc["subject"]
        return doc

    monkeypatch.setattr(provider, "payload", without_subject)
    with pytest.raises(InvalidMessage) as info:
        await provider.send(task())
    assert info.value.status == 400 and not info.value.retryable
    assert "field subject" in str(info.value) and "subject is required" in str(info.value)
    assert sink.rejected == 1 and sink.requests == 0


async def test_429_is_rate_limited_until_the_reset(sink, provider):
    sink.fail_status = 429
    with pytest.raises(RateLimited) as info:
        await provider.send(task())
    assert info.value.status == 429 and info.value.retryable
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 2


def test_error_mapping_scrubs_the_api_key():
    p = make()
    err = p.error(400, {}, msgspec.json.encode({"errors": [{"message": f"bad key {API_KEY}", "field": "from"}]}))
    assert isinstance(err, InvalidMessage) and API_KEY not in str(err) and "field from" in str(err)
    err = p.error(502, {}, f"<html>{API_KEY}</html>".encode())
    assert isinstance(err, ProviderError) and API_KEY not in str(err) and "[redacted]" in str(err)


def test_rate_limit_reset_parsing():
    assert rate_limit_reset("1700000030", now=1_700_000_000.0) == 30.0
    assert rate_limit_reset("1699999990", now=1_700_000_000.0) == 0.0  # already past
    assert rate_limit_reset("5") == 5.0  # a delta, not an epoch
    assert rate_limit_reset("soon") is None and rate_limit_reset(None) is None


@pytest.mark.parametrize("status, error", [(503, ProviderError), (500, ProviderError), (403, AuthenticationError),
                                           (413, InvalidMessage)])
async def test_other_statuses(sink, provider, status, error):
    sink.fail_status, sink.fail_next = status, 1
    with pytest.raises(error) as info:
        await provider.send(task())
    assert type(info.value) is error and info.value.status == status
    assert str(info.value).startswith(f"sendgrid HTTP {status}")
    await provider.send(task())  # fail_next: only one failure
    assert (sink.failed, sink.requests) == (1, 1)


async def test_unreachable_port_is_network_error():
    p = make(base_url=f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(NetworkError) as info:
            await p.send(task())
    finally:
        await p.close()
    assert info.value.retryable and API_KEY not in str(info.value)


async def test_list_unsubscribe_for_marketing_not_for_security(sink):
    p = make(sink, unsubscribe_url="https://tidings.test/unsub?u={user_id}&c={category}&n={notification_id}")
    try:
        await p.send_batch([task(1, category="marketing", user_id="a b&c"), task(2, category="security")])
    finally:
        await p.close()
    marketing, security = sink.bodies[0]["personalizations"]
    assert marketing["headers"] == {
        "List-Unsubscribe": "<https://tidings.test/unsub?u=a%20b%26c&c=marketing&n=nid-1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert "headers" not in security


async def test_no_unsubscribe_headers_without_url(sink, provider):
    await provider.send(task(1, category="marketing"))
    assert "headers" not in sink.bodies[0]["personalizations"][0]


def test_configuration_errors():
    with pytest.raises(ConfigurationError, match="api_key"):
        SendGridProvider("sg", {"sender": "a@b.test"})
    with pytest.raises(ConfigurationError, match="sender"):
        SendGridProvider("sg", {"api_key": API_KEY})
    with pytest.raises(ConfigurationError, match="bad sender"):
        SendGridProvider("sg", {"api_key": API_KEY, "sender": "Two <a@b.test>, c@d.test"})
    with pytest.raises(ConfigurationError, match="base_url"):
        SendGridProvider("sg", {"api_key": API_KEY, "sender": "a@b.test", "base_url": "ftp://x"})
    with pytest.raises(ConfigurationError, match="max_batch"):
        SendGridProvider("sg", {"api_key": API_KEY, "sender": "a@b.test", "max_batch": 0})
    assert SendGridProvider("sg", {"api_key": API_KEY, "sender": "a@b.test"}).endpoint == \
        "https://api.sendgrid.com/v3/mail/send"


async def test_registry_creates_sendgrid_provider_and_send_starts_lazily(sink):
    p = create("sendgrid", "via-registry", {"api_key": API_KEY, "sender": "a@tidings.test", "base_url": sink.url})
    assert isinstance(p, SendGridProvider) and p.channel == "email" and p.name == "via-registry"
    try:
        await p.send(task())
    finally:
        await p.close()
    assert sink.requests == 1


# -- the sink itself, as SendGrid documents the API ---------------------------

def mail(n: int = 1, **overrides) -> dict:
    doc = {"personalizations": [{"to": [{"email": f"u{i}@example.com"}]} for i in range(n)],
           "from": {"email": "a@tidings.test"}, "subject": "s", "content": [{"type": "text/plain", "value": "t"}]}
    return {**doc, **overrides}


@pytest.mark.parametrize("body, field, message", [
    (b"not json", None, "Bad Request"),
    (mail(1001), "personalizations", "limited to 1000 personalizations"),
    (mail(personalizations=[]), "personalizations", "at least one personalization"),
    (mail(personalizations=[{"to": [{"email": f"u{i}@x.test"} for i in range(501)]}] * 2), "personalizations",
     "1000 total recipients"),
    (mail(personalizations=[{"to": []}]), "personalizations.0.to", "to array is required"),
    (mail(personalizations=[{"to": [{"email": "a@x.test"}]}, {"to": [{"name": "no email"}]}]),
     "personalizations.1.to.0.email", "valid address"),
    (mail(**{"from": {"name": "x"}}), "from", "from object"),
    (mail(subject=""), "subject", "subject is required"),
    (mail(content=[]), "content", "content parameter is required"),
    (mail(content=[{"type": "text/html", "value": "h"}, {"type": "text/plain", "value": "t"}]), "content",
     "text/plain, text/html"),
    (mail(content=[{"type": "text/plain", "value": ""}]), "content.0.value", "at least one character"),
])
async def test_sink_refuses_what_sendgrid_refuses(sink, body, field, message):
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sink.url}/v3/mail/send", data=data,
                                headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
            assert resp.status == 400
            error = (await resp.json())["errors"][0]
            assert error["field"] == field and message in error["message"]
        async with session.post(f"{sink.url}/v3/mail/send", data=msgspec.json.encode(mail(3))) as resp:
            assert resp.status == 401  # no Authorization header
        async with session.post(f"{sink.url}/v3/mail/send", data=msgspec.json.encode(mail(3)),
                                headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
            assert resp.status == 202 and await resp.read() == b"" and resp.headers["X-Message-Id"]
    assert (sink.rejected, sink.requests, sink.recipients) == (2, 1, 3)


def test_sink_process_speaks_sendgrid():
    proc = SinkProcess("sendgrid", secret=API_KEY).start()
    try:
        import asyncio

        async def go():
            p = make(base_url=proc.base_url)
            try:
                await p.send_batch([task(1), task(2)])
            finally:
                await p.close()

        asyncio.run(go())
    finally:
        final = proc.stop()
    assert final == {"sink": "sendgrid", "requests": 1, "recipients": 2, "duplicates": 0, "rejected": 0, "failed": 0}
