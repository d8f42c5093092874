"""What Twilio's SMS and voice providers share: the account and its credentials,
one form-encoded POST to the 2010-04-01 REST API, and Twilio's errors mapped to
``providers.errors``.

Settings (both providers):

- ``account_sid`` (required, ``AC`` + 32 hex): goes in the URL path.
- ``auth_token``, or ``api_key_sid`` (``SK`` + 32 hex) with ``api_key_secret``:
  exactly one of the two, sent as HTTP Basic auth. Secrets never appear in an
  error message or in ``settings``.
- ``base_url`` ("https://api.twilio.com"): tests point it at a loopback sink.
- ``timeout_s`` (10, connecting), ``max_connections`` (32, pool size); the whole
  call is bounded by the ChannelShard, as for the other HTTP providers.
- ``status_callback`` (optional URL): Twilio's ``StatusCallback``.

Twilio answers 201 with the new resource (its ``sid`` is the Receipt's
message_id) and errors as JSON ``{code, message, more_info, status}``; see
``twilio_error`` for the mapping.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Mapping

import aiohttp
import msgspec

from providers.base import Receipt
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    NetworkError,
    ProviderError,
    RateLimited,
)
from providers.http_errors import map_status, parse_retry_after
from providers.http_session import HttpSession, base_url_setting
from providers.secrets import redacted, required_secret, scrub

API_VERSION = "2010-04-01"
DEFAULT_BASE_URL = "https://api.twilio.com"
ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
API_KEY_SID = re.compile(r"SK[0-9a-fA-F]{32}")

# Twilio error codes (https://www.twilio.com/docs/errors) whose meaning is not
# the HTTP status's. Everything else follows the status: 400 is the request's
# fault (InvalidMessage), 401/403 credentials, 429 rate, 5xx Twilio's side.
#
# The sender or the account is wrong, whoever the recipient: every send through
# this provider will fail the same way, so it is not the message's fault (the
# next provider may well deliver it) and the breaker should count it.
CONFIG_CODES = {
    20404: "resource not found (account_sid or base_url)",
    21210: "'From' phone number not verified",
    21212: "invalid 'From' number",
    21606: "'From' number is not SMS-capable or not owned by the account",
    21659: "'From' is not a Twilio phone number or short code",
    21701: "MessagingServiceSid is invalid",
    21703: "Messaging Service has no phone numbers",
}
AUTH_CODES = {20003: "authentication failed", 20005: "account not active"}
# Slow down: 20429 is the API's request limit, 21611 a sender's full queue.
RATE_CODES = {20429: "too many requests", 21611: "'From' number has too many queued messages"}
# Everything else in a 400 is about this message or this recipient and becomes
# InvalidMessage: 21211 invalid 'To', 21614 'To' not a mobile number, 21610 the
# recipient replied STOP to this sender (not AddressGone: the number exists, and
# START re-subscribes it), 21408/21215 no permission for that country, 21612
# cannot route, 21617 body over 1,600 characters, ... A per-recipient refusal must
# not trip the breaker for everyone else, so none of these is a ConfigurationError.

def _sid(value: object, pattern: re.Pattern, what: str, kind: str, name: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ConfigurationError(f"{kind} provider {name!r}: {what} must look like {pattern.pattern[:2]} followed by "
                                 "32 hex digits")
    return value


def parse_error(payload: bytes) -> tuple[int | None, str | None]:
    """``(code, message)`` of a Twilio error body; ``(None, None)`` when the
    body is not one."""
    try:
        doc = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    code = doc.get("code")
    message = doc.get("message")
    return (code if isinstance(code, int) and not isinstance(code, bool) else None,
            str(message) if message is not None else None)


def twilio_error(status: int, headers: Mapping[str, str], payload: bytes, prefix: str = "twilio") -> DeliveryError:
    """The error for a non-2xx Twilio answer: the code in the body first
    (CONFIG_CODES, AUTH_CODES, RATE_CODES), then the HTTP status as for any HTTP
    provider (``providers.http_errors.map_status``) except that 404 is a
    ConfigurationError (the account or base_url is wrong, not the message).
    Retry-After is honoured on every RateLimited. The text names the status,
    the Twilio code and Twilio's message; callers scrub secrets from it."""
    code, message = parse_error(payload)
    if message is None:
        message = payload[:200].decode("utf-8", "replace").strip()
    detail = f"HTTP {status}" + (f" code {code}" if code is not None else "") + (f": {message}" if message else "")
    text = f"{prefix} {detail}"
    if code in RATE_CODES or status == 429:
        return RateLimited(text, status=status, retry_after=parse_retry_after(headers.get("Retry-After")))
    if code in AUTH_CODES:
        return AuthenticationError(text, status=status)
    if code in CONFIG_CODES or status == 404:
        return ConfigurationError(text, status=status)
    if 500 <= status < 600:
        return ProviderError(text, status=status)
    err = map_status(status, headers, message or "")
    err.args = (text,)
    return err


class TwilioApi(HttpSession):
    """Base of the Twilio providers: parses the shared settings (module
    docstring) and ``_create``s resources. Subclasses set ``channel`` and
    ``kind`` (the name used in messages)."""

    kind = "twilio"

    def _init_api(self, name: str, settings: dict) -> None:
        self.name = name
        kind = self.kind
        self.account_sid = _sid(settings.get("account_sid"), ACCOUNT_SID, "account_sid", kind, name)
        token, key_sid, key_secret = (settings.get("auth_token"), settings.get("api_key_sid"),
                                      settings.get("api_key_secret"))
        if token and (key_sid or key_secret):
            raise ConfigurationError(f"{kind} provider {name!r}: give auth_token or api_key_sid/api_key_secret, "
                                     "not both")
        if token:
            if not isinstance(token, str):
                raise ConfigurationError(f"{kind} provider {name!r}: auth_token must be a string")
            user, secret = self.account_sid, token
        elif key_sid or key_secret:
            user = _sid(key_sid, API_KEY_SID, "api_key_sid", kind, name)
            secret = required_secret(settings, "api_key_secret", kind, name)
        else:
            raise ConfigurationError(f"{kind} provider {name!r}: auth_token (or api_key_sid and api_key_secret) "
                                     "is required")
        basic = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
        self._secrets = tuple(s for s in (secret, basic) if s)
        self.settings = redacted(settings, "auth_token", "api_key_secret")
        self.base_url = base_url_setting(settings, DEFAULT_BASE_URL, kind, name)
        self.account_url = f"{self.base_url}/{API_VERSION}/Accounts/{self.account_sid}"
        callback = settings.get("status_callback")
        if callback is not None and (not isinstance(callback, str) or not callback.startswith(("http://", "https://"))):
            raise ConfigurationError(f"{kind} provider {name!r}: status_callback must be an http(s) URL")
        self.status_callback: str | None = callback
        self.timeout_s = float(settings.get("timeout_s", 10))
        self.max_connections = int(settings.get("max_connections", 32))
        self._headers = {"Authorization": f"Basic {basic}",
                         "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                         "Accept": "application/json"}
        self._session: aiohttp.ClientSession | None = None

    async def _create(self, resource: str, form: dict[str, str]) -> Receipt:
        """POST ``form`` to ``{account_url}/{resource}.json``; the new resource's
        sid on 2xx, else the mapped error. Never retries."""
        url = f"{self.account_url}/{resource}.json"
        body = urllib.parse.urlencode(form).encode("ascii")
        session = await self.session()
        try:
            async with session.post(url, data=body, headers=self._headers, allow_redirects=False) as resp:
                payload = await resp.read()  # to the end: the connection goes back to the pool
                if 200 <= resp.status < 300:
                    return Receipt(message_id=self._sid_of(payload))
                err = twilio_error(resp.status, resp.headers, payload, self.kind)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise NetworkError(self._scrub(f"{self.kind} {url}: {type(exc).__name__}: {exc}")) from exc
        err.args = (self._scrub(str(err.args[0])),)
        raise err

    @staticmethod
    def _sid_of(payload: bytes) -> str | None:
        # Twilio took the message: an unreadable body must not turn that into an
        # error, or a retry would send it twice. Without the sid we only lose the
        # id that status callbacks are matched by.
        try:
            doc = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            return None
        sid = doc.get("sid") if isinstance(doc, dict) else None
        return sid if isinstance(sid, str) else None

    def _scrub(self, text: str) -> str:
        return scrub(text, *self._secrets)


__all__ = ["API_VERSION", "AUTH_CODES", "CONFIG_CODES", "RATE_CODES", "TwilioApi", "parse_error", "twilio_error"]
