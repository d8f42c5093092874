"""Mobile push through the Apple Push Notification service (HTTP/2, token
authentication) with aioapns.

Settings:

- ``key`` (the .p8 signing key's PEM text) or ``key_file`` (its path): an EC
  P-256 private key; never put in an error message or in ``settings``.
- ``key_id`` (the key's 10-character id, the JWT's ``kid``) and ``team_id``
  (the JWT's ``iss``): required.
- ``topic`` (required): the app's bundle id, sent as ``apns-topic``.
- ``sandbox`` (false): Apple's development server instead of production.
- ``host`` and ``port`` (443): another server than Apple's, e.g. a loopback
  look-alike in tests; ``ca_file``: PEM certificates to trust for it instead of
  the system's.
- ``timeout_s`` (10, connecting), ``max_connections`` (10, HTTP/2 connections;
  each carries up to the server's MAX_CONCURRENT_STREAMS requests). The whole
  call is bounded by the ChannelShard.
- ``max_payload_bytes`` (4096, Apple's limit for a regular push): a larger
  payload is refused before sending.
- ``sound``: ``aps.sound`` for visible pushes (e.g. "default"); none when unset.

A task's ``address`` is the device token (hex). ``content.subject``/``text``
become ``aps.alert.title``/``body`` (an ``alert`` push; ``html`` is not used) and
``content.data`` keys go next to ``aps`` in the payload. With data only it is a
``background`` push (``content-available``, priority 5, as Apple requires);
otherwise ``priority`` high/critical sends ``apns-priority`` 10, others 5.
``send`` returns ``Receipt(message_id=<apns-id>)``. A task with an end of life
(``expires_at``: the request's ``ttl_s`` or an ``expiry`` rule) sends
``apns-expiration`` (APNs drops it then instead of storing it for up to 30
days), and its ``collapse_key`` is ``apns-collapse-id``.

Errors (``:status`` and the JSON ``reason``):

- 410 (Unregistered, ExpiredToken) and 400 BadDeviceToken: ``AddressGone``.
  BadDeviceToken also means a token of the other environment, so ``sandbox``
  must match the app build, or tokens are dropped.
- Other 400 (BadTopic, DeviceTokenNotForTopic, BadPriority...), 404, 405, 413
  PayloadTooLarge: ``InvalidMessage``.
- 403 ExpiredProviderToken / InvalidProviderToken: a new provider token is made
  and the send repeated once (APNs refused it: nothing was delivered), then
  ``AuthenticationError``; other 403: ``AuthenticationError`` at once.
- 429 (TooManyRequests, TooManyProviderTokenUpdates): ``RateLimited``
  (``Retry-After`` when the server sends one; Apple documents none).
- 500, 503 (ServiceUnavailable, Shutdown): ``ProviderError``.
- No connection, a connection lost or a stream reset before the answer:
  ``NetworkError``.

How aioapns is used: its ``APNsBaseConnectionPool`` (connections, one per
``max_connections``), ``APNsTLSClientProtocol`` (HTTP/2 over TLS with h2, the
request headers, stream ids bounded by the server's MAX_CONCURRENT_STREAMS, the
idle timeout) and ``AuthorizationHeaderProvider``. aioapns takes Apple's host and
port from class attributes of its protocol class (``APNS_SERVER``,
``APNS_PORT``) and has no setting for them, so the pool here uses a subclass with
the configured ones. The subclass also reads responses itself, where aioapns
(4.0) would hang or misbehave: it acknowledges received DATA (aioapns never
does, so after 64 KiB of error bodies on one connection the flow-control window
is spent and answers stop: aioapns PR #75), keeps a body split over several DATA
frames, resolves an error without a body and a reset stream, and forgets a
request whose caller was cancelled (aioapns would call ``set_result`` on the
cancelled future). The pool is driven directly rather than through
``aioapns.APNs``, whose ``send_notification`` retries with one-second sleeps
(sends here never retry) and logs every refusal as an error.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from functools import partial
from typing import Any

import h2.exceptions
import jwt
from aioapns.common import PRIORITY_HIGH, PRIORITY_NORMAL, NotificationRequest, NotificationResult, PushType
from aioapns.connection import (
    APNsBaseConnectionPool,
    APNsDevelopmentClientProtocol,
    APNsProductionClientProtocol,
    APNsTLSClientProtocol,
    AuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed, ConnectionError as ApnsConnectionError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)

from policy.types import URGENT, DeliveryTask
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
from providers.secrets import redacted

DEFAULT_MAX_PAYLOAD = 4096
TOKEN_TTL_S = 30 * 60  # Apple: refresh no more often than every 20 min, no less than every 60 min
REFRESH_REASONS = frozenset({"ExpiredProviderToken", "InvalidProviderToken"})
GONE_REASONS = frozenset({"BadDeviceToken"})
_HEX = frozenset("0123456789abcdefABCDEF")


class ProviderToken(AuthorizationHeaderProvider):
    """The ``authorization: bearer <JWT>`` header (ES256, ``kid`` = key id,
    ``iss`` = team id, ``iat``), shared by every connection of one provider and
    made anew every ``TOKEN_TTL_S`` or when ``refresh`` is told it was refused."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str, clock=time.time):
        self.key, self.key_id, self.team_id, self.clock = key, key_id, team_id, clock
        self._header: str | None = None
        self._issued_at = 0.0
        self.issued = 0

    def get_header(self) -> str:
        now = self.clock()
        if self._header is None or now - self._issued_at >= TOKEN_TTL_S:
            self._issued_at = now
            token = jwt.encode({"iss": self.team_id, "iat": int(now)}, self.key, algorithm="ES256",
                               headers={"kid": self.key_id})
            self._header = f"bearer {token}"
            self.issued += 1
        return self._header

    def refresh(self, refused: str) -> None:
        """Make a new token on next use, unless ``refused`` was already replaced
        (by a concurrent send that saw the same refusal)."""
        if self._header == refused:
            self._header = None


class ApnsResult(NotificationResult):
    """aioapns's result plus the response headers."""

    __slots__ = ("headers",)

    def __init__(self, notification_id: str, status: str, description: str | None = None,
                 timestamp: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(notification_id, status, description, timestamp)
        self.headers = headers or {}


class _Connection(APNsTLSClientProtocol):
    """aioapns's HTTP/2 connection, reading responses per stream (see the module
    docstring for why). Subclassed per provider with ``APNS_SERVER``/``APNS_PORT``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._responses: dict[int, tuple[dict[str, str], bytearray]] = {}

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        try:
            return await super().send_notification(request)
        except BaseException:
            # Cancelled (or failed) before the answer: forget the future, or the
            # answer would be set on a cancelled one.
            self.requests.pop(request.notification_id, None)
            raise

    def connection_lost(self, exc: Exception | None) -> None:
        for notification_id in [n for n, f in self.requests.items() if f.done()]:
            del self.requests[notification_id]  # aioapns sets an exception on every pending future
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            self.close()
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                headers = {k.decode("latin-1") if isinstance(k, bytes) else k:
                           v.decode("latin-1") if isinstance(v, bytes) else v for k, v in event.headers}
                self._responses[event.stream_id] = (headers, bytearray())
            elif isinstance(event, DataReceived):
                entry = self._responses.get(event.stream_id)
                if entry is not None:
                    entry[1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                self._finish(event.stream_id)
                self.on_stream_ended(event.stream_id)
            elif isinstance(event, StreamReset):
                self._finish(event.stream_id, reset=event.error_code)
                self.free_channels.release()
            elif isinstance(event, RemoteSettingsChanged):
                self.on_remote_settings_changed(event.changed_settings)
            elif isinstance(event, ConnectionTerminated):
                self.on_connection_terminated(event)
        if self.transport is not None and not self.transport.is_closing():
            self.flush()

    def _finish(self, stream_id: int, reset: Any = None) -> None:
        notification_id = self.request_streams.pop(stream_id, None)
        headers, body = self._responses.pop(stream_id, ({}, bytearray()))
        if notification_id is None:
            return
        self.request_statuses.pop(notification_id, None)
        future = self.requests.pop(notification_id, None)
        if future is None or future.done():
            return
        if reset is not None:
            future.set_exception(ConnectionClosed(f"stream reset by the server ({reset})"))
            return
        reason, timestamp = None, None
        if body:
            try:
                doc = json.loads(body.decode("utf-8"))
                reason, timestamp = doc.get("reason"), doc.get("timestamp")
            except (ValueError, UnicodeDecodeError, AttributeError):
                reason = bytes(body[:200]).decode("utf-8", "replace")
        future.set_result(ApnsResult(headers.get("apns-id") or notification_id, headers.get(":status", ""),
                                     reason, timestamp, headers))


class _Pool(APNsBaseConnectionPool):
    """aioapns's connection pool with one shared provider token, a connect
    timeout, the configured server and the last connect error kept."""

    def __init__(self, *, auth: ProviderToken, host: str, port: int, connect_timeout_s: float,
                 ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.auth = auth
        self.ssl_context = ssl_context
        self.protocol_class = type("ApnsConnection", (_Connection,), {"APNS_SERVER": host, "APNS_PORT": port})
        self.connect_timeout_s = connect_timeout_s
        self.last_error: BaseException | None = None

    async def create_connection(self) -> _Connection:  # type: ignore[override]
        factory = partial(self.protocol_class, self.apns_topic, self.loop, self.discard_connection, self.auth)
        try:
            _, protocol = await asyncio.wait_for(
                self.loop.create_connection(factory, host=self.protocol_class.APNS_SERVER,
                                            port=self.protocol_class.APNS_PORT, ssl=self.ssl_context),
                self.connect_timeout_s)
        except Exception as exc:
            self.last_error = exc
            raise
        return protocol  # type: ignore[return-value]

    def discard_connection(self, connection) -> None:
        if connection in self.connections:
            super().discard_connection(connection)


def _load_key(name: str, settings: dict) -> ec.EllipticCurvePrivateKey:
    key, path = settings.get("key"), settings.get("key_file")
    if key is not None and path is not None:
        raise ConfigurationError(f"apns provider {name!r}: give key or key_file, not both")
    if key is None and path is not None:
        try:
            with open(path, "rb") as f:
                key = f.read()
        except OSError as exc:
            raise ConfigurationError(f"apns provider {name!r}: cannot read key_file {path!r}: "
                                     f"{type(exc).__name__}") from None
    if not key:
        raise ConfigurationError(f"apns provider {name!r}: 'key' or 'key_file' (the .p8 signing key) is required")
    try:
        loaded = serialization.load_pem_private_key(key.encode() if isinstance(key, str) else key, password=None)
    except (ValueError, TypeError):
        raise ConfigurationError(f"apns provider {name!r}: the signing key is not a PEM private key") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(loaded.curve, ec.SECP256R1):
        raise ConfigurationError(f"apns provider {name!r}: the signing key is not an EC P-256 key")
    return loaded


class ApnsProvider:
    """Provider for ``channel = "push"``; see the module docstring."""

    channel = "push"
    service = "apns"  # the device tokens it takes (policy/devices.py)

    def __init__(self, name: str, settings: dict):
        self.name = name
        self._key = _load_key(name, settings)
        for field in ("key_id", "team_id", "topic"):
            value = settings.get(field)
            if not value or not isinstance(value, str):
                raise ConfigurationError(f"apns provider {name!r}: {field!r} is required")
        self.key_id: str = settings["key_id"]
        self.team_id: str = settings["team_id"]
        self.topic: str = settings["topic"]
        self.sandbox = bool(settings.get("sandbox", False))
        default = APNsDevelopmentClientProtocol if self.sandbox else APNsProductionClientProtocol
        self.host = str(settings.get("host") or default.APNS_SERVER)
        try:
            self.port = int(settings.get("port") or default.APNS_PORT)
        except (TypeError, ValueError):
            raise ConfigurationError(f"apns provider {name!r}: port must be a number") from None
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"apns provider {name!r}: port out of range")
        self.ca_file: str | None = settings.get("ca_file")
        self.timeout_s = float(settings.get("timeout_s", 10))
        self.max_connections = int(settings.get("max_connections", 10))
        if self.max_connections < 1:
            raise ConfigurationError(f"apns provider {name!r}: max_connections must be >= 1")
        self.max_payload_bytes = int(settings.get("max_payload_bytes", DEFAULT_MAX_PAYLOAD))
        self.sound: str | None = settings.get("sound")
        self.settings = redacted(settings, "key")
        self.auth = ProviderToken(self._key, self.key_id, self.team_id)
        self._pool: _Pool | None = None

    # -- lifecycle --------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"apns provider {self.name!r}: cannot load ca_file {self.ca_file!r}: "
                                     f"{exc}") from None
        ctx.set_alpn_protocols(["h2"])
        return ctx

    async def start(self) -> None:
        """Make the connection pool (idempotent); connections open on first use.
        Must run in the event loop that sends (aioapns binds the pool to it)."""
        if self._pool is None:
            self._pool = _Pool(auth=self.auth, host=self.host, port=self.port, connect_timeout_s=self.timeout_s,
                               ssl_context=self.ssl_context(), topic=self.topic,
                               max_connections=self.max_connections, max_connection_attempts=1,
                               use_sandbox=self.sandbox)

    async def close(self) -> None:
        """Close every connection."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # -- the notification -------------------------------------------------------

    def payload(self, task: DeliveryTask) -> tuple[dict, PushType, int]:
        """``(payload, push type, apns-priority)`` for ``task``; InvalidMessage for
        what APNs would refuse for certain."""
        token = task.address
        if not token or not set(token) <= _HEX:
            raise InvalidMessage(f"apns: device token is not hex: {token[:80]!r}")
        c = task.content
        alert = {k: v for k, v in (("title", c.subject), ("body", c.text)) if v}
        if "aps" in c.data:
            raise InvalidMessage("apns: data key 'aps' is reserved by APNs")
        rich = task.push
        if alert:
            aps: dict[str, Any] = {"alert": alert}
            sound = rich.sound if rich is not None and rich.sound else self.sound
            if sound:
                aps["sound"] = sound
            if rich is not None:
                if rich.thread:
                    aps["thread-id"] = rich.thread
                if rich.category or rich.actions:  # the buttons are the app's, registered under a category
                    aps["category"] = rich.category or "tidings." + ".".join(a.id for a in rich.actions)
                if rich.image:  # shown by the app's notification service extension
                    aps["mutable-content"] = 1
            push_type = PushType.ALERT
            priority = PRIORITY_HIGH if task.priority in URGENT else PRIORITY_NORMAL
        elif c.data:
            aps, push_type, priority = {"content-available": 1}, PushType.BACKGROUND, PRIORITY_NORMAL
        else:
            raise InvalidMessage("apns: push needs a title, a body or data")
        if rich is not None and rich.badge is not None and alert:  # a background push carries only content-available
            aps["badge"] = rich.badge
        payload = {"aps": aps, **c.data}
        if rich is not None and rich.image and alert:
            payload.setdefault("image", rich.image)
        try:
            size = len(json.dumps(payload, ensure_ascii=False).encode())  # as aioapns encodes it
        except (TypeError, ValueError) as exc:
            raise InvalidMessage(f"apns: payload is not JSON-encodable: {exc}") from None
        if size > self.max_payload_bytes:
            raise InvalidMessage(f"apns: payload of {size} bytes exceeds {self.max_payload_bytes}")
        return payload, push_type, int(priority)

    # -- sending -----------------------------------------------------------------

    async def send(self, task: DeliveryTask) -> Receipt:
        """Send one push for ``task``; see the module docstring."""
        payload, push_type, priority = self.payload(task)
        if self._pool is None:
            await self.start()
        used = self.auth.get_header()
        result = await self._send_once(task, payload, push_type, priority)
        if result.status == "403" and result.description in REFRESH_REASONS:
            self.auth.refresh(used)
            result = await self._send_once(task, payload, push_type, priority)
        if result.status == "200":
            return Receipt(message_id=result.notification_id)
        raise self.error(result)

    async def _send_once(self, task: DeliveryTask, payload: dict, push_type: PushType,
                         priority: int) -> NotificationResult:
        pool = self._pool
        assert pool is not None
        # A fresh apns-id per request: aioapns matches answers to requests by it. It sends
        # apns-expiration as its clock now + time_to_live.
        request = NotificationRequest(device_token=task.address, message=payload, notification_id=str(uuid.uuid4()),
                                      priority=priority, push_type=push_type, time_to_live=seconds_left(task),
                                      collapse_key=task.collapse_key)
        where = f"apns {self.host}:{self.port}"
        try:
            connection = await pool.acquire()
        except ApnsConnectionError:
            cause = pool.last_error
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else "connection failed"
            raise NetworkError(f"{where}: cannot connect: {detail}") from cause
        try:
            return await connection.send_notification(request)
        except ConnectionClosed as exc:
            raise NetworkError(f"{where}: connection closed before the answer: {exc}") from exc
        except h2.exceptions.NoAvailableStreamIDError as exc:
            connection.close()
            raise NetworkError(f"{where}: connection out of stream ids") from exc
        except (h2.exceptions.H2Error, OSError) as exc:
            connection.close()
            raise NetworkError(f"{where}: {type(exc).__name__}: {exc}") from exc

    def error(self, result: NotificationResult) -> DeliveryError:
        """The error for a refused notification (module docstring)."""
        status = int(result.status) if str(result.status).isdigit() else 0
        reason = result.description or ""
        text = f"apns HTTP {result.status or '?'}" + (f" {reason}" if reason else "")
        if status == 410 or (status == 400 and reason in GONE_REASONS):
            return AddressGone(text, status=status)
        if status == 403:
            return AuthenticationError(text, status=status)
        if status == 429:
            headers = getattr(result, "headers", {}) or {}
            return RateLimited(text, status=status, retry_after=parse_retry_after(headers.get("retry-after")))
        if status >= 500 or status == 0:
            return ProviderError(text, status=status or None)
        return InvalidMessage(text, status=status)


__all__ = ["ApnsProvider", "ApnsResult", "ProviderToken"]
