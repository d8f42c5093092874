"""Web Push (RFC 8030) to a browser's push service with aiohttp: the payload is
encrypted with ``aes128gcm`` (RFC 8291 / RFC 8188) by ``http_ece`` and the
request carries a VAPID (RFC 8292) ``Authorization: vapid t=<jwt>, k=<key>``
signed by ``py_vapid``.

The task address is the browser's ``PushSubscription`` as JSON text
(``JSON.stringify(subscription)``)::

    {"endpoint": "https://...", "expirationTime": null,
     "keys": {"p256dh": "<base64url>", "auth": "<base64url>"}}

The payload is the JSON ``{"title": subject, "body": text, "data": data, "id":
notification_id}`` (with a request's rich fields: ``image``, ``badge_count``,
``tag`` (the thread), ``actions`` ``[{"action", "title"}]``, as the service
worker's ``showNotification`` takes them) (one record of at most 3993 bytes, so that the encrypted body
fits the 4096 bytes every push service must accept; checked before any request).

Settings:

- ``vapid_private_key`` (required): the application server's P-256 key, as PEM
  (PKCS#8 or SEC1) or as the raw 32-byte private value in base64url (what
  ``vapid --gen`` / web-push tools print; base64 DER works too). Never logged nor
  put in an error message; ``settings`` keeps it redacted.
- ``vapid_subject`` (required): ``mailto:<address>`` or an ``https://`` URL, the
  JWT ``sub`` claim a push service uses to reach the sender.
- ``ttl_s`` (86400): the ``TTL`` header, seconds the push service may keep the
  message while the browser is offline (0: deliver now or drop).
- ``urgency``: a mapping from task priority to the RFC 8030 ``Urgency`` header
  (``very-low``, ``low``, ``normal``, ``high``), merged over the default
  ``{"low": "low", "normal": "normal", "high": "high", "critical": "high"}``;
  a priority not in it gets ``normal``.
- ``timeout_s`` (10, connecting), ``max_connections`` (100, pool size); the whole
  call is bounded by the ChannelShard, as for the other HTTP providers.
- ``destination_timeout_s`` (0.8 × this ``timeout_s`` setting, else 8): the whole
  request to an endpoint. Set the ChannelShard's per-call ``timeout_s`` (the
  provider's own, outside ``settings``) above it, so a hanging endpoint ends as
  that destination's failure rather than as a timeout of the provider (which
  counts against the shared breaker). A timed-out request may have been received
  and is retried: the push service may then get (and the browser show) the same
  message twice; a ``webpush_topic`` (below) collapses such copies.
- ``destination_breaker_failures`` (5), ``destination_breaker_cooloff_s`` (30),
  ``destination_breakers_max`` (10000): the per-endpoint breakers, as for user
  webhook URLs (``providers.webhook.http``).
- ``vapid_expiry_s`` (43200): lifetime of the VAPID JWT (at most 86400, RFC
  8292's limit); a signed token is reused per push service origin for half of it.
- ``allow_http`` (false): accept ``http://`` endpoints (loopback tests and the
  demo sink only; browsers hand out ``https://`` endpoints).
- ``egress_allow`` ([]): CIDRs an endpoint may resolve to although they are
  internal, e.g. ``["127.0.0.0/8", "::1/128"]`` for a loopback push service in
  tests and benchmarks; production leaves it empty.

The endpoint comes from the user's browser, so every request goes through the
SSRF guard (``providers.egress``): an endpoint whose host is (or resolves only
to) a private, loopback, link-local, ... address outside ``egress_allow`` is
refused with ``DestinationRefused`` before anything is sent; redirects are not
followed; at most ``providers.egress.MAX_READ`` bytes of an answer are read and
error texts carry its status, never its body.

For the same reason an endpoint's failures are its own, not the provider's: a
timeout, a connection error, 408, 429 and 5xx raise ``DestinationError`` (reason
``destination_error``, retried, released from the provider's shared breaker) and
count against that endpoint's breaker (``scheme://host:port``); after
``destination_breaker_failures`` in a row it is refused with
``DestinationCircuitOpen`` for the cool-off, then one probe goes through. A
server a user controls that hangs or answers 5xx therefore never opens the
shared breaker for every other user. 404/410 stay ``AddressGone`` and 401/403
``AuthenticationError`` (VAPID refused).

A task whose ``metadata`` has ``webpush_topic`` sends it as the RFC 8030
``Topic`` header (at most 32 base64url characters): a newer message with the
same topic replaces an undelivered older one at the push service; without it, a
task's ``collapse_key`` is the topic (``topic_for``). A task with an end of life
(``expires_at``) sends what is left of it as the ``TTL`` when that is shorter
than ``ttl_s``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import math
import re
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import http_ece
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02, jwt as vapid_jwt
from py_vapid.utils import b64urlencode

from policy.types import DeliveryTask
from providers.base import Receipt, seconds_left
from providers.egress import Destination, check_url, guarded_session, read_capped, user_destinations
from providers.errors import AddressGone, ConfigurationError, DeliveryError, DestinationError, InvalidMessage
from providers.http_errors import map_status, parse_retry_after
from providers.http_session import USER_AGENT, HttpSession
from providers.secrets import redacted, required_secret

# Every push service accepts an encrypted body of 4096 bytes (RFC 8030 7.2); the
# aes128gcm header (16 salt + 4 rs + 1 idlen + 65 key id) and one record's
# delimiter and tag (1 + 16) leave 3993 bytes of plaintext (RFC 8291 4).
MAX_BODY = 4096
MAX_PLAINTEXT = MAX_BODY - 86 - 17
RECORD_SIZE = 4096
URGENCIES = ("very-low", "low", "normal", "high")
DEFAULT_URGENCY = {"low": "low", "normal": "normal", "high": "high", "critical": "high"}
MAX_JWT_LIFETIME_S = 86400
TOPIC_KEY = "webpush_topic"


def topic_for(collapse_key: str) -> str:
    """The RFC 8030 ``Topic`` for a collapse key: the key itself when it is one
    (1-32 base64url characters), else 32 characters of its SHA-256 in base64url,
    so the same key always collapses the same pushes."""
    if _TOPIC.fullmatch(collapse_key):
        return collapse_key
    return base64.urlsafe_b64encode(hashlib.sha256(collapse_key.encode()).digest()).decode()[:32]
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_SUBJECT = re.compile(r"(mailto:[^@\s]+@[^@\s]+|https://[^\s/]+(/\S*)?)", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Subscription:
    """A parsed, checked PushSubscription."""

    endpoint: str
    origin: str  # scheme://host[:port], the VAPID ``aud``
    p256dh: ec.EllipticCurvePublicKey
    auth: bytes
    expiration_ms: float | None = None


def _b64url(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value or not _B64URL.fullmatch(value):
        raise InvalidMessage(f"web push subscription: {what} is not a base64url string")
    raw = value.rstrip("=")
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidMessage(f"web push subscription: {what} is not valid base64url") from exc


def origin_of(endpoint: str, *, allow_http: bool = False) -> str:
    """``scheme://host[:port]`` of a push endpoint (default port left out);
    InvalidMessage for anything but an absolute https (or http, when allowed) URL."""
    try:
        parts = urllib.parse.urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:
        raise InvalidMessage(f"web push subscription: endpoint is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme != "https" and not (allow_http and scheme == "http"):
        raise InvalidMessage(f"web push subscription: endpoint must be an https:// URL, not {scheme or 'relative'!r}")
    if not parts.hostname:
        raise InvalidMessage("web push subscription: endpoint has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidMessage("web push subscription: endpoint must not carry user info")
    if any(c.isspace() or ord(c) < 0x20 for c in endpoint):
        raise InvalidMessage("web push subscription: endpoint contains whitespace or control characters")
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


@functools.lru_cache(maxsize=4096)
def _parse(address: str, allow_http: bool) -> Subscription:
    try:
        doc = msgspec.json.decode(address)
    except msgspec.DecodeError as exc:
        raise InvalidMessage(f"web push address is not a PushSubscription JSON object: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidMessage("web push address is not a PushSubscription JSON object")
    endpoint = doc.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise InvalidMessage("web push subscription: 'endpoint' is missing or not a string")
    if len(endpoint) > 4096:
        raise InvalidMessage("web push subscription: 'endpoint' is longer than 4096 characters")
    origin = origin_of(endpoint, allow_http=allow_http)
    keys = doc.get("keys")
    if not isinstance(keys, dict):
        raise InvalidMessage("web push subscription: 'keys' is missing or not an object")
    p256dh = _b64url(keys.get("p256dh"), "keys.p256dh")
    if len(p256dh) != 65 or p256dh[0] != 4:
        raise InvalidMessage(f"web push subscription: keys.p256dh must be a 65-byte uncompressed P-256 point, "
                             f"got {len(p256dh)} bytes")
    try:
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except ValueError as exc:
        raise InvalidMessage("web push subscription: keys.p256dh is not a point on P-256") from exc
    auth = _b64url(keys.get("auth"), "keys.auth")
    if len(auth) != 16:
        raise InvalidMessage(f"web push subscription: keys.auth must be 16 bytes, got {len(auth)}")
    expiration = doc.get("expirationTime")
    if expiration is not None and (isinstance(expiration, bool) or not isinstance(expiration, (int, float))
                                   or not math.isfinite(expiration)):
        raise InvalidMessage("web push subscription: 'expirationTime' must be null or a number")
    return Subscription(endpoint, origin, public, auth, None if expiration is None else float(expiration))


def parse_subscription(address: str, *, allow_http: bool = False, now: float | None = None) -> Subscription:
    """The checked PushSubscription in ``address``: InvalidMessage naming what is
    wrong, AddressGone when its ``expirationTime`` has passed."""
    if not isinstance(address, str) or not address.strip():
        raise InvalidMessage("web push address is empty (expected PushSubscription JSON)")
    sub = _parse(address, allow_http)
    if sub.expiration_ms is not None and sub.expiration_ms <= (time.time() if now is None else now) * 1000:
        raise AddressGone("web push subscription has expired (expirationTime has passed)")
    return sub


def load_vapid_key(value: str) -> Vapid02:
    """A py_vapid signer for a PEM or raw base64url (or base64 DER) P-256 private
    key; ValueError (never echoing the key) when it is not one."""
    text = value.strip()
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_private_key(text.encode(), password=None)
            vapid = Vapid02(private_key=key)
        else:
            vapid = Vapid02.from_string(text)
    except Exception as exc:  # noqa: BLE001 - the libraries raise many types; none may carry the key out
        raise ValueError(f"cannot load it as a P-256 private key ({type(exc).__name__})") from None
    key = vapid.private_key
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("it is not a P-256 (prime256v1) EC private key")
    return vapid


class WebPushProvider(HttpSession):
    """Provider for ``channel = "web"``; see the module docstring for settings.

    ``send`` POSTs one encrypted message to the subscription's endpoint and
    returns ``Receipt(message_id=<Location header>)`` on 2xx (push services
    answer 201), else raises a ``providers.errors.DeliveryError``: 404/410
    AddressGone (subscription expired or unsubscribed), 400/413 and other 4xx
    InvalidMessage, 401/403 AuthenticationError (VAPID refused); 408, 429 (with
    Retry-After), 5xx and network failures DestinationError, counted against the
    endpoint's breaker (DestinationCircuitOpen while it is open). It never
    retries; redirects are not followed.
    """

    channel = "web"
    service = "webpush"  # the device tokens it takes (policy/devices.py)

    def __init__(self, name: str, settings: dict):
        self.name = name
        key = required_secret(settings, "vapid_private_key", "webpush", name)
        self.settings = redacted(settings, "vapid_private_key")
        try:
            self._vapid = load_vapid_key(key)
        except ValueError as exc:
            raise ConfigurationError(f"webpush provider {name!r}: bad vapid_private_key: {exc}") from None
        subject = settings.get("vapid_subject")
        if not isinstance(subject, str) or not _SUBJECT.fullmatch(subject):
            raise ConfigurationError(f"webpush provider {name!r}: 'vapid_subject' must be mailto:<address> "
                                     f"or an https:// URL")
        self.subject = subject
        self.ttl_s = self._int(settings, "ttl_s", 86400, low=0)
        self.vapid_expiry_s = self._int(settings, "vapid_expiry_s", 43200, low=60, high=MAX_JWT_LIFETIME_S)
        urgency = settings.get("urgency", {})
        if not isinstance(urgency, Mapping):
            raise ConfigurationError(f"webpush provider {name!r}: 'urgency' must map priorities to urgencies")
        self.urgency = {**DEFAULT_URGENCY, **urgency}
        bad = {p: u for p, u in self.urgency.items() if u not in URGENCIES}
        if bad:
            raise ConfigurationError(f"webpush provider {name!r}: urgency values must be one of "
                                     f"{', '.join(URGENCIES)}; got {bad}")
        try:
            self.timeout_s = float(settings.get("timeout_s", 10))
            self.max_connections = int(settings.get("max_connections", 100))
        except (TypeError, ValueError):
            self.timeout_s, self.max_connections = 0.0, 0
        if not self.timeout_s > 0 or self.max_connections < 1:
            raise ConfigurationError(f"webpush provider {name!r}: timeout_s must be > 0 and max_connections >= 1")
        self.allow_http = bool(settings.get("allow_http", False))
        users = user_destinations(settings, self.timeout_s, f"webpush provider {name!r}")
        self.egress, self.destination_timeout_s, self.destinations = users.egress, users.timeout_s, users.breakers
        # The applicationServerKey browsers subscribe with (base64url, uncompressed point).
        self.public_key = b64urlencode(self._vapid.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
        self._tokens: dict[str, tuple[str, float]] = {}
        self._session: aiohttp.ClientSession | None = None

    def _int(self, settings: dict, key: str, default: int, *, low: int, high: int | None = None) -> int:
        value = settings.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
                or value < low or (high is not None and value > high):
            limit = f">= {low}" + (f" and <= {high}" if high is not None else "")
            raise ConfigurationError(f"webpush provider {self.name!r}: {key!r} must be a whole number {limit}")
        return int(value)

    def authorization(self, origin: str, now: float | None = None) -> str:
        """``vapid t=<jwt>, k=<public key>`` for a push service at ``origin``
        (``aud``); a token is reused for half its lifetime."""
        now = time.time() if now is None else now
        cached = self._tokens.get(origin)
        if cached is not None and now < cached[1]:
            return cached[0]
        claims = {"aud": origin, "exp": int(now) + self.vapid_expiry_s, "sub": self.subject}
        token = vapid_jwt.sign(claims, self._vapid.private_key)
        header = f"vapid t={token}, k={self.public_key}"
        if len(self._tokens) >= 256:  # a handful of push services in practice
            self._tokens.clear()
        self._tokens[origin] = (header, now + self.vapid_expiry_s / 2)
        return header

    def plaintext(self, task: DeliveryTask) -> bytes:
        """The JSON payload for ``task``; InvalidMessage when it cannot be encoded
        or is over MAX_PLAINTEXT bytes."""
        c = task.content
        doc: dict = {"title": c.subject, "body": c.text, "data": c.data, "id": task.notification_id}
        if task.push is not None:  # the service worker passes these to showNotification (its option names)
            p = task.push
            doc.update({k: v for k, v in (("image", p.image), ("badge_count", p.badge), ("tag", p.thread))
                        if v is not None})
            if p.actions:
                doc["actions"] = [{"action": a.id, "title": a.title} for a in p.actions]
        try:
            body = _encoder.encode(doc)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidMessage(f"web push payload is not JSON-encodable: {exc}") from exc
        if len(body) > MAX_PLAINTEXT:
            raise InvalidMessage(f"web push payload is {len(body)} bytes; at most {MAX_PLAINTEXT} fit the "
                                 f"{MAX_BODY}-byte encrypted message push services accept")
        return body

    def headers(self, task: DeliveryTask, sub: Subscription) -> dict[str, str]:
        """The request headers for ``task`` (without Content-Length)."""
        left = seconds_left(task)
        headers = {
            "Authorization": self.authorization(sub.origin),
            "TTL": str(self.ttl_s if left is None else min(self.ttl_s, left)),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Urgency": self.urgency.get(task.priority, "normal"),
        }
        topic = task.metadata.get(TOPIC_KEY) if task.metadata else None
        if topic is not None:
            if not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
                raise InvalidMessage(f"web push topic (metadata {TOPIC_KEY!r}) must be 1-32 base64url characters")
            headers["Topic"] = topic
        elif task.collapse_key is not None:
            headers["Topic"] = topic_for(task.collapse_key)
        return headers

    @staticmethod
    def encrypt(plaintext: bytes, sub: Subscription, *, sender: ec.EllipticCurvePrivateKey | None = None,
                salt: bytes | None = None) -> bytes:
        """``plaintext`` as one aes128gcm record for ``sub`` (RFC 8291), with a
        fresh sender key and salt (both given only to test against RFC vectors)."""
        if sender is None:
            sender = ec.generate_private_key(ec.SECP256R1())
        return http_ece.encrypt(plaintext, private_key=sender, dh=sub.p256dh, auth_secret=sub.auth, salt=salt,
                                version="aes128gcm", rs=RECORD_SIZE)

    async def start(self) -> None:
        """Open the HTTP session (idempotent): one that only connects where the
        SSRF guard allows."""
        if self._session is None or self._session.closed:
            self._session = guarded_session(self.egress, max_connections=self.max_connections,
                                            connect_timeout_s=self.timeout_s,
                                            total_timeout_s=self.destination_timeout_s,
                                            headers={"User-Agent": USER_AGENT})

    async def send(self, task: DeliveryTask) -> Receipt:
        """Deliver ``task``; see the class docstring."""
        sub = parse_subscription(task.address, allow_http=self.allow_http)
        dest = check_url(sub.endpoint, self.egress, "web push endpoint")
        headers = self.headers(task, sub)
        body = self.encrypt(self.plaintext(task), sub)
        if len(body) > MAX_BODY:  # cannot happen with MAX_PLAINTEXT checked; kept as the real limit
            raise InvalidMessage(f"web push encrypted body is {len(body)} bytes, over {MAX_BODY}")
        session = await self.session()
        return await self.destinations.call(dest.key, "web push endpoint",
                                            lambda: self._post(session, dest, sub, headers, body))

    async def _post(self, session: aiohttp.ClientSession, dest: Destination, sub: Subscription,
                    headers: dict[str, str], body: bytes) -> Receipt | DeliveryError:
        """One POST to ``dest``: its receipt, or the error for an answer that is not
        the endpoint failing; DestinationError (raised) when it failed."""
        try:
            async with session.post(dest.url, data=body, headers=headers, allow_redirects=False) as resp:
                payload = await read_capped(resp)  # a short answer whole: the connection goes back to the pool
                if 200 <= resp.status < 300:
                    return Receipt(message_id=resp.headers.get("Location"))
                err = self.error(resp.status, resp.headers, payload, sub.origin)
                if isinstance(err, DestinationError):
                    raise err
                return err
        except aiohttp.InvalidURL as exc:
            raise InvalidMessage(f"webpush {sub.origin}: invalid endpoint URL") from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise DestinationError(f"webpush {sub.origin}: {what}") from exc

    @staticmethod
    def error(status: int, headers: Mapping[str, str], payload: bytes, origin: str = "") -> DeliveryError:
        """The error for a non-2xx answer from a push service. The endpoint is the
        user's, so the answer's body (``payload``) never goes into the text."""
        del payload
        text = f"HTTP {status}"
        prefix = f"webpush {origin}: " if origin else "webpush "
        if status in (404, 410):
            return AddressGone(f"{prefix}subscription expired or unsubscribed ({text})", status=status)
        if status == 413:
            return InvalidMessage(f"{prefix}payload too large ({text})", status=status)
        if status in (408, 429) or 500 <= status < 600:
            # the endpoint failing (the user's server, or a push service's bad
            # minute): its own breaker, never the provider's shared one
            retry_after = parse_retry_after(headers.get("Retry-After")) if status == 429 else None
            return DestinationError(f"{prefix}{text}", status=status, retry_after=retry_after)
        err = map_status(status, headers)
        err.args = (f"{prefix}{err.args[0]}",)
        return err


__all__ = ["MAX_BODY", "MAX_PLAINTEXT", "Subscription", "WebPushProvider", "load_vapid_key", "origin_of",
           "parse_subscription"]
