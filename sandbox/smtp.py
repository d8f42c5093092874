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
