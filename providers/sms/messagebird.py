"""SMS through MessageBird's REST API: ``POST {base_url}/messages`` with
``Authorization: AccessKey <key>`` and a JSON body
``{originator, recipients: [msisdn], body, datacoding}``.

Settings:

- ``access_key`` (required): never put in an error message or ``settings``.
- ``originator`` (required): an E.164 number (sent without the ``+``), a short
  code or an alphanumeric sender ID (1-11 characters).
- ``base_url`` ("https://rest.messagebird.com"): tests point it at a loopback sink.
- ``timeout_s`` (10, connecting), ``max_connections`` (32, pool size).
- ``max_segments`` (10): a longer body is InvalidMessage before any request.
- ``status_callback`` (optional URL): the ``reportUrl`` for status reports
  (``/v1/tracking/messagebird``); each message carries its notification id as
  ``reference``, which the report names.
- ``signing_key``: what MessageBird signs its webhooks with
  (``engine/http/messagebird.py``); not used to send.

``datacoding`` is set from the text ("plain" for GSM-7, "unicode" otherwise):
MessageBird's default, "plain", would replace what GSM-7 cannot carry.

MessageBird answers 201 with the message (its ``id`` is the Receipt's
message_id) and errors as ``{"errors": [{code, description, parameter}]}``;
see ``messagebird_error`` for the mapping.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import msgspec

from policy.types import DeliveryTask
from providers.base import Receipt
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    InvalidMessage,
    NetworkError,
    ProviderError,
    RateLimited,
)
from providers.http_errors import map_status, parse_retry_after
from providers.http_session import HttpSession, base_url_setting
from providers.secrets import redacted, required_secret, scrub
from providers.sms import check_segments, max_segments_setting, message_text, recipient, sender

DEFAULT_BASE_URL = "https://rest.messagebird.com"
# MessageBird's error codes (the body's ``code``, not the HTTP status).
REQUEST_NOT_ALLOWED = 2   # "Request not allowed (incorrect access_key)"
MISSING_PARAMS = 9        # e.g. "no (correct) recipients found", "originator is required"
INVALID_PARAMS = 10
NOT_FOUND = 20
BAD_REQUEST = 21
NOT_ENOUGH_BALANCE = 25
API_NOT_FOUND = 98
INTERNAL_ERROR = 99

_encoder = msgspec.json.Encoder()


def parse_errors(payload: bytes) -> list[tuple[int | None, str, str | None]]:
    """``[(code, description, parameter)]`` of a MessageBird error body; empty
    when the body is not one."""
    try:
        doc = msgspec.json.decode(payload)
        errors = doc["errors"]
    except (msgspec.DecodeError, KeyError, TypeError):
        return []
    out = []
    for e in errors if isinstance(errors, list) else ():
        if isinstance(e, dict):
            code = e.get("code")
            param = e.get("parameter")
            out.append((code if isinstance(code, int) and not isinstance(code, bool) else None,
                        str(e.get("description") or ""), str(param) if param is not None else None))
    return out


def messagebird_error(status: int, headers: Mapping[str, str], payload: bytes) -> DeliveryError:
    """The error for a non-2xx MessageBird answer.

    The HTTP status decides first where it is unambiguous: 429 RateLimited
    (Retry-After honoured), 401/403 AuthenticationError, 404/405
    ConfigurationError (wrong base_url), 5xx ProviderError. Otherwise (422 and
    other 4xx) the error codes decide, the account's problems before the
    message's: code 2 AuthenticationError; 20/98 or any error about the
    ``originator`` ConfigurationError (every send would fail; the next
    provider may deliver it); 25 (no balance) and 99 ProviderError; anything
    else (9 "no (correct) recipients found", 10, 21, ...) InvalidMessage.
    """
    errors = parse_errors(payload)
    if errors:
        snippet = "; ".join(f"code {c}: {d}" + (f" (parameter {p})" if p else "") for c, d, p in errors)
    else:
        snippet = payload[:200].decode("utf-8", "replace").strip()
    text = f"messagebird HTTP {status}: {snippet}" if snippet else f"messagebird HTTP {status}"
    codes = {c for c, _, _ in errors}
    if status == 429:
        return RateLimited(text, status=status, retry_after=parse_retry_after(headers.get("Retry-After")))
    if status in (401, 403) or REQUEST_NOT_ALLOWED in codes:
        return AuthenticationError(text, status=status)
    if status in (404, 405) or codes & {NOT_FOUND, API_NOT_FOUND} or any(p == "originator" for _, _, p in errors):
        return ConfigurationError(text, status=status)
    if 500 <= status < 600 or codes & {NOT_ENOUGH_BALANCE, INTERNAL_ERROR}:
        return ProviderError(text, status=status)
    if errors:
        return InvalidMessage(text, status=status)
    err = map_status(status, headers, snippet)
    err.args = (text,)
    return err


class MessageBirdProvider(HttpSession):
    """Provider for ``channel = "sms"``; see the module docstring for settings.

    ``send`` validates the recipient (E.164) and the body (text or subject, at
    most ``max_segments`` segments), raising InvalidMessage without a request
    when either is wrong; otherwise it POSTs one message to one recipient and
    returns ``Receipt(message_id=<id>)`` on 2xx (MessageBird answers 201). Errors
    are mapped by ``messagebird_error``. It never retries.
    """

    channel = "sms"

    def __init__(self, name: str, settings: dict):
        self.name = name
        self._access_key = required_secret(settings, "access_key", "messagebird", name)
        self.settings = redacted(settings, "access_key", "signing_key")
        try:
            self.originator = sender(settings.get("originator")).lstrip("+")
        except ValueError as exc:
            raise ConfigurationError(f"messagebird provider {name!r}: bad 'originator': {exc}") from exc
        self.base_url = base_url_setting(settings, DEFAULT_BASE_URL, "messagebird", name)
        self.endpoint = f"{self.base_url}/messages"
        self.timeout_s = float(settings.get("timeout_s", 10))
        self.max_connections = int(settings.get("max_connections", 32))
        self.max_segments = max_segments_setting("messagebird", name, settings)
        callback = settings.get("status_callback")
        if callback is not None and (not isinstance(callback, str) or not callback.startswith(("http://", "https://"))):
            raise ConfigurationError(f"messagebird provider {name!r}: status_callback must be an http(s) URL")
        self.status_callback: str | None = callback
        self._headers = {"Authorization": f"AccessKey {self._access_key}", "Content-Type": "application/json",
                         "Accept": "application/json"}
        self._session: aiohttp.ClientSession | None = None

    def payload(self, task: DeliveryTask) -> dict:
        """The JSON document POSTed for ``task`` (validated; InvalidMessage)."""
        to = recipient(task)
        body = message_text(task)
        enc, _ = check_segments(body, self.max_segments)
        # An msisdn is the E.164 number without "+": a JSON number, as in
        # MessageBird's reference (15 digits are exact in any JSON parser).
        doc = {"originator": self.originator, "recipients": [int(to[1:])], "body": body,
               "datacoding": "plain" if enc == "GSM-7" else "unicode",
               "reference": task.notification_id}  # a status report names it: it finds the row
        if self.status_callback:
            doc["reportUrl"] = self.status_callback
        return doc

    async def send(self, task: DeliveryTask) -> Receipt:
        """Send one SMS for ``task``; see the class docstring."""
        body = _encoder.encode(self.payload(task))
        session = await self.session()
        try:
            async with session.post(self.endpoint, data=body, headers=self._headers,
                                    allow_redirects=False) as resp:
                payload = await resp.read()  # to the end: the connection goes back to the pool
                if 200 <= resp.status < 300:
                    return Receipt(message_id=_id_of(payload))
                err = messagebird_error(resp.status, resp.headers, payload)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise NetworkError(self._scrub(f"messagebird {self.endpoint}: {type(exc).__name__}: {exc}")) from exc
        err.args = (self._scrub(str(err.args[0])),)
        raise err

    def _scrub(self, text: str) -> str:
        return scrub(text, self._access_key)


def _id_of(payload: bytes) -> str | None:
    # Accepted is accepted: an unreadable body only costs us the id, while an
    # error here would make the caller send the message again.
    try:
        doc = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return None
    mid = doc.get("id") if isinstance(doc, dict) else None
    return mid if isinstance(mid, str) else None


__all__ = ["MessageBirdProvider", "messagebird_error", "parse_errors"]
