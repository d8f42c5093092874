"""The loopback SMTP server (aiosmtpd) the demo, tests and benchmark send email to."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller

from sandbox.ports import free_port


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """One message as the SMTP sink saw it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str | None
    notification_id: str | None
    has_text: bool
    has_html: bool
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    html: str | None = None  # the text/html part, decoded
    text: str | None = None  # the text/plain part, decoded
    raw: bytes = b""  # the message as transmitted (dot-stuffing undone)


class SmtpSink:
    """An SMTP server on a background thread that accepts every message.

    ``count`` counts accepted messages; ``messages`` holds a ReceivedMail for
    each when ``keep_messages`` (parsing is skipped otherwise, to stay cheap
    under benchmark load); ``connections`` counts distinct client connections.
    Set ``fail_with`` to an SMTP code (e.g. 451, 550) to answer it instead of
    250, at ``fail_stage`` "data" (default) or "rcpt"; ``fail_message`` sets the
    text after the code.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, keep_messages: bool = True):
        self.host = host
        self.port = port
        self.keep_messages = keep_messages
        self.messages: list[ReceivedMail] = []
        self.count = 0
        self.failed = 0
        self.fail_with: int | None = None
        self.fail_stage = "data"
        self.fail_message: str | None = None
        self._peers: set[tuple] = set()
        self._controller: Controller | None = None

    @property
    def connections(self) -> int:
        return len(self._peers)

    def start(self) -> None:
        """Listen on ``host:port`` (a free port when ``port`` is 0); blocks
        until the server answers."""
        if self._controller is not None:
            return
        if self.port == 0:
            self.port = free_port(self.host)
        # server_hostname avoids socket.getfqdn() (a DNS lookup) per connection.
        self._controller = Controller(self, hostname=self.host, port=self.port, server_hostname="tidings-sink")
        self._controller.start()

    def stop(self) -> None:
        """Stop listening and drop open connections (idempotent)."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def stats(self) -> dict:
        return {"sink": "smtp", "count": self.count, "connections": self.connections, "failed": self.failed}

    def _failure(self) -> str:
        self.failed += 1
        code = self.fail_with
        text = self.fail_message or ("Try again later" if code is not None and code < 500 else "Mailbox unavailable")
        return f"{code} {text}"

    # aiosmtpd handler hooks; they run on the controller's thread.

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.fail_with is not None and self.fail_stage == "rcpt":
            return self._failure()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.fail_with is not None and self.fail_stage == "data":
            return self._failure()
        self._peers.add(session.peer)
        if self.keep_messages:
            self.messages.append(self._parse(envelope))
        self.count += 1
        return "250 OK"

    @staticmethod
    def _parse(envelope) -> ReceivedMail:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        types = {part.get_content_type() for part in msg.walk()}
        html = msg.get_body(("html",))
        plain = msg.get_body(("plain",))
        return ReceivedMail(
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            subject=msg["Subject"],
            notification_id=msg["Tidings-Notification-Id"],
            has_text="text/plain" in types,
            has_html="text/html" in types,
            content_type=msg.get_content_type(),
            headers={k.lower(): str(v) for k, v in msg.items()},
            html=html.get_content() if html is not None else None,
            text=plain.get_content() if plain is not None else None,
            raw=envelope.original_content or b"",
        )


# -- what a receiving mail system sends back --------------------------------


def _report(report_type: str, human: str, fields: bytes, quoted_headers: bytes, sender: str, to: str) -> bytes:
    """A ``multipart/report`` as MTAs and feedback loops write it: the words for
    people, the machine-readable part, the original's headers."""
    from email.utils import formatdate, make_msgid

    boundary = make_msgid(domain="mx.example.org").strip("<>").replace("@", "/")
    parts = [b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + human.replace("\n", "\r\n").encode(),
             f"Content-Type: message/{report_type}\r\n\r\n".encode() + fields,
             b"Content-Type: text/rfc822-headers\r\n\r\n" + quoted_headers]
    head = (f"From: {sender}\r\nTo: {to}\r\nSubject: {human.splitlines()[0]}\r\n"
            f"Date: {formatdate(usegmt=True)}\r\nMessage-ID: {make_msgid(domain='mx.example.org')}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type={report_type};\r\n"
            f"\tboundary=\"{boundary}\"\r\n\r\n").encode()
    sep = f"--{boundary}\r\n".encode()
    return head + b"".join(sep + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()


def _headers_of(mail: ReceivedMail) -> bytes:
    head, _, _ = mail.raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    return head.replace(b"\n", b"\r\n") + b"\r\n"


def delivery_report(mail: ReceivedMail, action: str = "failed", status: str = "5.1.1",
                    diagnostic: str = "smtp; 550 5.1.1 user unknown", recipient: str | None = None) -> bytes:
    """The DSN (RFC 3464) a receiving MTA sends to ``mail``'s envelope sender."""
    rcpt = recipient or mail.rcpt_tos[0]
    fields = (f"Reporting-MTA: dns; mx.example.org\r\nArrival-Date: Thu, 3 Dec 2026 10:00:00 +0000\r\n\r\n"
              f"Final-Recipient: rfc822; {rcpt}\r\nOriginal-Recipient: rfc822;{rcpt}\r\nAction: {action}\r\n"
              f"Status: {status}\r\nDiagnostic-Code: {diagnostic}\r\n").encode()
    return _report("delivery-status", "Undelivered Mail Returned to Sender\n\nThe mail system could not deliver it.\n",
                   fields, _headers_of(mail), "MAILER-DAEMON@mx.example.org", mail.mail_from)


def feedback_report(mail: ReceivedMail, feedback_type: str = "abuse", recipient: str | None = None,
                    redacted: bool = False) -> bytes:
    """The ARF complaint (RFC 5965) a mailbox provider's feedback loop sends; with
    ``redacted`` the recipient is left out, as many loops do."""
    rcpt = "" if redacted else f"Original-Rcpt-To: {recipient or mail.rcpt_tos[0]}\r\n"
    fields = (f"Feedback-Type: {feedback_type}\r\nUser-Agent: ExampleFBL/1.0\r\nVersion: 1\r\n"
              f"Original-Mail-From: <{mail.mail_from}>\r\n{rcpt}"
              f"Arrival-Date: Thu, 3 Dec 2026 10:00:00 +0000\r\n").encode()
    quoted = _headers_of(mail)
    if redacted:
        quoted = b"".join(line for line in quoted.splitlines(keepends=True) if not line.lower().startswith(b"to:"))
    return _report("feedback-report", "This is an email abuse report.\n", fields, quoted,
                   "fbl@mail.example.org", "fbl@bounces.tidings.test")
