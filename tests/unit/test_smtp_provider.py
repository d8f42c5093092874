"""SmtpProvider against a real aiosmtpd server on loopback (sandbox.SmtpSink)."""

import asyncio

import pytest

from policy.types import Content, DeliveryTask
from providers.email.smtp import SmtpProvider
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidMessage,
    NetworkError,
    ProviderError,
    RateLimited,
)
from providers.registry import create
from sandbox import SmtpSink, free_port


def task(n: int = 1, *, category: str = "security", address: str = "user@example.com", **content) -> DeliveryTask:
    content = content or {"subject": f"Hello {n}", "text": "plain body", "html": "<p>html body</p>"}
    return DeliveryTask(
        notification_id=f"nid-{n}",
        user_id="u1",
        channel="email",
        category=category,
        address=address,
        content=Content(**content),
    )


@pytest.fixture
def sink():
    s = SmtpSink()
    s.start()
    yield s
    s.stop()


@pytest.fixture
async def provider(sink):
    p = SmtpProvider("smtp-test", {"host": "127.0.0.1", "port": sink.port, "sender": "noreply@tidings.test"})
    await p.start()
    yield p
    await p.close()


async def test_multipart_message_is_received_with_headers(sink, provider):
    receipt = await provider.send(task(7, category="security"))
    assert sink.count == 1
    got = sink.messages[0]
    assert got.rcpt_tos == ("user@example.com",)
    assert got.mail_from == "noreply@tidings.test"
    assert got.subject == "Hello 7"
    assert got.notification_id == "nid-7"
    assert got.content_type == "multipart/alternative"
    assert got.has_text and got.has_html
    assert receipt.message_id and receipt.message_id.endswith("@tidings.test>")
    assert got.headers["message-id"] == receipt.message_id
    assert got.headers["from"] == "noreply@tidings.test"
    assert "list-unsubscribe" not in got.headers  # security mail is transactional


async def test_text_only_and_html_only(sink, provider):
    await provider.send(task(1, subject="t", text="only text"))
    await provider.send(task(2, subject="h", html="<b>only html</b>"))
    text, html = sink.messages
    assert (text.content_type, text.has_text, text.has_html) == ("text/plain", True, False)
    assert (html.content_type, html.has_text, html.has_html) == ("text/html", False, True)


async def test_list_unsubscribe_for_marketing_not_for_security(sink):
    p = SmtpProvider(
        "smtp-test",
        {
            "port": sink.port,
            "sender": "news@tidings.test",
            "unsubscribe_url": "https://tidings.test/unsub?u={user_id}&c={category}",
        },
    )
    try:
        await p.send(task(1, category="marketing"))
        await p.send(task(2, category="security"))
    finally:
        await p.close()
    marketing, security = sink.messages
    assert marketing.headers["list-unsubscribe"] == "<https://tidings.test/unsub?u=u1&c=marketing>"
    assert marketing.headers["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
    assert "list-unsubscribe" not in security.headers
    assert "list-unsubscribe-post" not in security.headers


async def test_list_unsubscribe_mailto_has_no_one_click_post(sink):
    p = SmtpProvider("smtp-test", {"port": sink.port, "sender": "a@tidings.test", "unsubscribe_mailto": "unsub@tidings.test"})
    try:
        await p.send(task(1, category="digest"))
    finally:
        await p.close()
    headers = sink.messages[0].headers
    assert headers["list-unsubscribe"] == "<mailto:unsub@tidings.test>"
    assert "list-unsubscribe-post" not in headers


async def test_no_unsubscribe_settings_no_header(sink, provider):
    await provider.send(task(1, category="marketing"))
    assert "list-unsubscribe" not in sink.messages[0].headers


@pytest.mark.parametrize("stage", ["data", "rcpt"])
async def test_550_is_invalid_message(sink, provider, stage):
    sink.fail_with, sink.fail_stage = 550, stage
    with pytest.raises(InvalidMessage) as info:
        await provider.send(task())
    assert info.value.status == 550
    assert not info.value.retryable
    assert sink.count == 0


async def test_451_is_retryable_provider_error(sink, provider):
    sink.fail_with = 451
    with pytest.raises(ProviderError) as info:
        await provider.send(task())
    assert info.value.status == 451 and info.value.retryable
    assert not isinstance(info.value, RateLimited)
    # The connection survives an answered error: the next send reuses it.
    sink.fail_with = None
    await provider.send(task(2))
    assert sink.count == 1


async def test_451_mentioning_rate_limit_is_rate_limited(sink, provider):
    sink.fail_with, sink.fail_message = 451, "4.7.1 Rate limit exceeded, slow down"
    with pytest.raises(RateLimited) as info:
        await provider.send(task())
    assert info.value.status == 451


@pytest.mark.parametrize("code", [530, 535])
async def test_auth_codes_are_authentication_error(sink, provider, code):
    sink.fail_with, sink.fail_stage = code, "rcpt"
    with pytest.raises(AuthenticationError) as info:
        await provider.send(task())
    assert info.value.status == code and not info.value.retryable


async def test_idle_connection_is_probed_and_reused(sink):
    p = SmtpProvider("smtp-test", {"port": sink.port, "sender": "a@tidings.test", "idle_check_s": 0})
    try:
        for n in range(3):
            await p.send(task(n))
    finally:
        await p.close()
    assert (sink.count, sink.connections) == (3, 1)


async def test_connection_refused_is_network_error():
    p = SmtpProvider("smtp-test", {"port": free_port(), "sender": "a@tidings.test", "timeout_s": 2})
    try:
        with pytest.raises(NetworkError):
            await p.send(task())
    finally:
        await p.close()


async def test_server_gone_between_sends_is_network_error_then_reconnects():
    s = SmtpSink()
    s.start()
    p = SmtpProvider("smtp-test", {"port": s.port, "sender": "a@tidings.test", "timeout_s": 2})
    try:
        await p.send(task(1))
        s.stop()
        with pytest.raises(NetworkError):
            await p.send(task(2))
        s.start()  # same port again
        await p.send(task(3))
        assert s.count == 2
    finally:
        await p.close()
        s.stop()


def test_missing_sender_is_configuration_error():
    with pytest.raises(ConfigurationError, match="sender"):
        SmtpProvider("smtp-test", {"host": "127.0.0.1"})
    with pytest.raises(ConfigurationError, match="sender"):
        create("smtp", "smtp-test", {})
    with pytest.raises(ConfigurationError, match="sender"):
        SmtpProvider("smtp-test", {"sender": "not an address"})


async def test_display_name_sender_uses_bare_envelope_address(sink):
    p = SmtpProvider("smtp-test", {"port": sink.port, "sender": "Tidings <noreply@tidings.test>"})
    try:
        await p.send(task())
    finally:
        await p.close()
    got = sink.messages[0]
    assert got.mail_from == "noreply@tidings.test"
    assert got.headers["from"] == "Tidings <noreply@tidings.test>"


@pytest.mark.parametrize(
    "t",
    [
        task(address=""),
        task(address="   "),
        task(subject="s"),  # neither text nor html
        task(text="no subject"),
        task(address="victim@example.com\r\nBcc: x@example.com"),
        task(address="a@b.c> NOTIFY=SUCCESS"),
    ],
)
async def test_unsendable_tasks_are_invalid_message(sink, provider, t):
    with pytest.raises(InvalidMessage):
        await provider.send(t)
    assert sink.count == 0


async def test_connections_are_reused(sink):
    p = SmtpProvider("smtp-test", {"port": sink.port, "sender": "a@tidings.test", "pool_size": 2})
    try:
        for n in range(10):
            await p.send(task(n))
        await asyncio.gather(*(p.send(task(n)) for n in range(10, 20)))
    finally:
        await p.close()
    assert sink.count == 20
    assert sorted(m.notification_id for m in sink.messages) == sorted(f"nid-{n}" for n in range(20))
    assert 1 <= sink.connections <= 2


async def test_registry_creates_smtp_provider(sink):
    p = create("smtp", "via-registry", {"port": sink.port, "sender": "a@tidings.test"})
    assert isinstance(p, SmtpProvider) and p.name == "via-registry" and p.channel == "email"
    try:
        await p.send(task())
    finally:
        await p.close()
    assert sink.count == 1


def test_non_ascii_subject_and_sender_are_encoded():
    from email import message_from_bytes
    from email.header import decode_header, make_header

    p = SmtpProvider("enc", {"sender": "Jöbs Bot <noreply@jobs.test>"})
    msg = p.build_message(task(3, subject="Neue Stelle für Sie ✓", text="Hallo"))
    raw = msg.as_bytes()
    assert raw.isascii()
    parsed = message_from_bytes(raw)
    assert str(make_header(decode_header(parsed["Subject"]))) == "Neue Stelle für Sie ✓"
    assert str(make_header(decode_header(parsed["From"]))) == "Jöbs Bot <noreply@jobs.test>"


def test_line_break_in_subject_is_invalid():
    p = SmtpProvider("enc", {"sender": "noreply@jobs.test"})
    with pytest.raises(InvalidMessage):
        p.build_message(task(4, subject="hi\r\nBcc: victim@example.test", text="x"))


def test_a_subject_with_a_vertical_tab_is_invalid():
    p = SmtpProvider("enc", {"sender": "noreply@jobs.test"})
    with pytest.raises(InvalidMessage, match="control character"):
        p.build_message(task(4, subject="hi\x0bthere", text="x"))


async def test_a_message_that_cannot_be_built_is_invalid_not_a_provider_failure(sink, provider):
    # a lone surrogate cannot be encoded as UTF-8: the email package raises while building
    with pytest.raises(InvalidMessage, match="cannot build the message"):
        await provider.send(task(5, subject="s", text="bad \ud800 text"))
    assert sink.count == 0


async def test_a_serialization_error_is_invalid_message(sink, provider, monkeypatch):
    from email.errors import HeaderParseError

    class Unserializable:
        def __getitem__(self, name):
            return "<id@tidings.test>"

        def as_bytes(self, policy=None):
            raise HeaderParseError("header folding failed")

    monkeypatch.setattr(provider, "build_message", lambda t: Unserializable())
    with pytest.raises(InvalidMessage, match="header folding failed"):
        await provider.send(task(6))
    assert sink.count == 0


def test_the_password_is_not_kept_in_settings():
    from providers.email.smtp import SmtpProvider
    p = SmtpProvider("smtp", {"sender": "a@b.test", "username": "u", "password": "very-secret-value"})
    assert "very-secret-value" not in repr(p.settings) and p.password == "very-secret-value"
