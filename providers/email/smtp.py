"""Email over SMTP with aiosmtplib, through a small pool of persistent connections.

Settings (a dict, usually from the providers config):

- ``sender`` (required): the From address.
- ``host`` ("127.0.0.1"), ``port`` (25), ``timeout_s`` (10, per SMTP command).
- ``username`` / ``password``: AUTH after connecting when a username is given.
- ``use_tls`` (False, implicit TLS), ``start_tls`` (False), ``validate_certs`` (True).
- ``pool_size`` (4): at most this many connections, opened lazily and reused.
- ``transactional_categories`` (["security", "account", "transactional"]): these
  get no List-Unsubscribe header.
- ``unsubscribe_mailto`` / ``unsubscribe_url``: List-Unsubscribe targets; the URL
  also gets RFC 8058 one-click ``List-Unsubscribe-Post``. ``{user_id}``,
  ``{category}`` and ``{notification_id}`` in them are replaced (URL-quoted).
  The engine's own one-click URL (``task.unsubscribe_url``, when ``[engagement]``
  has a base URL and secret) is used instead of ``unsubscribe_url``.
- ``message_id_domain`` / ``helo_name``: default to the sender's domain.
- ``idle_check_s`` (30): a pooled connection idle longer than this is probed
  with NOOP before use and replaced if the probe fails.
- ``dkim_private_key`` (PEM, RSA; usually ``"secret:NAME"`` from the credentials
  store), ``dkim_selector`` and ``dkim_domain`` (default: the sender's domain):
  every message is DKIM-signed (``providers.email.dkim``), List-Unsubscribe and
  List-Unsubscribe-Post among the signed headers.
- ``bounce_domain`` and ``bounce_secret`` (a secret): the envelope sender becomes
  ``bounce+<token>@<bounce_domain>`` and the Message-ID ``<<token>@...>``, the
  token naming the notification under a MAC (``providers.email.verp``), so the
  delivery reports and complaints that come back to the engine's bounce listener
  (``engine/bounces.py``) find their notification. The domain's MX must point at
  that listener.
"""

from __future__ import annotations

import asyncio
import email.errors
import time
from email import policy as email_policy
from email.header import Header
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, make_msgid

import aiosmtplib
import dkim

from policy.email import DEFAULT_TRANSACTIONAL, fill, is_address, unsubscribe_url
from policy.types import DeliveryTask
from providers.base import Receipt
from providers.email import verp
from providers.email.common import check_content
from providers.email.dkim import DkimSigner
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    InvalidMessage,
    NetworkError,
    ProviderError,
    RateLimited,
)
from providers.secrets import redacted

AUTH_CODES = frozenset({530, 534, 535})
TRANSIENT_CODES = frozenset({421, 450, 451, 452})
# what is signed is what is sent: SMTP lines end in CRLF
WIRE = email_policy.compat32.clone(linesep="\r\n")


def map_smtp_error(exc: BaseException) -> DeliveryError:
    """Translate an aiosmtplib/OS error into the delivery error tree."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        return _by_code(first.code, f"recipient refused: {first.code} {first.message}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return AuthenticationError(f"SMTP auth failed: {exc.code} {exc.message}", status=exc.code)
    if isinstance(exc, (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError)):
        return NetworkError(f"SMTP connection: {exc}", status=getattr(exc, "code", None))
    if isinstance(exc, aiosmtplib.SMTPHeloError):
        # The server refused our greeting: a problem with the server or our
        # setup, never with this message, so it must stay retryable.
        return ProviderError(f"SMTP HELO refused: {exc.code} {exc.message}", status=exc.code)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _by_code(exc.code, f"SMTP {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return InvalidMessage(f"SMTP server does not support what this message needs: {exc}")
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return NetworkError(f"SMTP connection: {type(exc).__name__}: {exc}")
    return ProviderError(f"SMTP: {type(exc).__name__}: {exc}")


def _by_code(code: int, text: str) -> DeliveryError:
    if code in AUTH_CODES:
        return AuthenticationError(text, status=code)
    if 500 <= code < 600:
        return InvalidMessage(text, status=code)
    if code in TRANSIENT_CODES and ("rate" in text.lower() or "limit" in text.lower()):
        return RateLimited(text, status=code)
    return ProviderError(text, status=code)


def _parse_from(name: str, sender: str):
    """The parsed From header; ConfigurationError unless it is one address."""
    probe = EmailMessage()
    try:
        probe["From"] = sender
        header = probe["From"]
        addresses = header.addresses
    except (ValueError, TypeError, IndexError) as exc:
        raise ConfigurationError(f"smtp provider {name!r}: bad sender {sender!r}: {exc}") from exc
    if len(addresses) != 1 or not addresses[0].username or not addresses[0].domain:
        raise ConfigurationError(f"smtp provider {name!r}: sender {sender!r} is not one address")
    return header


class _Conn:
    """One pooled SMTP client and when it was last used."""

    __slots__ = ("smtp", "last_used")

    def __init__(self, smtp: aiosmtplib.SMTP):
        self.smtp = smtp
        self.last_used = time.monotonic()


class SmtpProvider:
    """Provider for ``channel = "email"``; see the module docstring for settings.

    ``send`` never retries: it returns ``Receipt(message_id=<Message-ID header>)``
    or raises a ``providers.errors.DeliveryError``. At most ``pool_size`` sends run
    at once, one per connection.
    """

    channel = "email"

    def __init__(self, name: str, settings: dict):
        self.name = name
        self.settings = redacted(settings, "password", "dkim_private_key", "bounce_secret")
        sender = settings.get("sender")
        if not sender or not isinstance(sender, str):
            raise ConfigurationError(f"smtp provider {name!r}: 'sender' (From address) is required")
        self.sender = sender
        self._from = _parse_from(name, sender)
        # The envelope (MAIL FROM) wants the bare address, not "Name <addr>".
        self.envelope_from = self._from.addresses[0].addr_spec
        # Formatted once (RFC 2047 for a non-ASCII display name), reused on every message.
        first = self._from.addresses[0]
        self._from_header = formataddr((first.display_name, first.addr_spec))
        domain = self._from.addresses[0].domain
        self.host = settings.get("host", "127.0.0.1")
        self.port = int(settings.get("port", 25))
        self.username = settings.get("username")
        self.password = settings.get("password")
        self.use_tls = bool(settings.get("use_tls", False))
        self.start_tls = bool(settings.get("start_tls", False))
        if self.use_tls and self.start_tls:
            raise ConfigurationError(f"smtp provider {name!r}: use_tls and start_tls are exclusive")
        self.validate_certs = bool(settings.get("validate_certs", True))
        self.timeout_s = float(settings.get("timeout_s", 10))
        self.pool_size = int(settings.get("pool_size", 4))
        if self.pool_size < 1:
            raise ConfigurationError(f"smtp provider {name!r}: pool_size must be >= 1")
        self.idle_check_s = float(settings.get("idle_check_s", 30))
        self.msgid_domain = settings.get("message_id_domain") or domain
        # Passing a HELO name avoids aiosmtplib's socket.getfqdn(), a DNS lookup
        # that can stall for seconds on a badly configured host.
        self.helo_name = settings.get("helo_name") or domain
        self.transactional = frozenset(settings.get("transactional_categories", DEFAULT_TRANSACTIONAL))
        self.unsubscribe_mailto = settings.get("unsubscribe_mailto")
        self.unsubscribe_url = settings.get("unsubscribe_url")
        self.bounce_domain = settings.get("bounce_domain") or None
        secret = settings.get("bounce_secret")
        if bool(self.bounce_domain) != bool(secret):
            raise ConfigurationError(f"smtp provider {name!r}: bounce_domain and bounce_secret go together")
        if self.bounce_domain is not None and not (isinstance(self.bounce_domain, str) and isinstance(secret, str)
                                                   and is_address(f"x@{self.bounce_domain}")):
            raise ConfigurationError(f"smtp provider {name!r}: bounce_domain must be a domain and bounce_secret text")
        if isinstance(secret, str) and len(secret) < verp.MIN_SECRET:
            raise ConfigurationError(f"smtp provider {name!r}: bounce_secret needs at least {verp.MIN_SECRET} "
                                     "characters")
        self._bounce_secret = secret.encode() if isinstance(secret, str) else None
        self.dkim = None
        if any(k.startswith("dkim_") for k in settings):
            # any DKIM setting means DKIM is wanted: a missing key (an empty env: or
            # secret:) must stop the start, not send unsigned mail
            if not settings.get("dkim_private_key"):
                raise ConfigurationError(f"smtp provider {name!r}: DKIM settings without a dkim_private_key")
        if settings.get("dkim_private_key"):
            self.dkim = DkimSigner(settings.get("dkim_domain") or domain, settings.get("dkim_selector") or "",
                                   settings["dkim_private_key"], name)
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._slots = asyncio.Semaphore(self.pool_size)

    async def start(self) -> None:
        """Nothing to open up front: connections are made on first use."""

    async def close(self) -> None:
        """Close every connection, idle or in use; later sends reconnect."""
        idle, self._idle = self._idle, []
        busy = self._all.difference(idle)
        self._all.clear()
        for conn in busy:
            # A send owns it right now; QUIT would interleave with its commands.
            conn.smtp.close()
        for conn in idle:
            await self._quit(conn)

    async def send(self, task: DeliveryTask) -> Receipt:
        """Send one email for ``task``; see the class docstring."""
        tok = verp.token(self._bounce_secret, task.notification_id) if self._bounce_secret else None
        mail_from = verp.return_path(tok, self.bounce_domain) if tok and self.bounce_domain else self.envelope_from
        try:
            message = self.build_message(task)
            message_id = message["Message-ID"]
            raw = message.as_bytes(policy=WIRE)
            if self.dkim is not None:
                # 1.5 ms of CPU for a small message, more for a large one (dkimpy's
                # canonicalization of the body); in a thread the event loop keeps
                # turning, and OpenSSL's RSA part lets go of the GIL
                raw = await asyncio.get_running_loop().run_in_executor(None, self.dkim.sign, raw)
        except DeliveryError:
            raise
        except (email.errors.MessageError, ValueError, TypeError, dkim.DKIMException) as exc:
            # HeaderParseError, a surrogate the codec cannot encode (UnicodeError is a
            # ValueError), ...: the message is bad, not the provider, so this must not
            # count as a provider failure or open the shared breaker
            raise InvalidMessage(f"cannot build the message: {exc}") from exc
        async with self._slots:
            conn = await self._checkout()
            try:
                await conn.smtp.sendmail(mail_from, [task.address], raw)
            except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused, ValueError) as exc:
                # The server answered (or aiosmtplib refused the address before
                # sending anything): the connection is still in step, keep it
                # unless the server hung up (421 does that).
                if conn.smtp.is_connected:
                    self._checkin(conn)
                else:
                    self._drop(conn)
                if isinstance(exc, ValueError):
                    raise InvalidMessage(f"unusable address or message: {exc}") from exc
                raise map_smtp_error(exc) from exc
            except Exception as exc:
                self._drop(conn)
                raise map_smtp_error(exc) from exc
            except BaseException:
                # Cancelled mid-command: the connection state is unknown.
                self._drop(conn)
                raise
            self._checkin(conn)
        return Receipt(message_id=str(message_id))

    def build_message(self, task: DeliveryTask) -> MIMEMultipart | MIMEText:
        """The message ``send`` would transmit; raises InvalidMessage when the
        address is missing or not a bare ``local@domain``, or the content is not
        an email (``policy.email.content_problem``).

        Built with the email package's compat32 classes: the modern
        EmailMessage policy re-parses every header through its registry, which
        measured at about three quarters of this provider's CPU."""
        content = task.content
        if not task.address or not task.address.strip():
            raise InvalidMessage("email task has no address")
        if not is_address(task.address):
            # both the email package and aiosmtplib would parse "a@b> X" as "a@b"
            raise InvalidMessage(f"not a bare email address: {task.address!r}")
        check_content(content)
        if content.text and content.html:
            msg: MIMEMultipart | MIMEText = MIMEMultipart("alternative")
            msg.attach(MIMEText(content.text, "plain", "utf-8"))
            msg.attach(MIMEText(content.html, "html", "utf-8"))
        elif content.text:
            msg = MIMEText(content.text, "plain", "utf-8")
        else:
            msg = MIMEText(content.html, "html", "utf-8")
        msg["From"] = self._from_header
        msg["To"] = task.address
        msg["Subject"] = content.subject if content.subject.isascii() else Header(content.subject, "utf-8")
        msg["Date"] = formatdate(usegmt=True)
        tok = verp.token(self._bounce_secret, task.notification_id) if self._bounce_secret else None
        msg["Message-ID"] = verp.message_id(tok, self.msgid_domain) if tok else make_msgid(domain=self.msgid_domain)
        msg["Tidings-Notification-Id"] = task.notification_id
        if task.category not in self.transactional:
            self._add_unsubscribe(msg, task)
        return msg

    def _add_unsubscribe(self, msg: MIMEMultipart | MIMEText, task: DeliveryTask) -> None:
        targets = []
        if self.unsubscribe_mailto:
            mailto = fill(self.unsubscribe_mailto, task)
            targets.append(f"<{mailto if mailto.startswith('mailto:') else 'mailto:' + mailto}>")
        url = unsubscribe_url(task, self.unsubscribe_url)
        if url:
            targets.append(f"<{url}>")
        if not targets:
            return
        msg["List-Unsubscribe"] = ", ".join(targets)
        if url:
            # RFC 8058: mailbox providers POST this body to the URL for one-click.
            msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"

    # -- pool -------------------------------------------------------------

    async def _checkout(self) -> _Conn:
        """An idle live connection, or a new one. Called holding a slot."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.smtp.is_connected:
                self._drop(conn)
                continue
            if time.monotonic() - conn.last_used > self.idle_check_s:
                # Servers drop idle clients; find out now rather than mid-message.
                try:
                    await conn.smtp.noop()
                except Exception:  # noqa: BLE001 - a connection that fails NOOP is dropped, whatever the error
                    self._drop(conn)
                    continue
            return conn
        return await self._connect()

    async def _connect(self) -> _Conn:
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            local_hostname=self.helo_name,
            timeout=self.timeout_s,
            use_tls=self.use_tls,
            start_tls=self.start_tls,
            validate_certs=self.validate_certs,
        )
        try:
            await smtp.connect()
        except aiosmtplib.SMTPNotSupported as exc:
            # STARTTLS or AUTH asked for but not offered: our settings are wrong.
            smtp.close()
            raise ConfigurationError(f"smtp provider {self.name!r}: {exc}") from exc
        except Exception as exc:
            smtp.close()
            raise map_smtp_error(exc) from exc
        except BaseException:
            smtp.close()
            raise
        conn = _Conn(smtp)
        self._all.add(conn)
        return conn

    def _checkin(self, conn: _Conn) -> None:
        if conn in self._all:  # not closed by close() while in use
            conn.last_used = time.monotonic()
            self._idle.append(conn)

    def _drop(self, conn: _Conn) -> None:
        self._all.discard(conn)
        conn.smtp.close()

    async def _quit(self, conn: _Conn) -> None:
        try:
            if conn.smtp.is_connected:
                await conn.smtp.quit(timeout=min(self.timeout_s, 2.0))
        except Exception:  # noqa: BLE001 - best effort: closing below is what matters
            pass
        finally:
            conn.smtp.close()


__all__ = ["SmtpProvider", "map_smtp_error"]
