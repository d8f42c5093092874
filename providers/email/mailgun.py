"""Email through Mailgun's messages API with aiohttp:
``POST {base_url}/v3/{domain}/messages``, multipart/form-data, one message per
request.

Settings:

- ``api_key`` (required): sent as HTTP Basic ``api:<api_key>``; never put in an
  error message (anything echoed back is scrubbed) nor in ``settings``.
- ``domain`` (required): the sending domain, as set up in Mailgun.
- ``sender`` (required): ``"Name <addr>"`` or ``addr`` (Mailgun's ``from``).
- ``base_url`` ("https://api.mailgun.net"; EU domains: "https://api.eu.mailgun.net");
  tests point it at a loopback sink.
- ``timeout_s`` (10, connecting), ``max_connections`` (32, pool size). The whole
  call is bounded by the caller, as for the other HTTP providers.
- ``transactional_categories`` (["security", "account", "transactional"]): these
  get no List-Unsubscribe header.
- ``unsubscribe_url``: adds ``h:List-Unsubscribe`` and RFC 8058
  ``h:List-Unsubscribe-Post`` to messages of other categories; ``{user_id}``,
  ``{category}`` and ``{notification_id}`` in it are replaced (URL-quoted).

Every message carries ``v:notification_id`` and ``v:user_id`` (Mailgun custom
variables, returned in webhook events as ``user-variables``) and ``o:tag`` =
the category.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from email.utils import formataddr

import aiohttp
import msgspec

from policy.email import DEFAULT_TRANSACTIONAL, is_address, unsubscribe_url
from policy.types import DeliveryTask
from providers.base import Receipt
from providers.email.common import check_content
from providers.email.sendgrid import parse_sender
from providers.errors import ConfigurationError, DeliveryError, InvalidMessage, NetworkError
from providers.http_errors import map_status
from providers.http_session import HttpSession, base_url_setting
from providers.secrets import redacted, required_secret, scrub

DEFAULT_BASE_URL = "https://api.mailgun.net"
EU_BASE_URL = "https://api.eu.mailgun.net"
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def error_message(payload: bytes) -> str | None:
    """The ``message`` of a Mailgun ``{"message": "..."}`` error body; None when
    the body is not of that form."""
    try:
        doc = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return None
    message = doc.get("message") if isinstance(doc, dict) else None
    return str(message) if message is not None else None


def message_id(payload: bytes) -> str | None:
    """The ``id`` of Mailgun's 200 answer without its angle brackets (webhook
    events carry it that way, as ``message.headers.message-id``)."""
    try:
        doc = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return None
    mid = doc.get("id") if isinstance(doc, dict) else None
    if not isinstance(mid, str) or not mid.strip("<> "):
        return None
    return mid.strip().removeprefix("<").removesuffix(">")


class MailgunProvider(HttpSession):
    """Provider for ``channel = "email"``; see the module docstring for settings.

    ``send`` POSTs one message and returns ``Receipt(message_id=<id without
    angle brackets>)`` on 2xx (Mailgun answers 200 ``{"id", "message"}``), else
    raises a ``providers.errors.DeliveryError``: 400 InvalidMessage, 401/403
    AuthenticationError, 404 (unknown domain) ConfigurationError, 429
    RateLimited (Retry-After), 5xx ProviderError, no answer NetworkError. It
    never retries.
    """

    channel = "email"

    def __init__(self, name: str, settings: dict):
        self.name = name
        self._api_key = required_secret(settings, "api_key", "mailgun", name)
        self.settings = redacted(settings, "api_key")
        domain = settings.get("domain")
        if not domain or not isinstance(domain, str) or not _DOMAIN.fullmatch(domain):
            raise ConfigurationError(f"mailgun provider {name!r}: 'domain' (the sending domain) is required")
        self.domain = domain
        sender = settings.get("sender")
        if not sender or not isinstance(sender, str):
            raise ConfigurationError(f"mailgun provider {name!r}: 'sender' (From address) is required")
        try:
            parsed = parse_sender(sender)
        except ValueError as exc:
            raise ConfigurationError(f"mailgun provider {name!r}: bad sender: {exc}") from exc
        # quoted as RFC 5322 needs ("Tidings, Inc" <a@b>); a bare address stays bare
        self.from_ = formataddr((parsed.get("name", ""), parsed["email"]))
        self.base_url = base_url_setting(settings, DEFAULT_BASE_URL, "mailgun", name)
        self.endpoint = f"{self.base_url}/v3/{domain}/messages"
        self.timeout_s = float(settings.get("timeout_s", 10))
        self.max_connections = int(settings.get("max_connections", 32))
        self.transactional = frozenset(settings.get("transactional_categories", DEFAULT_TRANSACTIONAL))
        self.unsubscribe_url: str | None = settings.get("unsubscribe_url")
        credentials = base64.b64encode(f"api:{self._api_key}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {credentials}"}
        self._session: aiohttp.ClientSession | None = None

    async def send(self, task: DeliveryTask) -> Receipt:
        """Send one email for ``task``; see the class docstring."""
        return await self._post(self.fields(task))

    def fields(self, task: DeliveryTask) -> list[tuple[str, str]]:
        """The form fields of the message for ``task`` (validated), in order."""
        content = task.content
        check_content(content)
        if not is_address(task.address):
            raise InvalidMessage(f"mailgun: not a bare email address: {task.address!r}")
        fields = [("from", self.from_), ("to", task.address), ("subject", content.subject)]
        if content.text:
            fields.append(("text", content.text))
        if content.html:
            fields.append(("html", content.html))
        url = unsubscribe_url(task, self.unsubscribe_url)
        if url and task.category not in self.transactional:
            fields += [("h:List-Unsubscribe", f"<{url}>"), ("h:List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
        fields += [("o:tag", task.category), ("v:notification_id", task.notification_id),
                   ("v:user_id", task.user_id)]
        return fields

    async def _post(self, fields: list[tuple[str, str]]) -> Receipt:
        form = aiohttp.FormData()
        for key, value in fields:
            # a content type per field makes the form multipart/form-data (any aiohttp version)
            form.add_field(key, value, content_type="text/plain; charset=utf-8")
        session = await self.session()
        try:
            async with session.post(self.endpoint, data=form, headers=self._headers,
                                    allow_redirects=False) as resp:
                payload = await resp.read()  # to the end: the connection goes back to the pool
                if 200 <= resp.status < 300:
                    return Receipt(message_id=message_id(payload))
                raise self.error(resp.status, resp.headers, payload)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise NetworkError(self._scrub(f"mailgun {self.endpoint}: {type(exc).__name__}: {exc}")) from exc

    def error(self, status: int, headers: Mapping[str, str], payload: bytes) -> DeliveryError:
        """The error for a non-2xx answer (``providers.http_errors.map_status``, Mailgun's
        ``{"message"}`` body, and 404 = unknown domain); the API key is scrubbed."""
        message = error_message(payload)
        snippet = message if message is not None else payload[:200].decode("utf-8", "replace").strip()
        snippet = self._scrub(snippet)
        if status == 404:
            text = f"mailgun HTTP 404 (domain {self.domain!r} unknown to Mailgun, or wrong base_url)"
            return ConfigurationError(f"{text}: {snippet}" if snippet else text, status=status)
        err = map_status(status, headers, snippet)
        err.args = (f"mailgun {err.args[0]}",)
        return err

    def _scrub(self, text: str) -> str:
        return scrub(text, self._api_key)


__all__ = ["DEFAULT_BASE_URL", "EU_BASE_URL", "MailgunProvider", "error_message", "message_id"]
