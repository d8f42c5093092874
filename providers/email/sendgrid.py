"""Email through SendGrid's v3 ``mail/send`` API with aiohttp, one message or a
batch of up to 1,000 recipients (one personalization each) per request.

Settings:

- ``api_key`` (required): sent as ``Authorization: Bearer``; never put in an
  error message (anything echoed back is scrubbed).
- ``sender`` (required): ``"Name <addr>"`` or ``addr``.
- ``base_url`` ("https://api.sendgrid.com"): tests point it at a loopback sink.
- ``timeout_s`` (10, connecting), ``max_connections`` (32, pool size). The whole
  call is bounded by the caller, as for the webhook provider.
- ``max_batch`` (1000, capped at 1000: SendGrid's personalizations limit).
- ``transactional_categories`` (["security", "account", "transactional"]): these
  get no List-Unsubscribe header.
- ``unsubscribe_url``: adds ``List-Unsubscribe`` and RFC 8058
  ``List-Unsubscribe-Post`` headers per personalization; ``{user_id}``,
  ``{category}`` and ``{notification_id}`` in it are replaced (URL-quoted).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence

import aiohttp
import msgspec

from policy.email import DEFAULT_TRANSACTIONAL, is_address, unsubscribe_url
from policy.types import DeliveryTask
from providers.base import BatchProvider, Receipt
from providers.email.common import check_content
from providers.errors import ConfigurationError, DeliveryError, InvalidMessage, NetworkError, RateLimited
from providers.http_errors import map_status
from providers.http_session import HttpSession, base_url_setting
from providers.secrets import redacted, required_secret, scrub

MAX_PERSONALIZATIONS = 1000
DEFAULT_BASE_URL = "https://api.sendgrid.com"
_NAMED = re.compile(r"\s*(.*?)\s*<([^<>]*)>\s*")
_encoder = msgspec.json.Encoder()


def parse_sender(sender: str) -> dict[str, str]:
    """SendGrid's ``from`` object for ``"Name <addr>"`` or ``addr``; ValueError
    unless that is exactly one bare address (with an optional display name)."""
    m = _NAMED.fullmatch(sender)
    name, addr = (m.group(1).strip('"').strip(), m.group(2).strip()) if m else ("", sender.strip())
    if not is_address(addr):
        raise ValueError(f"not one email address: {sender!r}")
    return {"email": addr, "name": name} if name else {"email": addr}


def first_error(payload: bytes) -> tuple[str | None, str | None]:
    """``(message, field)`` of the first entry of a SendGrid ``{"errors": [...]}``
    body; ``(None, None)`` when the body is not of that form."""
    try:
        doc = msgspec.json.decode(payload)
        err = doc["errors"][0]
        return (str(err["message"]) if err.get("message") is not None else None,
                str(err["field"]) if err.get("field") is not None else None)
    except (msgspec.DecodeError, KeyError, IndexError, TypeError, AttributeError):
        return None, None


def rate_limit_reset(value: str | None, now: float | None = None) -> float | None:
    """Seconds until ``X-RateLimit-Reset`` (epoch seconds), never negative; a
    small value is taken as seconds from now. None when absent or unparsable."""
    try:
        reset = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if reset < 1e9:  # not an epoch: a delta
        return max(0.0, reset)
    return max(0.0, reset - (time.time() if now is None else now))


class SendGridProvider(HttpSession, BatchProvider):
    """Provider for ``channel = "email"``; see the module docstring for settings.

    ``send`` and ``send_batch`` POST one ``mail/send`` request and return
    ``Receipt(message_id=<X-Message-Id>)`` on 2xx (SendGrid answers 202), else
    raise a ``providers.errors.DeliveryError``; they never retry. A batch is
    accepted or refused as a whole.
    """

    channel = "email"

    def __init__(self, name: str, settings: dict):
        self.name = name
        self._api_key = required_secret(settings, "api_key", "sendgrid", name)
        self.settings = redacted(settings, "api_key")
        sender = settings.get("sender")
        if not sender or not isinstance(sender, str):
            raise ConfigurationError(f"sendgrid provider {name!r}: 'sender' (From address) is required")
        try:
            self.from_ = parse_sender(sender)
        except ValueError as exc:
            raise ConfigurationError(f"sendgrid provider {name!r}: bad sender: {exc}") from exc
        self.base_url = base_url_setting(settings, DEFAULT_BASE_URL, "sendgrid", name)
        self.endpoint = f"{self.base_url}/v3/mail/send"
        self.timeout_s = float(settings.get("timeout_s", 10))
        self.max_connections = int(settings.get("max_connections", 32))
        self.max_batch = min(int(settings.get("max_batch", MAX_PERSONALIZATIONS)), MAX_PERSONALIZATIONS)
        if self.max_batch < 1:
            raise ConfigurationError(f"sendgrid provider {name!r}: max_batch must be >= 1")
        self.transactional = frozenset(settings.get("transactional_categories", DEFAULT_TRANSACTIONAL))
        self.unsubscribe_url: str | None = settings.get("unsubscribe_url")
        self._headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        self._session: aiohttp.ClientSession | None = None

    async def send(self, task: DeliveryTask) -> Receipt:
        """Send one email for ``task``; see the class docstring."""
        return await self._post(self.payload([task]))

    async def send_batch(self, tasks: Sequence[DeliveryTask]) -> Receipt:
        """Send one email with the same content to every task's address, in one
        request; InvalidMessage for an empty batch, one over ``max_batch`` or
        tasks whose content (subject/text/html) differs."""
        if len(tasks) > self.max_batch:
            raise InvalidMessage(f"sendgrid batch of {len(tasks)} exceeds max_batch {self.max_batch}")
        return await self._post(self.payload(tasks))

    def payload(self, tasks: Sequence[DeliveryTask]) -> dict:
        """The ``mail/send`` document for ``tasks`` (validated)."""
        if not tasks:
            raise InvalidMessage("sendgrid batch is empty")
        content = tasks[0].content
        check_content(content)
        key = (content.subject, content.text, content.html)
        personalizations = []
        for i, task in enumerate(tasks):
            c = task.content
            if c is not content and (c.subject, c.text, c.html) != key:
                raise InvalidMessage(f"sendgrid batch: task {i} has different content than task 0")
            if not is_address(task.address):
                raise InvalidMessage(f"sendgrid batch: task {i}: not a bare email address: {task.address!r}")
            p: dict = {
                "to": [{"email": task.address}],
                "custom_args": {"notification_id": task.notification_id, "user_id": task.user_id,
                                "category": task.category},
            }
            url = unsubscribe_url(task, self.unsubscribe_url)
            if url and task.category not in self.transactional:
                p["headers"] = {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
            personalizations.append(p)
        parts = []
        if content.text:  # SendGrid requires text/plain before text/html
            parts.append({"type": "text/plain", "value": content.text})
        if content.html:
            parts.append({"type": "text/html", "value": content.html})
        return {"personalizations": personalizations, "from": self.from_, "subject": content.subject,
                "content": parts}

    async def _post(self, doc: dict) -> Receipt:
        try:
            body = _encoder.encode(doc)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidMessage(f"sendgrid payload is not JSON-encodable: {exc}") from exc
        session = await self.session()
        try:
            async with session.post(self.endpoint, data=body, headers=self._headers,
                                    allow_redirects=False) as resp:
                payload = await resp.read()  # to the end: the connection goes back to the pool
                if 200 <= resp.status < 300:
                    return Receipt(message_id=resp.headers.get("X-Message-Id"))
                raise self.error(resp.status, resp.headers, payload)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise NetworkError(self._scrub(f"sendgrid {self.endpoint}: {type(exc).__name__}: {exc}")) from exc

    def error(self, status: int, headers: Mapping[str, str], payload: bytes) -> DeliveryError:
        """The error for a non-2xx answer (``providers.http_errors.map_status`` plus SendGrid's
        error body, ``X-RateLimit-Reset`` and 413); the API key is scrubbed."""
        message, field = first_error(payload)
        if message is not None:
            snippet = f"{message} (field {field})" if field else message
        else:
            snippet = payload[:200].decode("utf-8", "replace").strip()
        err = map_status(status, headers, self._scrub(snippet))
        err.args = (f"sendgrid {err.args[0]}",)
        if isinstance(err, RateLimited):
            reset = rate_limit_reset(headers.get("X-RateLimit-Reset"))
            if reset is not None:
                err.retry_after = reset
        return err

    def _scrub(self, text: str) -> str:
        return scrub(text, self._api_key)


__all__ = ["MAX_PERSONALIZATIONS", "SendGridProvider", "first_error", "parse_sender", "rate_limit_reset"]
