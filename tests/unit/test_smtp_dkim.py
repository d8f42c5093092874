"""DKIM-signed SMTP mail, checked by an independent verifier: Perl's Mail::DKIM
(tests/tools/dkim_verify.pl) reads what the loopback SMTP server received."""

import os
import shutil
import subprocess
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings, strategies as st

from policy.types import Content, DeliveryTask
from providers.email.dkim import DkimSigner
from providers.email.smtp import SmtpProvider
from providers.errors import ConfigurationError
from sandbox import SmtpSink

VERIFIER = Path(__file__).parents[1] / "tools" / "dkim_verify.pl"


def pem(bits: int = 2048) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


KEY = pem()


def verify(raw: bytes, record: str) -> str:
    """Mail::DKIM's result for the first signature of ``raw``."""
    if shutil.which("perl") is None or subprocess.run(["perl", "-MMail::DKIM::Verifier", "-e", "1"],
                                                      capture_output=True).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("Mail::DKIM is not installed: install.sh installs Debian's libmail-dkim-perl")
        pytest.skip("Mail::DKIM is not installed (apt-get install libmail-dkim-perl)")
    out = subprocess.run(["perl", str(VERIFIER)], input=raw, capture_output=True, timeout=30,
                         env={"DKIM_TXT": record, "PATH": os.environ.get("PATH", "")})
    assert out.returncode == 0, out.stderr.decode()[-500:]
    return out.stdout.decode().strip()


def task(category: str = "marketing", subject: str = "Your weekly digest") -> DeliveryTask:
    return DeliveryTask(notification_id="0f8fad5b-d9cb-469f-a165-70867728950e", user_id="u1", channel="email",
                        category=category, address="person@example.org",
                        content=Content(subject=subject, text="plain body\n" * 30, html="<p>html body</p>"))


@pytest.fixture
def sink():
    s = SmtpSink()
    s.start()
    yield s
    s.stop()


def provider(sink, **extra) -> SmtpProvider:
    return SmtpProvider("smtp-dkim", {"port": sink.port, "sender": "Tidings <news@tidings.test>",
                                      "unsubscribe_url": "https://tidings.test/unsub?u={user_id}",
                                      "dkim_private_key": KEY, "dkim_selector": "mail2026", **extra})


async def test_sent_mail_verifies_with_the_unsubscribe_headers_signed(sink):
    p = provider(sink)
    try:
        await p.send(task())
        await p.send(task("security", subject="Ünïcode sign-in code"))
    finally:
        await p.close()
    record = p.dkim.public_record()
    marketing, security = sink.messages
    assert verify(marketing.raw, record) == "pass"
    assert verify(security.raw, record) == "pass"
    fields = dkim.util.parse_tag_value(marketing.headers["dkim-signature"].encode())
    assert fields[b"d"] == b"tidings.test" and fields[b"s"] == b"mail2026"
    signed = [h.strip() for h in fields[b"h"].decode().split(":")]
    # present once, signed twice: a second copy added in transit breaks the signature
    assert signed.count("list-unsubscribe") == 2 and signed.count("list-unsubscribe-post") == 2
    assert signed.count("from") == 2 and signed.count("date") == 2 and signed.count("sender") == 1
    assert "tidings-notification-id" in signed


async def test_what_is_changed_or_added_in_transit_fails(sink):
    p = provider(sink)
    try:
        await p.send(task())
    finally:
        await p.close()
    raw, record = sink.messages[0].raw, p.dkim.public_record()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert verify(head + b"\r\n\r\n" + body.replace(b"plain", b"plane", 1), record).startswith("fail")
    assert verify(raw.replace(b"Subject: Your weekly", b"Subject: Our weekly"), record).startswith("fail")
    for extra in (b"List-Unsubscribe: <https://evil.example/u>", b"Content-Type: text/html", b"Sender: x@evil.example",
                  b"Date: Thu, 1 Jan 2026 00:00:00 +0000"):
        assert verify(head + b"\r\n" + extra + b"\r\n\r\n" + body, record).startswith("fail"), extra
    other = DkimSigner("tidings.test", "mail2026", pem())
    assert verify(raw, other.public_record()).startswith("fail")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=120),
       body=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=400))
def test_any_content_verifies_with_dkimpy(subject, body):
    """Whatever the content, the message as sent verifies (dkimpy's verifier here:
    quick enough for many examples; the Perl one above is the independent check)."""
    p = SmtpProvider("smtp-dkim", {"sender": "news@tidings.test", "dkim_private_key": KEY, "dkim_selector": "s"})
    t = DeliveryTask(notification_id="n", user_id="u", channel="email", category="marketing",
                     address="a@example.org", content=Content(subject=subject.strip() or "x", text=body))
    try:
        message = p.build_message(t)
    except Exception:  # noqa: BLE001 - content the email rules refuse is not a signing question
        return
    from providers.email.smtp import WIRE

    raw = p.dkim.sign(message.as_bytes(policy=WIRE))
    record = p.dkim.public_record().encode()
    assert dkim.verify(raw, dnsfunc=lambda name, timeout=5: record)


@pytest.mark.parametrize("settings_, words", [
    ({"dkim_private_key": "not a key", "dkim_selector": "s"}, "dkim_private_key"),
    ({"dkim_private_key": KEY}, "dkim_selector"),
    ({"dkim_private_key": "", "dkim_selector": "s"}, "without a dkim_private_key"),
    ({"dkim_selector": "s", "dkim_domain": "tidings.test"}, "without a dkim_private_key"),
    ({"dkim_private_key": KEY, "dkim_selector": "s", "dkim_domain": "bad domain"}, "dkim_domain"),
    ({"dkim_private_key": ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
      "dkim_selector": "s"}, "must be RSA"),
])
def test_bad_dkim_settings_are_configuration_errors_without_the_key(settings_, words):
    with pytest.raises(ConfigurationError) as err:
        SmtpProvider("smtp-dkim", {"sender": "news@tidings.test", **settings_})
    assert words in str(err.value)
    assert "PRIVATE KEY" not in str(err.value) and "not a key" not in str(err.value)


def test_the_key_is_not_kept_in_settings():
    p = SmtpProvider("smtp-dkim", {"sender": "news@tidings.test", "dkim_private_key": KEY, "dkim_selector": "s"})
    assert "PRIVATE" not in repr(p.settings)
