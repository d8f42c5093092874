"""Mobile push through Firebase Cloud Messaging's HTTP v1 API with aiohttp.

Authentication is the documented server-to-server OAuth 2.0 flow for a service
account: a JWT (RS256, ``iss`` = the account's ``client_email``, ``scope`` =
``https://www.googleapis.com/auth/firebase.messaging``, ``aud`` = its
``token_uri``, ``iat``/``exp`` one hour apart, ``kid`` = ``private_key_id``) is
POSTed to ``token_uri`` as ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``;
the access token it answers is cached until ``refresh_margin_s`` before it
expires, fetched by one request however many sends wait for it, and fetched
again once when FCM answers 401 UNAUTHENTICATED (the send is then repeated once:
FCM refused it, so nothing was delivered).

Settings:

- ``service_account`` (a dict: the JSON key file's content) or
  ``service_account_file`` (its path): needs ``client_email`` and
  ``private_key`` (PEM, RSA); ``private_key_id``, ``project_id`` and
  ``token_uri`` are used when present. The private key and access tokens are
  never put in an error message or in ``settings``.
- ``project_id``: defaults to the service account's.
- ``token_uri``: overrides the service account's (default
  "https://oauth2.googleapis.com/token").
- ``base_url`` ("https://fcm.googleapis.com"): tests point it at a loopback sink.
- ``timeout_s`` (10, connecting), ``max_connections`` (100, pool size); the whole
  call is bounded by the ChannelShard.
- ``refresh_margin_s`` (300): refresh the access token this long before it
  expires (at most half its lifetime).
- ``validate_only`` (false): FCM checks the message but does not deliver it.

A task's ``address`` is the registration token. ``content.subject``/``text``
become ``notification.title``/``body`` (``html`` is not used); ``content.data``
becomes ``data`` (values that are not strings are sent as their JSON text; FCM's
reserved keys are refused). ``priority`` high/critical sends
``android.priority`` "high" and ``apns-priority`` 10, others "normal" and 5. A
message with data only is sent to iOS as a background push
(``content-available``, priority 5), as FCM documents. A task with an end of
life (``expires_at``) sends what is left of it as ``android.ttl`` and as the iOS
``apns-expiration``; its ``collapse_key`` as ``android.collapse_key`` and
``apns-collapse-id``.

Errors (FCM's ``error.details[].errorCode`` of type FcmError, else the status):

- errorCode UNREGISTERED (FCM answers it with 404; any status counts):
  ``AddressGone``. A 404 without it (NOT_FOUND for a wrong ``project_id``, or
  not a Google body at all: a wrong ``base_url``) is a ``ConfigurationError``,
  so a misconfiguration never drops tokens; the Firebase Admin SDKs likewise
  decide "unregistered" by the FcmError code only.
- INVALID_ARGUMENT / other 400: ``InvalidMessage``.
- 401 UNAUTHENTICATED: token refreshed and the send repeated once, then
  ``AuthenticationError``. THIRD_PARTY_AUTH_ERROR (401) and 403
  (SENDER_ID_MISMATCH, PERMISSION_DENIED): ``AuthenticationError`` at once.
  SENDER_ID_MISMATCH is not treated as AddressGone: a wrong ``project_id`` or
  service account makes FCM answer it for every token, and AddressGone would
  then delete every user's token; as AuthenticationError it trips the
  provider's breaker and keeps the addresses.
- 429 (QUOTA_EXCEEDED): ``RateLimited`` with ``Retry-After``.
- 5xx (UNAVAILABLE, INTERNAL): ``ProviderError``, with ``Retry-After`` when given.
- The token endpoint: 429 ``RateLimited``, 5xx ``ProviderError``, any other
  refusal (invalid_grant: wrong or revoked key, clock skew) ``AuthenticationError``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from policy.types import URGENT, DeliveryTask, PushOptions
from providers.base import Receipt, seconds_left
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
from providers.http_errors import parse_retry_after
from providers.http_session import HttpSession
from providers.secrets import REDACTED, redacted, scrub

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
DEFAULT_BASE_URL = "https://fcm.googleapis.com"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
JWT_LIFETIME_S = 3600
# Keys FCM keeps for itself in ``data`` (it refuses them with INVALID_ARGUMENT).
RESERVED_DATA_KEYS = frozenset({"from", "notification", "message_type"})
RESERVED_DATA_PREFIXES = ("google", "gcm")
_encoder = msgspec.json.Encoder()


def parse_error(payload: bytes) -> tuple[str | None, str | None, str | None]:
    """``(status, message, errorCode)`` of a Google API error body
    ``{"error": {"code", "message", "status", "details": [...]}}``; errorCode is
    from the FcmError detail. All None when the body is not of that form."""
    try:
        err = msgspec.json.decode(payload)["error"]
        if not isinstance(err, dict):
            return None, None, None
    except (msgspec.DecodeError, KeyError, TypeError):
        return None, None, None
    code = None
    for detail in err.get("details") or ():
        if isinstance(detail, dict) and detail.get("@type") == FCM_ERROR_TYPE and detail.get("errorCode"):
            code = str(detail["errorCode"])
            break
    status = err.get("status")
    message = err.get("message")
    return (str(status) if status else None, str(message) if message is not None else None, code)


def load_service_account(name: str, settings: Mapping[str, Any]) -> dict:
    """The service account from ``service_account`` (dict or JSON text) or
    ``service_account_file``; ConfigurationError (never quoting the key) otherwise."""
    account = settings.get("service_account")
    path = settings.get("service_account_file")
    if account is not None and path is not None:
        raise ConfigurationError(f"fcm provider {name!r}: give service_account or service_account_file, not both")
    if account is None and path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                account = json.load(f)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"fcm provider {name!r}: cannot read service_account_file {path!r}: "
                                     f"{type(exc).__name__}") from None
    elif isinstance(account, str):
        try:
            account = json.loads(account)
        except ValueError:
            raise ConfigurationError(f"fcm provider {name!r}: service_account is not JSON") from None
    if account is None:
        raise ConfigurationError(f"fcm provider {name!r}: 'service_account' or 'service_account_file' is required")
    if not isinstance(account, Mapping):
        raise ConfigurationError(f"fcm provider {name!r}: service_account must be a JSON object")
    for key in ("client_email", "private_key"):
        if not account.get(key) or not isinstance(account[key], str):
            raise ConfigurationError(f"fcm provider {name!r}: service account has no {key!r}")
    return dict(account)


def rich(msg: dict[str, Any], push: PushOptions) -> None:
    """The rich fields, each where FCM's v1 message has it: the image on the
    notification; sound, tag (the thread) and click action (the category, where
    Android apps route action buttons) for Android; badge, sound, thread and
    category in the ``aps`` of APNs tokens behind FCM."""
    if push.image:
        msg["notification"]["image"] = push.image
    android: dict[str, Any] = {}
    aps: dict[str, Any] = {}
    if push.sound:
        android["sound"], aps["sound"] = push.sound, push.sound
    if push.thread:
        android["tag"], aps["thread-id"] = push.thread, push.thread
    if push.category:  # Android opens the activity whose intent filter names it: only the app's own
        android["click_action"] = push.category
    if push.category or push.actions:
        aps["category"] = push.category or "tidings." + ".".join(a.id for a in push.actions)
    if push.badge is not None:
        android["notification_count"], aps["badge"] = push.badge, push.badge
    if push.image:
        aps["mutable-content"] = 1
    if android:
        msg["android"]["notification"] = android
    if aps:
        msg["apns"]["payload"] = {"aps": aps}


class FcmProvider(HttpSession):
    """Provider for ``channel = "push"``; see the module docstring for settings
    and errors. ``send`` returns ``Receipt(message_id=<the message's name>)``,
    e.g. ``projects/p/messages/0:1500415314455276%31bd1c96``."""

    channel = "push"
    service = "fcm"  # the device tokens it takes (policy/devices.py)

    def __init__(self, name: str, settings: dict):
        self.name = name
        account = load_service_account(name, settings)
        try:
            key = serialization.load_pem_private_key(account["private_key"].encode(), password=None)
        except (ValueError, TypeError):
            raise ConfigurationError(f"fcm provider {name!r}: the service account's private_key is not a "
                                     "PEM private key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigurationError(f"fcm provider {name!r}: the service account's private_key is not RSA")
        self._key = key
        self.client_email: str = account["client_email"]
        self.key_id: str | None = account.get("private_key_id") or None
        self.project_id = settings.get("project_id") or account.get("project_id")
        if not self.project_id or not isinstance(self.project_id, str):
            raise ConfigurationError(f"fcm provider {name!r}: 'project_id' is required (setting or service account)")
        self.token_uri = str(settings.get("token_uri") or account.get("token_uri") or DEFAULT_TOKEN_URI)
        self.base_url = str(settings.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        for what, url in (("base_url", self.base_url), ("token_uri", self.token_uri)):
            if not url.startswith(("http://", "https://")):
                raise ConfigurationError(f"fcm provider {name!r}: {what} must start with http:// or https://")
        self.endpoint = f"{self.base_url}/v1/projects/{self.project_id}/messages:send"
        self.timeout_s = float(settings.get("timeout_s", 10))
        self.max_connections = int(settings.get("max_connections", 100))
        self.refresh_margin_s = float(settings.get("refresh_margin_s", 300))
        self.validate_only = bool(settings.get("validate_only", False))
        self.settings = redacted(settings, "service_account")
        if "service_account" in settings:  # which account, without its key
            self.settings["service_account"] = {"client_email": self.client_email, "private_key": REDACTED}
        self.clock = time.monotonic  # token expiry; tests replace it
        self.token_requests = 0
        self._token: str | None = None
        self._token_refresh_at = 0.0
        self._token_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    # -- the message ----------------------------------------------------------

    def message(self, task: DeliveryTask) -> dict:
        """The ``messages:send`` body for ``task``; InvalidMessage for what FCM
        would refuse for certain (no token, nothing to show or deliver, a
        reserved data key, data that is not JSON)."""
        if not task.address or not task.address.strip():
            raise InvalidMessage("fcm: the task has no registration token")
        c = task.content
        msg: dict[str, Any] = {"token": task.address}
        notification = {k: v for k, v in (("title", c.subject), ("body", c.text)) if v}
        data = self.data(c.data)
        if not notification and not data:
            raise InvalidMessage("fcm: push needs a title, a body or data")
        if notification:
            msg["notification"] = notification
        if data:
            msg["data"] = data
        high = task.priority in URGENT
        msg["android"] = {"priority": "high" if high else "normal"}
        if notification:
            msg["apns"] = {"headers": {"apns-priority": "10" if high else "5"}}
        else:  # data only: an iOS background push must be priority 5
            msg["apns"] = {"headers": {"apns-priority": "5", "apns-push-type": "background"},
                           "payload": {"aps": {"content-available": 1}}}
        left = seconds_left(task)
        if left is not None:  # what is left of its life: Android's ttl, the iOS expiration (epoch seconds)
            msg["android"]["ttl"] = f"{left}s"
            msg["apns"]["headers"]["apns-expiration"] = str(int(time.time()) + left)
            msg["webpush"] = {"headers": {"TTL": str(left)}}  # a token of a web app
        if task.collapse_key is not None:
            msg["android"]["collapse_key"] = task.collapse_key
            msg["apns"]["headers"]["apns-collapse-id"] = task.collapse_key
        if task.push is not None and notification:
            rich(msg, task.push)
        doc: dict[str, Any] = {"message": msg}
        if self.validate_only:
            doc["validate_only"] = True
        return doc

    @staticmethod
    def data(data: Mapping[str, Any]) -> dict[str, str]:
        """FCM ``data`` (string to string) from ``content.data``."""
        out = {}
        for key, value in data.items():
            key = str(key)
            if key in RESERVED_DATA_KEYS or key.startswith(RESERVED_DATA_PREFIXES):
                raise InvalidMessage(f"fcm: data key {key!r} is reserved by FCM")
            if isinstance(value, str):
                out[key] = value
            else:
                try:
                    out[key] = _encoder.encode(value).decode()
                except (TypeError, ValueError, OverflowError) as exc:
                    raise InvalidMessage(f"fcm: data value for {key!r} is not JSON-encodable: {exc}") from None
        return out

    # -- sending --------------------------------------------------------------

    async def send(self, task: DeliveryTask) -> Receipt:
        """Send one push for ``task``; see the class docstring."""
        body = _encoder.encode(self.message(task))
        token = await self.access_token()
        status, headers, payload = await self._post(body, token)
        if status == 401 and parse_error(payload)[2] != "THIRD_PARTY_AUTH_ERROR":
            self._invalidate(token)
            token = await self.access_token()
            status, headers, payload = await self._post(body, token)
        if 200 <= status < 300:
            try:
                name = msgspec.json.decode(payload).get("name")
            except (msgspec.DecodeError, AttributeError):
                name = None
            return Receipt(message_id=str(name) if name else None)
        raise self.error(status, headers, payload)

    async def _post(self, body: bytes, token: str) -> tuple[int, Mapping[str, str], bytes]:
        session = await self.session()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=UTF-8"}
        try:
            async with session.post(self.endpoint, data=body, headers=headers, allow_redirects=False) as resp:
                payload = await resp.read()  # to the end: the connection goes back to the pool
                return resp.status, resp.headers, payload
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise NetworkError(self._scrub(f"fcm {self.endpoint}: {type(exc).__name__}: {exc}")) from exc

    def error(self, status: int, headers: Mapping[str, str], payload: bytes) -> DeliveryError:
        """The error for a non-2xx ``messages:send`` answer (module docstring)."""
        gstatus, message, code = parse_error(payload)
        google = gstatus is not None or message is not None
        if message is None:
            message = payload[:200].decode("utf-8", "replace").strip()
        what = code or gstatus
        text = self._scrub(f"fcm HTTP {status}" + (f" {what}" if what else "") + (f": {message}" if message else ""))
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if code == "UNREGISTERED":
            return AddressGone(text, status=status)
        if status == 404:  # no FcmError UNREGISTERED: a wrong project_id or base_url, not a dead token
            hint = "is project_id right?" if google else "not an FCM answer: is base_url right?"
            return ConfigurationError(f"{text} ({hint})", status=status)
        if code in ("SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR") or status in (401, 403):
            return AuthenticationError(text, status=status)
        if status == 429 or code == "QUOTA_EXCEEDED":
            return RateLimited(text, status=status, retry_after=retry_after)
        if status >= 500 or code in ("UNAVAILABLE", "INTERNAL"):
            return ProviderError(text, status=status, retry_after=retry_after)
        if code == "INVALID_ARGUMENT" or status == 400:
            return InvalidMessage(text, status=status)
        if status == 408:
            return NetworkError(text, status=status)
        return InvalidMessage(text, status=status)  # other 4xx; 3xx (redirects are not followed)

    # -- the OAuth 2.0 access token ------------------------------------------

    def assertion(self, now: float | None = None) -> str:
        """The signed JWT exchanged for an access token."""
        iat = int(time.time() if now is None else now)
        claims = {"iss": self.client_email, "scope": SCOPE, "aud": self.token_uri, "iat": iat,
                  "exp": iat + JWT_LIFETIME_S}
        headers = {"kid": self.key_id} if self.key_id else None
        return jwt.encode(claims, self._key, algorithm="RS256", headers=headers)

    async def access_token(self) -> str:
        """The cached access token, fetched first when there is none or it is
        about to expire; concurrent callers share one fetch."""
        token = self._token
        if token is not None and self.clock() < self._token_refresh_at:
            return token
        async with self._token_lock:
            token = self._token
            if token is not None and self.clock() < self._token_refresh_at:
                return token
            return await self._fetch_token()

    def _invalidate(self, token: str) -> None:
        """Forget ``token`` (refused by FCM) unless another send already replaced it."""
        if self._token == token:
            self._token = None

    async def _fetch_token(self) -> str:
        session = await self.session()
        form = {"grant_type": GRANT_TYPE, "assertion": self.assertion()}
        self.token_requests += 1
        try:
            async with session.post(self.token_uri, data=form, allow_redirects=False) as resp:
                payload = await resp.read()
                status, headers = resp.status, resp.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise NetworkError(self._scrub(f"fcm token {self.token_uri}: {type(exc).__name__}: {exc}")) from exc
        try:
            doc = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            doc = None
        if not isinstance(doc, dict):
            doc = {}
        if status == 200:
            token, expires_in = doc.get("access_token"), doc.get("expires_in", 3600)
            if not isinstance(token, str) or not token or not isinstance(expires_in, (int, float)):
                raise ProviderError(f"fcm token {self.token_uri}: 200 without access_token/expires_in", status=status)
            margin = min(self.refresh_margin_s, expires_in / 2)
            self._token, self._token_refresh_at = token, self.clock() + expires_in - margin
            return token
        snippet = " ".join(str(doc[k]) for k in ("error", "error_description") if doc.get(k)) \
            or payload[:200].decode("utf-8", "replace").strip()
        text = scrub(f"fcm token endpoint HTTP {status}: {snippet}", form["assertion"], self._token or "")
        if status == 429:
            raise RateLimited(text, status=status, retry_after=parse_retry_after(headers.get("Retry-After")))
        if status >= 500:
            raise ProviderError(text, status=status, retry_after=parse_retry_after(headers.get("Retry-After")))
        if status == 408:
            raise NetworkError(text, status=status)
        # invalid_grant (wrong or revoked key, clock skew), invalid_client, ...:
        # a refused grant, never a verdict on the message.
        raise AuthenticationError(text, status=status)

    def _scrub(self, text: str) -> str:
        return scrub(text, self._token or "")


__all__ = ["GRANT_TYPE", "SCOPE", "FcmProvider", "load_service_account", "parse_error"]
