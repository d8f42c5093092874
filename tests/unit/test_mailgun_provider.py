"""MailgunProvider against a Mailgun messages-API look-alike on loopback (sandbox.mailgun.MailgunSink)."""

import base64

import aiohttp
import pytest
from aiohttp import web
from provider_helpers import EMAIL_CONTENT as CONTENT, email_task as task, pointed_at, serving, started

from engine.embedded import free_port
from policy.types import Content
from providers.email.mailgun import DEFAULT_BASE_URL, EU_BASE_URL, MailgunProvider, message_id
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidMessage,
    NetworkError,
    ProviderError,
    RateLimited,
)
from sandbox.mailgun import MailgunSink

API_KEY = "key-unit-test-mailgun-sup3rs3cret"
DOMAIN = "mg.tidings.test"


@pytest.fixture
async def sink():
    async with serving(MailgunSink(API_KEY, DOMAIN, keep_bodies=True)) as s:
        yield s


def make(sink: MailgunSink | None = None, **settings) -> MailgunProvider:
    base = {"api_key": API_KEY, "domain": DOMAIN, "sender": "Tidings <noreply@tidings.test>", "timeout_s": 2}
    return MailgunProvider("mg-test", pointed_at(sink, base, settings))


@pytest.fixture
async def provider(sink):
    async with started(make(sink)) as p:
        yield p


async def test_send_posts_the_documented_form_and_returns_the_id(sink, provider):
    receipt = await provider.send(task(1))
    assert (sink.requests, sink.recipients, sink.rejected, sink.duplicates) == (1, 1, 0, 0)
    assert sink.last_message_id is not None and sink.last_message_id.startswith("<")
    assert receipt.message_id == sink.last_message_id.strip("<>")  # as webhook events carry it
    assert sink.notification_ids == {"nid-1"}
    assert sink.bodies == [{
        "from": "Tidings <noreply@tidings.test>",
        "to": "user1@example.com",
        "subject": "Your weekly digest",
        "text": "plain body",
        "html": "<p>html body</p>",
        "o:tag": "digest",
        "v:notification_id": "nid-1",
        "v:user_id": "u1",
    }]


async def test_the_request_is_multipart_with_basic_auth(provider):
    seen = {}

    async def capture(request):
        seen["content_type"] = request.content_type
        seen["auth"] = request.headers.get("Authorization")
        seen["path"] = request.path
        form = await request.post()
        seen["fields"] = list(form.keys())
        return web.json_response({"id": "<x@y>", "message": "Queued. Thank you."})

    app = web.Application()
    app.router.add_post("/v3/{domain}/messages", capture)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    p = make(base_url=f"http://127.0.0.1:{port}", unsubscribe_url="https://t.test/u?n={notification_id}")
    try:
        assert (await p.send(task(1, category="marketing"))).message_id == "x@y"
    finally:
        await p.close()
        await runner.cleanup()
    assert seen["content_type"] == "multipart/form-data"
    assert seen["auth"] == "Basic " + base64.b64encode(f"api:{API_KEY}".encode()).decode()
    assert seen["path"] == f"/v3/{DOMAIN}/messages"
    assert "h:List-Unsubscribe" in seen["fields"] and "h:List-Unsubscribe-Post" in seen["fields"]


async def test_html_only_bare_sender_and_quoted_display_name(sink):
    p = make(sink, sender="noreply@tidings.test")
    q = make(sink, sender="Tidings, Inc <noreply@tidings.test>")
    try:
        await p.send(task(1, content=Content(subject="s", html="<b>x</b>")))
        await q.send(task(2))
    finally:
        await p.close()
        await q.close()
    assert sink.bodies[0]["from"] == "noreply@tidings.test"
    assert "text" not in sink.bodies[0] and sink.bodies[0]["html"] == "<b>x</b>"
    assert sink.bodies[1]["from"] == '"Tidings, Inc" <noreply@tidings.test>'


async def test_resending_counts_duplicates(sink, provider):
    await provider.send(task(1))
    await provider.send(task(2))
    await provider.send(task(2))
    assert (sink.requests, sink.recipients, sink.duplicates) == (3, 3, 1)


@pytest.mark.parametrize("content, address, match", [
    (CONTENT, "Bob <bob@example.com>", "bare email"),
    (CONTENT, "", "bare email"),
    (CONTENT, "a@example.com, b@example.com", "bare email"),
    (Content(text="no subject"), "a@example.com", "subject"),
    (Content(subject="a\r\nBcc: x@y.z", text="t"), "a@example.com", "line break"),
    (Content(subject="no body"), "a@example.com", "text or html"),
])
async def test_invalid_messages_are_refused_before_sending(sink, provider, content, address, match):
    with pytest.raises(InvalidMessage, match=match):
        await provider.send(task(1, content=content, address=address))
    assert sink.requests == 0 and sink.rejected == 0


async def test_wrong_api_key_is_authentication_error_without_the_key(sink):
    wrong = "key-wrong-d0nt-leak-me"
    p = make(sink, api_key=wrong)
    try:
        with pytest.raises(AuthenticationError) as info:
            await p.send(task())
    finally:
        await p.close()
    assert info.value.status == 401 and not info.value.retryable
    assert "Forbidden" in str(info.value)
    assert wrong not in str(info.value) and API_KEY not in str(info.value)
    assert sink.rejected == 1 and sink.requests == 0
    assert wrong not in repr(p.settings) and p.settings["api_key"] == "[redacted]"


async def test_unknown_domain_is_configuration_error(sink):
    p = make(sink, domain="other.tidings.test")
    try:
        with pytest.raises(ConfigurationError) as info:
            await p.send(task())
    finally:
        await p.close()
    assert info.value.status == 404 and not info.value.retryable
    assert "Domain not found: other.tidings.test" in str(info.value) and "other.tidings.test" in str(info.value)
    assert sink.rejected == 1


async def test_400_is_invalid_message_with_mailguns_message(sink, provider, monkeypatch):
    original = provider.fields

    def without_to(t):
        return [(k, v) for k, v in original(t) if k != "to"]

    monkeypatch.setattr(provider, "fields", without_to)
    with pytest.raises(InvalidMessage) as info:
        await provider.send(task())
    assert info.value.status == 400 and not info.value.retryable
    assert str(info.value) == "mailgun HTTP 400: 'to' parameter is missing"
    assert sink.rejected == 1 and sink.requests == 0


async def test_429_is_rate_limited_with_retry_after(sink, provider):
    sink.fail_status, sink.retry_after = 429, "7"
    with pytest.raises(RateLimited) as info:
        await provider.send(task())
    assert info.value.status == 429 and info.value.retryable and info.value.retry_after == 7.0


@pytest.mark.parametrize("status, error", [(500, ProviderError), (502, ProviderError), (503, ProviderError),
                                           (403, AuthenticationError), (413, InvalidMessage)])
async def test_other_statuses(sink, provider, status, error):
    sink.fail_status, sink.fail_next = status, 1
    with pytest.raises(error) as info:
        await provider.send(task())
    assert type(info.value) is error and info.value.status == status
    assert str(info.value).startswith(f"mailgun HTTP {status}")
    await provider.send(task())  # fail_next: only one failure
    assert (sink.failed, sink.requests) == (1, 1)


def test_error_mapping_scrubs_the_api_key():
    p = make()
    err = p.error(400, {}, f'{{"message": "bad key {API_KEY}"}}'.encode())
    assert isinstance(err, InvalidMessage) and API_KEY not in str(err) and "[redacted]" in str(err)
    err = p.error(502, {}, f"<html>{API_KEY}</html>".encode())
    assert isinstance(err, ProviderError) and API_KEY not in str(err)
    err = p.error(404, {}, f'{{"message": "nothing for {API_KEY}"}}'.encode())
    assert isinstance(err, ConfigurationError) and API_KEY not in str(err)


def test_message_id_parsing():
    assert message_id(b'{"id": "<20240101.abc@mg.test>", "message": "Queued. Thank you."}') == "20240101.abc@mg.test"
    assert message_id(b'{"id": "plain@mg.test"}') == "plain@mg.test"
    assert message_id(b"not json") is None and message_id(b'{"id": ""}') is None and message_id(b"[1]") is None


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
        await p.send(task(1, category="marketing", user_id="a b&c"))
        await p.send(task(2, category="security"))
    finally:
        await p.close()
    marketing, security = sink.bodies
    assert marketing["h:List-Unsubscribe"] == "<https://tidings.test/unsub?u=a%20b%26c&c=marketing&n=nid-1>"
    assert marketing["h:List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert not any(k.startswith("h:") for k in security)
    assert security["o:tag"] == "security"


async def test_transactional_categories_setting(sink):
    p = make(sink, unsubscribe_url="https://tidings.test/u", transactional_categories=["digest"])
    try:
        await p.send(task(1, category="digest"))
        await p.send(task(2, category="security"))
    finally:
        await p.close()
    assert "h:List-Unsubscribe" not in sink.bodies[0] and "h:List-Unsubscribe" in sink.bodies[1]


async def test_no_unsubscribe_headers_without_url(sink, provider):
    await provider.send(task(1, category="marketing"))
    assert not any(k.startswith("h:") for k in sink.bodies[0])


def test_configuration_errors():
    with pytest.raises(ConfigurationError, match="api_key"):
        MailgunProvider("mg", {"domain": DOMAIN, "sender": "a@b.test"})
    with pytest.raises(ConfigurationError, match="domain"):
        MailgunProvider("mg", {"api_key": API_KEY, "sender": "a@b.test"})
    with pytest.raises(ConfigurationError, match="domain"):
        MailgunProvider("mg", {"api_key": API_KEY, "domain": "a/b", "sender": "a@b.test"})
    with pytest.raises(ConfigurationError, match="sender"):
        MailgunProvider("mg", {"api_key": API_KEY, "domain": DOMAIN})
    with pytest.raises(ConfigurationError, match="bad sender"):
        MailgunProvider("mg", {"api_key": API_KEY, "domain": DOMAIN, "sender": "Two <a@b.test>, c@d.test"})
    with pytest.raises(ConfigurationError, match="base_url"):
        MailgunProvider("mg", {"api_key": API_KEY, "domain": DOMAIN, "sender": "a@b.test", "base_url": "ftp://x"})
    p = MailgunProvider("mg", {"api_key": API_KEY, "domain": DOMAIN, "sender": "a@b.test"})
    assert p.endpoint == f"{DEFAULT_BASE_URL}/v3/{DOMAIN}/messages" and p.channel == "email"
    eu = MailgunProvider("mg", {"api_key": API_KEY, "domain": DOMAIN, "sender": "a@b.test", "base_url": EU_BASE_URL})
    assert eu.endpoint == f"https://api.eu.mailgun.net/v3/{DOMAIN}/messages"


# -- the sink itself, as Mailgun documents the API ----------------------------

def form(**fields) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for key, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            data.add_field(key.replace("__", ":"), v)
    return data


GOOD = {"from": "a@tidings.test", "to": "u@example.com", "subject": "s", "text": "t"}


@pytest.mark.parametrize("fields, message", [
    ({k: v for k, v in GOOD.items() if k != "from"}, "'from' parameter is missing"),
    ({**GOOD, "from": "not an address"}, "'from' parameter is not a valid address"),
    ({k: v for k, v in GOOD.items() if k != "to"}, "'to' parameter is missing"),
    ({**GOOD, "to": "nobody"}, "'to' parameter is not a valid address"),
    ({"from": "a@tidings.test", "to": "u@example.com", "subject": "s"}, "Need at least one of 'text', 'html'"),
    ({**GOOD, "to": ", ".join(f"u{i}@example.com" for i in range(1001))}, "Too many recipients"),
])
async def test_sink_refuses_what_mailgun_refuses(sink, fields, message):
    auth = aiohttp.BasicAuth("api", API_KEY)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sink.url}/v3/{DOMAIN}/messages", data=form(**fields), auth=auth) as resp:
            assert resp.status == 400
            assert message in (await resp.json())["message"]
        async with session.post(f"{sink.url}/v3/{DOMAIN}/messages", data=form(**GOOD)) as resp:
            assert resp.status == 401 and await resp.text() == "Forbidden"  # no Authorization header
        async with session.post(f"{sink.url}/v3/{DOMAIN}/messages", data=form(**GOOD),
                                auth=aiohttp.BasicAuth("api", "wrong")) as resp:
            assert resp.status == 401
        async with session.post(f"{sink.url}/v3/nope.test/messages", data=form(**GOOD), auth=auth) as resp:
            assert resp.status == 404 and (await resp.json())["message"] == "Domain not found: nope.test"
        async with session.post(f"{sink.url}/v3/{DOMAIN}/messages", auth=auth,
                                data=form(**{**GOOD, "to": ["x@example.com", "Y <y@example.com>, z@example.com"],
                                             "v__notification_id": "n1"})) as resp:
            doc = await resp.json()
            assert resp.status == 200 and doc["message"] == "Queued. Thank you."
            assert doc["id"].startswith("<") and doc["id"].endswith(f"@{DOMAIN}>")
        async with session.post(f"{sink.url}/v3/{DOMAIN}/messages", auth=auth, data=GOOD) as resp:
            assert resp.status == 200  # urlencoded forms are accepted too
    assert (sink.rejected, sink.requests, sink.recipients) == (4, 2, 4)
    assert sink.notification_ids == {"n1"} and sink.bodies[0]["to"] == ["x@example.com",
                                                                          "Y <y@example.com>, z@example.com"]
    assert sink.stats() == {"sink": "mailgun", "requests": 2, "recipients": 4, "duplicates": 0, "rejected": 4,
                            "failed": 0}
