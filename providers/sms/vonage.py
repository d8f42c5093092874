"""SMS through Vonage's (formerly Nexmo's) SMS API: ``POST {base_url}/sms/json``,
form-encoded ``api_key``, ``api_secret``, ``from``, ``to`` (E.164 without the
``+``), ``text`` and ``type=unicode`` when the text needs UCS-2 (without it
Vonage sends GSM-7 and what GSM-7 cannot carry is lost).

Settings:

- ``api_key``, ``api_secret`` (required): sent in the form body, never in the
  URL, and never put in an error message or ``settings``.
- ``from`` (required): an E.164 number (sent without the ``+``), a short code
  or an alphanumeric sender ID (1-11 characters).
- ``base_url`` ("https://rest.nexmo.com"): tests point it at a loopback sink.
- ``timeout_s`` (10, connecting), ``max_connections`` (32, pool size).
- ``max_segments`` (10): a longer body is InvalidMessage before any request.
- ``status_callback`` (optional URL): Vonage's ``callback`` for delivery receipts
  (``/v1/tracking/vonage``); each message carries its notification id as
  ``client-ref``, which the receipt names.
- ``signature_secret``, ``signature_method`` (``md5hash``): what the account's
  signed webhooks are verified with (``engine/http/vonage.py``); not used to send.
- ``throttle_retry_after_s`` (1.0): how long to pause after status 1
  ("Throttled"), which carries no Retry-After; Vonage's limits are per second.

Vonage answers HTTP 200 for accepted and refused messages alike, one
``messages[]`` entry per segment, each with a ``status``: "0" accepted (its
``message-id``), anything else refused (see ``STATUS_ERRORS``).
"""

from __future__ import annotations

import urllib.parse

import aiohttp
import msgspec

from policy.types import DeliveryTask
from providers.base import Receipt
from providers.errors import (
    AddressGone,
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    InvalidMessage,
    NetworkError,
    ProviderError,
    RateLimited,
)
from providers.http_errors import map_status
from providers.http_session import HttpSession, base_url_setting
from providers.secrets import redacted, scrub
from providers.sms import check_segments, max_segments_setting, message_text, recipient, sender
from providers.tracking.vonage import signature_method

DEFAULT_BASE_URL = "https://rest.nexmo.com"

# Vonage's SMS API status codes (developer.vonage.com/api-errors/sms) -> what
# they mean for us. Per-recipient refusals never count against the provider's
# breaker; account and sender problems do, and let the next provider try.
STATUS_ERRORS: dict[str, tuple[type[DeliveryError], str]] = {
    "1": (RateLimited, "Throttled"),                     # faster than the account limit
    "2": (InvalidMessage, "Missing Parameters"),
    "3": (InvalidMessage, "Invalid Parameters"),
    "4": (AuthenticationError, "Invalid Credentials"),
    "5": (ProviderError, "Internal Error"),
    "6": (InvalidMessage, "Invalid Message"),            # e.g. unroutable: unrecognized number prefix
    "7": (InvalidMessage, "Number Barred"),              # the recipient is on a block list
    "8": (AuthenticationError, "Partner Account Barred"),  # our account is suspended
    "9": (ProviderError, "Partner Quota Violation"),     # out of credit: top up and retry
    "10": (RateLimited, "Too Many Existing Binds"),       # back off and retry
    "11": (ConfigurationError, "Account Not Enabled For HTTP"),
    "12": (InvalidMessage, "Message Too Long"),
    "14": (AuthenticationError, "Invalid Signature"),
    "15": (ConfigurationError, "Invalid Sender Address"),  # our 'from', for every message
    "22": (InvalidMessage, "Invalid Network Code"),
    "23": (ConfigurationError, "Invalid Callback Url"),
    "29": (InvalidMessage, "Non-Whitelisted Destination"),  # a test account's allow list: per recipient
    "32": (ConfigurationError, "Signature And API Secret Disallowed"),
    "33": (AddressGone, "Number De-activated"),           # the number is gone: stop using it
}

_decoder = msgspec.json.Decoder()


def vonage_error(status: str, error_text: str, *, throttle_retry_after_s: float = 1.0) -> DeliveryError:
    """The error for a refused message's ``status`` (see ``STATUS_ERRORS``); an
    unknown status is a ProviderError (retryable: assume Vonage's side, not
    the message)."""
    cls, meaning = STATUS_ERRORS.get(status, (ProviderError, "unknown status"))
    text = f"vonage status {status} ({meaning}): {error_text}" if error_text else f"vonage status {status} ({meaning})"
    if cls is RateLimited:
        return RateLimited(text, retry_after=throttle_retry_after_s if status == "1" else None)
    return cls(text)


class VonageSmsProvider(HttpSession):
    """Provider for ``channel = "sms"``; see the module docstring for settings.

    ``send`` validates the recipient (E.164) and the body (text or subject, at
    most ``max_segments`` segments), raising InvalidMessage without a request
    when either is wrong; otherwise it POSTs one message and returns
    ``Receipt(message_id=<message-id of the first part>)`` when every part has
    status "0". The first refused part decides the error (``vonage_error``); a
    non-200 answer is mapped like any HTTP provider's (404 ConfigurationError).
    It never retries. A long message whose first parts were accepted and a
    later one refused is reported as refused: Vonage gives no way to send only
    the rest.
    """

    channel = "sms"

    def __init__(self, name: str, settings: dict):
        self.name = name
        key, secret = settings.get("api_key"), settings.get("api_secret")
        if not key or not isinstance(key, str) or not secret or not isinstance(secret, str):
            raise ConfigurationError(f"vonage provider {name!r}: 'api_key' and 'api_secret' are required")
        self._api_key, self._api_secret = key, secret
        self.settings = redacted(settings, "api_secret", "signature_secret")
        try:  # checked here so that a typo fails the start, not every webhook
            signature_method(str(settings.get("signature_method", "md5hash")))
        except ValueError as exc:
            raise ConfigurationError(f"vonage provider {name!r}: {exc}") from None
        try:
            self.from_ = sender(settings.get("from")).lstrip("+")
        except ValueError as exc:
            raise ConfigurationError(f"vonage provider {name!r}: bad 'from': {exc}") from exc
        self.base_url = base_url_setting(settings, DEFAULT_BASE_URL, "vonage", name)
        self.endpoint = f"{self.base_url}/sms/json"
        callback = settings.get("status_callback")
        if callback is not None and (not isinstance(callback, str) or not callback.startswith(("http://", "https://"))):
            raise ConfigurationError(f"vonage provider {name!r}: status_callback must be an http(s) URL")
        self.status_callback: str | None = callback
        self.timeout_s = float(settings.get("timeout_s", 10))
        self.max_connections = int(settings.get("max_connections", 32))
        self.max_segments = max_segments_setting("vonage", name, settings)
        self.throttle_retry_after_s = float(settings.get("throttle_retry_after_s", 1.0))
        self._headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                         "Accept": "application/json"}
        self._session: aiohttp.ClientSession | None = None

    def form(self, task: DeliveryTask) -> dict[str, str]:
        """The form POSTed for ``task``, credentials included (validated; InvalidMessage)."""
        to = recipient(task)
        text = message_text(task)
        enc, _ = check_segments(text, self.max_segments)
        # client-ref comes back in the delivery receipt: it finds the row by notification id
        form = {"api_key": self._api_key, "api_secret": self._api_secret, "from": self.from_, "to": to[1:],
                "text": text, "client-ref": task.notification_id[:100]}
        if enc == "UCS-2":
            form["type"] = "unicode"
        if self.status_callback:
            form["callback"] = self.status_callback
        return form

    async def send(self, task: DeliveryTask) -> Receipt:
        """Send one SMS for ``task``; see the class docstring."""
        body = urllib.parse.urlencode(self.form(task)).encode("ascii")
        session = await self.session()
        try:
            async with session.post(self.endpoint, data=body, headers=self._headers,
                                    allow_redirects=False) as resp:
                payload = await resp.read()  # to the end: the connection goes back to the pool
                status = resp.status
                headers = resp.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise NetworkError(self._scrub(f"vonage {self.endpoint}: {type(exc).__name__}: {exc}")) from exc
        if status != 200:
            snippet = self._scrub(payload[:200].decode("utf-8", "replace").strip())
            err = ConfigurationError(f"HTTP {status}: {snippet}", status=status) if status == 404 \
                else map_status(status, headers, snippet)
            err.args = (f"vonage {err.args[0]}",)
            raise err
        return self._receipt(payload)

    def _receipt(self, payload: bytes) -> Receipt:
        try:
            doc = _decoder.decode(payload)
            messages = doc["messages"]
            if not isinstance(messages, list) or not messages:
                raise TypeError("no messages")
        except (msgspec.DecodeError, KeyError, TypeError) as exc:
            # HTTP 200 without the documented body: we cannot tell whether it
            # was sent. ProviderError lets the shard retry or fail over, at the
            # risk of a duplicate, rather than report a send we cannot show.
            snippet = self._scrub(payload[:200].decode("utf-8", "replace").strip())
            raise ProviderError(f"vonage answered 200 without a messages list: {snippet}", status=200) from exc
        for m in messages:
            st = str(m.get("status")) if isinstance(m, dict) else "?"
            if st != "0":
                text = self._scrub(str(m.get("error-text") or "")) if isinstance(m, dict) else ""
                err = vonage_error(st, text, throttle_retry_after_s=self.throttle_retry_after_s)
                err.status = 200
                raise err
        first = messages[0].get("message-id")
        return Receipt(message_id=str(first) if first is not None else None)

    def _scrub(self, text: str) -> str:
        return scrub(text, self._api_secret)


__all__ = ["STATUS_ERRORS", "VonageSmsProvider", "vonage_error"]
