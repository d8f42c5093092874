"""SMTP bounces through a running engine: mail goes out to the loopback SMTP server
with a VERP envelope sender; the delivery reports (RFC 3464) and feedback-loop
complaints (RFC 5965) a receiving system would write about it are sent over SMTP
to the engine's bounce listener, which moves the rows and suppresses the
addresses; forged, foreign and stray mail changes nothing."""

from __future__ import annotations

import asyncio
import uuid

import aiosmtplib
import msgspec
import pytest

from engine import bounces
from infra.config import BouncesConfig, ChannelConfig, ProviderConfig
from policy.types import UserProfile
from sandbox.smtp import SmtpSink, delivery_report, feedback_report
from tests.integration.helpers import engine_config, row_status, send_email, serving

pytestmark = pytest.mark.integration

DOMAIN = "bounces.tidings.test"
USERS = tuple(f"sb{i}" for i in range(1, 12))


@pytest.fixture(scope="module")
def sink():
    s = SmtpSink()
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, sink, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), channels=())
    email = ChannelConfig(providers=[ProviderConfig(name="smtp", type="smtp", max_attempts=1, settings={
        "port": sink.port, "sender": "Tidings <noreply@tidings.test>", "bounce_domain": DOMAIN,
        "bounce_secret": "tidings-bounce-test-secret"})])
    cfg = msgspec.structs.replace(cfg, channels={"email": email}, bounces=BouncesConfig(listen="127.0.0.1:0"))
    people = [UserProfile(user_id=u, addresses={"email": f"{u}@example.org"}) for u in USERS]
    async with serving(cfg, database_url, people) as eng:
        server = await bounces.serve(eng)
        eng.bounce_port = server.port
        eng.bounce_handler = server.handler
        try:
            yield eng
        finally:
            await server.close()


async def send(engine, sink, user: str):
    """One email to ``user``; its notification id and the mail as the server got it."""
    nid = await send_email(engine, user, "orders", "Your order", "It shipped")
    mail = next((m for m in reversed(sink.messages) if m.notification_id == nid), None)
    return nid, mail


async def deliver(engine, raw: bytes, to: str) -> tuple[int, str]:
    """Send ``raw`` to the bounce listener as a reporting MTA does (null sender);
    the listener's answer to DATA, or to RCPT when it refused the recipient."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=engine.bounce_port, local_hostname="mx.example.org",
                           timeout=10)
    await smtp.connect()
    try:
        await smtp.mail("")
        await smtp.rcpt(to)
        response = await smtp.data(raw)
        return response.code, response.message
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        smtp.close()


async def timeline(engine, nid: str) -> str:
    return await engine.pool.fetchval("SELECT timeline::text FROM delivery_tracking WHERE notification_id = $1",
                                      uuid.UUID(nid))


async def test_mail_goes_out_with_a_verp_sender_and_message_id(engine, sink):
    nid, mail = await send(engine, sink, "sb1")
    token = uuid.UUID(nid).hex
    assert mail.mail_from.startswith(f"bounce+{token}.") and mail.mail_from.endswith("@" + DOMAIN)
    assert mail.headers["message-id"].startswith(f"<{token}.")


async def test_a_hard_bounce_marks_the_row_and_suppresses_the_address(engine, sink):
    nid, mail = await send(engine, sink, "sb2")
    code, text = await deliver(engine, delivery_report(mail), mail.mail_from)
    assert code == 250, text
    assert await row_status(engine, nid, "bounced") == ("bounced", "bounce")
    await asyncio.sleep(0.5)  # the shard reloads the suppressed user after the commit
    again, _ = await send(engine, sink, "sb2")
    assert await row_status(engine, again) == ("suppressed", "suppression.bounce")


async def test_soft_failures_and_delays_do_not_suppress(engine, sink):
    nid, mail = await send(engine, sink, "sb3")
    delayed = delivery_report(mail, "delayed", "4.4.1", "smtp; 451 4.4.1 try later")
    assert (await deliver(engine, delayed, mail.mail_from))[0] == 250
    assert await row_status(engine, nid) == ("sent", "ok")
    assert "4.4.1" in await timeline(engine, nid)
    gave_up = delivery_report(mail, "failed", "4.2.2", "smtp; 452 4.2.2 mailbox full")
    assert (await deliver(engine, gave_up, mail.mail_from))[0] == 250
    assert (await row_status(engine, nid, "failed"))[0] == "failed"
    await asyncio.sleep(0.3)
    again, _ = await send(engine, sink, "sb3")
    assert await row_status(engine, again) == ("sent", "ok")


async def test_a_complaint_found_by_the_quoted_message_id(engine, sink):
    nid, mail = await send(engine, sink, "sb4")
    # feedback loops write to their registered address, not the VERP one: the quoted Message-ID names the mail
    code, text = await deliver(engine, feedback_report(mail), f"fbl@{DOMAIN}")
    assert code == 250, text
    assert await row_status(engine, nid, "complained") == ("complained", "complaint")
    await asyncio.sleep(0.5)
    again, _ = await send(engine, sink, "sb4")
    assert await row_status(engine, again) == ("suppressed", "suppression.complaint")


async def test_a_redacted_complaint_moves_the_row_only(engine, sink):
    nid, mail = await send(engine, sink, "sb5")
    assert (await deliver(engine, feedback_report(mail, redacted=True), f"fbl@{DOMAIN}"))[0] == 250
    assert (await row_status(engine, nid, "complained"))[0] == "complained"
    await asyncio.sleep(0.3)
    again, _ = await send(engine, sink, "sb5")
    assert await row_status(engine, again) == ("sent", "ok")


async def test_a_report_cannot_suppress_someone_else(engine, sink):
    """sb6's recipient reports a bounce naming sb7's address: sb6's row moves
    (the report is about sb6's mail), sb7 stays reachable."""
    nid, mail = await send(engine, sink, "sb6")
    forged = delivery_report(mail, recipient="sb7@example.org")
    assert (await deliver(engine, forged, mail.mail_from))[0] == 250
    assert (await row_status(engine, nid, "bounced"))[0] == "bounced"
    await asyncio.sleep(0.3)
    other, _ = await send(engine, sink, "sb7")
    assert await row_status(engine, other) == ("sent", "ok")


async def test_forged_foreign_and_stray_mail_changes_nothing(engine, sink):
    nid, mail = await send(engine, sink, "sb8")
    token = uuid.UUID(nid).hex
    forged_to = f"bounce+{token}.aaaaaaaaaaaaaaaa@{DOMAIN}"
    forged = delivery_report(mail).replace(mail.headers["message-id"].encode(), b"<nothing@tidings.test>")
    code, _ = await deliver(engine, forged, forged_to)
    assert code == 550
    # not a mailbox of ours: refused at RCPT, nothing read
    code, _ = await deliver(engine, delivery_report(mail), "postmaster@elsewhere.example")
    assert code == 550
    # an auto-reply to the bounce address is taken and dropped
    reply = (b"From: sb8@example.org\r\nTo: " + mail.mail_from.encode() + b"\r\nSubject: Out of office\r\n\r\n"
             b"I am away.\r\n")
    assert (await deliver(engine, reply, mail.mail_from))[0] == 250
    # what the email package cannot make sense of is not a report either
    assert (await deliver(engine, b"\x00\xff garbage\r\n\r\n--\r\n", mail.mail_from))[0] == 250
    assert await row_status(engine, nid) == ("sent", "ok")
    counts = engine.bounce_handler.counts
    assert counts["unmatched"] >= 1 and counts["not_reports"] >= 2


async def test_hostile_reports_are_answered_and_change_nothing(engine, sink):
    nid, mail = await send(engine, sink, "sb9")
    # thousands of empty MIME parts: refused before any parsing
    many = b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n" + b"--B\r\n\r\n" * 3000
    assert (await deliver(engine, many, mail.mail_from))[0] == 554
    # an 8-bit byte in the quoted Message-ID (compat32 hands back a Header object): answered, not a 500
    mid = mail.headers["message-id"]
    eight_bit = feedback_report(mail).replace(f"Message-ID: {mid}".encode(), f"Message-ID: <café.{mid[1:]}".encode())
    assert "café".encode() in eight_bit
    code, _ = await deliver(engine, eight_bit, f"fbl@{DOMAIN}")
    assert code == 250  # the token is still in it: a complaint, applied
    assert (await row_status(engine, nid, "complained"))[0] == "complained"
    # a NUL in the feedback type is stored as a fixed word, never reaching PostgreSQL
    nul = feedback_report(mail, "not\x00spam")
    assert (await deliver(engine, nul, f"fbl@{DOMAIN}"))[0] == 250
    assert '"feedback"' in await timeline(engine, nid)
    # over max_bytes: refused by size
    big = delivery_report(mail) + (b"x" * 98 + b"\r\n") * 3100
    assert (await deliver(engine, big, mail.mail_from))[0] == 552


async def test_a_policy_block_is_not_a_hard_bounce(engine, sink):
    nid, mail = await send(engine, sink, "sb10")
    blocked = delivery_report(mail, "failed", "5.7.1", "smtp; 550 5.7.1 message rejected as spam")
    assert (await deliver(engine, blocked, mail.mail_from))[0] == 250
    assert (await row_status(engine, nid, "failed"))[0] == "failed"
    await asyncio.sleep(0.3)
    again, _ = await send(engine, sink, "sb10")
    assert await row_status(engine, again) == ("sent", "ok")


async def test_one_recipients_failure_never_stands_for_another(engine, sink):
    """A DSN whose first block is a permanent failure at some other address
    (an alias target) and whose second is a delay at the user's own: nothing
    is suppressed."""
    nid, mail = await send(engine, sink, "sb11")
    raw = delivery_report(mail).replace(
        b"Final-Recipient: rfc822; sb11@example.org\r\nOriginal-Recipient: rfc822;sb11@example.org\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\n",
        b"Final-Recipient: rfc822; alias-target@corp.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        b"Final-Recipient: rfc822; sb11@example.org\r\nAction: delayed\r\nStatus: 4.4.1\r\n")
    assert (await deliver(engine, raw, mail.mail_from))[0] == 250
    assert (await row_status(engine, nid, "bounced"))[0] == "bounced"
    await asyncio.sleep(0.3)
    again, _ = await send(engine, sink, "sb11")
    assert await row_status(engine, again) == ("sent", "ok")
