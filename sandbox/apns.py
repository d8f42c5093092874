"""A loopback server speaking the Apple Push Notification service's provider API:
HTTP/2 over TLS (h2 on asyncio), token authentication, answers as Apple documents
them (``:status``, ``apns-id``, a JSON ``{"reason": ...}`` body on errors).

At start it makes a self-signed certificate (``cryptography``) for ``localhost``
and ``127.0.0.1``; clients trust ``ca_file``. ``make_signing_key()`` makes a key
in the shape of Apple's .p8 file (PKCS#8 PEM, EC P-256).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import re
import ssl
import tempfile
import time
import uuid
from collections import Counter

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded, StreamReset, WindowUpdated
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes

MAX_PAYLOAD_BYTES = 4096
TOKEN_MAX_AGE_S = 3600
_PATH = re.compile(r"/3/device/(?P<token>[^/?]*)")
_TOKEN = re.compile(r"(?:[0-9a-fA-F]{2}){32,100}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_PUSH_TYPES = frozenset({"alert", "background", "location", "voip", "complication", "fileprovider", "mdm",
                         "liveactivity", "pushtotalk", "widgets", "controls"})
# What an injected failure answers when ``fail_reason`` is not set.
_INJECTED_REASONS = {400: "BadTopic", 403: "Forbidden", 404: "BadPath", 410: "Unregistered",
                     413: "PayloadTooLarge", 429: "TooManyRequests", 500: "InternalServerError",
                     503: "ServiceUnavailable"}


def make_signing_key() -> str:
    """A token signing key as Apple hands it out (.p8: PKCS#8 PEM, EC P-256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def self_signed_certificate(host: str) -> tuple[bytes, bytes]:
    """``(certificate PEM, key PEM)`` for ``localhost``, ``127.0.0.1`` and ``host``,
    valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        ip = ipaddress.ip_address(host)
        if str(ip) != "127.0.0.1":
            names.append(x509.IPAddress(ip))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tidings apns sink")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _public_key(key) -> ec.EllipticCurvePublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.public_key()
    data = key.encode() if isinstance(key, str) else key
    if b"PRIVATE KEY" in data:
        private = serialization.load_pem_private_key(data, password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        return private.public_key()
    public = serialization.load_pem_public_key(data)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return public


class ApnsSink:
    """An HTTP/2 TLS server with APNs' ``POST /3/device/<token>``.

    Checks, in order, answering as APNs does: ``:method`` POST (405
    MethodNotAllowed), the path (404 BadPath, 400 MissingDeviceToken), repeated
    headers (400 DuplicateHeaders), the provider token in ``authorization:
    bearer <JWT>`` (403 MissingProviderToken; InvalidProviderToken unless it is
    ES256, signed by ``key``, ``kid`` = ``key_id``, ``iss`` = ``team_id``, with
    a sane ``iat``; ExpiredProviderToken when ``iat`` is over an hour old or
    ``expire_tokens()`` was called after it was seen), then injected failures,
    then ``apns-topic`` (400 MissingTopic / BadTopic unless ``topic``),
    ``apns-id`` (a UUID, else 400 BadMessageId), ``apns-priority`` (10, 5 or 1:
    BadPriority), ``apns-push-type`` (InvalidPushType), ``apns-expiration``
    (BadExpirationDate), ``apns-collapse-id`` (64 bytes: BadCollapseId), the
    device token (64-200 hex digits: 400 BadDeviceToken; one in
    ``unregistered``: 410 Unregistered with a ``timestamp``), the payload (empty:
    400 PayloadEmpty; over 4096 bytes: 413 PayloadTooLarge; not a JSON object
    with an ``aps`` dictionary: 400 PayloadEmpty -- APNs documents no other
    reason for it). Accepted: 200, empty body. Every answer carries ``apns-id``
    (the request's, or a new UUID).

    Counts: ``requests`` (accepted), ``rejected``, ``failed`` (injected),
    ``connections``, ``tokens`` (distinct provider tokens seen), ``reasons``
    (a Counter of refusal reasons); ``bodies`` holds ``{"token", "headers",
    "payload"}`` of accepted requests when ``keep_bodies``; ``last_apns_id``.

    Failure injection: ``fail_status`` (every request after its provider token
    is checked) with ``fail_reason`` (default per status: 429 TooManyRequests,
    500 InternalServerError, 503 ServiceUnavailable, 403 Forbidden, ...);
    ``fail_next`` = N fails only the next N. ``retry_after`` (None) adds a
    ``retry-after`` header to an injected 429/503 (Apple sends none).
    ``delay_s`` (0) holds every answer that long. ``alpn`` counts connections
    by the protocol TLS negotiated ("h2", or None when the client offered none).
    """

    def __init__(self, key, key_id: str, team_id: str, topic: str, host: str = "127.0.0.1", port: int = 0, *,
                 keep_bodies: bool = False, max_concurrent_streams: int = 1000):
        self.public_key = _public_key(key)
        self.key_id, self.team_id, self.topic = key_id, team_id, topic
        self.host, self.port = host, port
        self.keep_bodies = keep_bodies
        self.max_concurrent_streams = max_concurrent_streams
        self.requests = self.rejected = self.failed = self.connections = 0
        self.reasons: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.last_apns_id: str | None = None
        self.unregistered: set[str] = set()
        self.fail_status: int | None = None
        self.fail_reason: str | None = None
        self.fail_next = 0
        self.retry_after: str | None = None
        self.delay_s = 0.0
        self.alpn: Counter[str | None] = Counter()
        self.ca_file: str | None = None
        self.cert_pem: bytes | None = None
        self._seen_tokens: set[str] = set()
        self._verified: dict[str, float] = {}  # token -> iat, checked once (APNs caches them too)
        self._expired_tokens: set[str] = set()
        self._server: asyncio.AbstractServer | None = None
        self._protocols: set[_ServerProtocol] = set()
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def tokens(self) -> int:
        return len(self._seen_tokens)

    def expire_tokens(self) -> None:
        """Every provider token seen so far is answered ExpiredProviderToken from now on."""
        self._expired_tokens |= self._seen_tokens

    def stats(self) -> dict:
        return {"sink": "apns", "requests": self.requests, "rejected": self.rejected, "failed": self.failed,
                "connections": self.connections, "tokens": self.tokens}

    async def start(self) -> None:
        """Make the certificate and listen on ``host:port`` (0: the OS picks; read ``port``)."""
        if self._server is not None:
            return
        ctx = self._tls_context()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _ServerProtocol(self), self.host, self.port, ssl=ctx)
        except BaseException:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
            raise
        self.port = self._server.sockets[0].getsockname()[1]

    def _tls_context(self) -> ssl.SSLContext:
        """A new self-signed certificate in a temporary directory (``ca_file``), and
        the server context using it (ALPN h2)."""
        self.cert_pem, key_pem = self_signed_certificate(self.host)
        self._tmp = tempfile.TemporaryDirectory(prefix="tidings-apns-sink-")
        cert_file, key_file = os.path.join(self._tmp.name, "cert.pem"), os.path.join(self._tmp.name, "key.pem")
        with open(cert_file, "wb") as f:
            f.write(self.cert_pem)
        with open(key_file, "wb") as f:
            f.write(key_pem)
        self.ca_file = cert_file
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        ctx.set_alpn_protocols(["h2"])
        return ctx

    async def stop(self) -> None:
        """Stop listening, close every connection, remove the certificate (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for protocol in list(self._protocols):
                protocol.abort()
            await server.wait_closed()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- one request ------------------------------------------------------------

    def handle(self, headers: list[tuple[str, str]], body: bytes) -> tuple[int, str | None, dict[str, str]]:
        """``(status, reason or None, extra headers)`` for one request, counted."""
        failed = self.failed
        status, reason, extra = self._decide(headers, body)
        if reason is not None:
            self.reasons[reason] += 1
            if self.failed == failed:
                self.rejected += 1
        return status, reason, extra

    def _decide(self, headers: list[tuple[str, str]], body: bytes) -> tuple[int, str | None, dict[str, str]]:
        h = {}
        duplicate = False
        for name, value in headers:
            if name in h and not name.startswith(":"):
                duplicate = True
            h[name] = value
        if h.get(":method") != "POST":
            return 405, "MethodNotAllowed", {}
        m = _PATH.fullmatch(h.get(":path", ""))
        if m is None:
            return 404, "BadPath", {}
        device = m.group("token")
        if not device:
            return 400, "MissingDeviceToken", {}
        if duplicate:
            return 400, "DuplicateHeaders", {}
        reason = self._check_token(h.get("authorization"))
        if reason is not None:
            return 403, reason, {}
        if self.fail_status is not None:
            status = self.fail_status
            reason = self.fail_reason or _INJECTED_REASONS.get(status, "InternalServerError")
            if self.fail_next > 0:
                self.fail_next -= 1
                if self.fail_next == 0:
                    self.fail_status = self.fail_reason = None
            self.failed += 1
            extra = {"retry-after": self.retry_after} if self.retry_after and status in (429, 503) else {}
            return status, reason, extra
        topic = h.get("apns-topic")
        if not topic:
            return 400, "MissingTopic", {}
        if topic != self.topic:
            return 400, "BadTopic", {}
        if "apns-id" in h and not _UUID.fullmatch(h["apns-id"]):
            return 400, "BadMessageId", {}
        if h.get("apns-priority", "10") not in ("10", "5", "1"):
            return 400, "BadPriority", {}
        push_type = h.get("apns-push-type")
        if push_type is not None and push_type not in _PUSH_TYPES:
            return 400, "InvalidPushType", {}
        if push_type == "background" and h.get("apns-priority", "10") == "10":
            return 400, "BadPriority", {}
        if "apns-expiration" in h and not h["apns-expiration"].isdigit():
            return 400, "BadExpirationDate", {}
        if len(h.get("apns-collapse-id", "").encode()) > 64:
            return 400, "BadCollapseId", {}
        if not _TOKEN.fullmatch(device):
            return 400, "BadDeviceToken", {}
        if not body:
            return 400, "PayloadEmpty", {}
        if len(body) > MAX_PAYLOAD_BYTES:
            return 413, "PayloadTooLarge", {}
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            return 400, "PayloadEmpty", {}
        if device in self.unregistered:
            return 410, "Unregistered", {}
        self.requests += 1
        if self.keep_bodies:
            self.bodies.append({"token": device, "headers": {k: v for k, v in h.items() if not k.startswith(":")},
                                "payload": payload})
        return 200, None, {}

    def _check_token(self, authorization: str | None) -> str | None:
        if not authorization:
            return "MissingProviderToken"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "MissingProviderToken"
        iat = self._verified.get(token)
        if iat is None:
            reason = self._verify(token)
            if reason is not None:
                return reason
            iat = self._verified[token]
        if token in self._expired_tokens or iat < time.time() - TOKEN_MAX_AGE_S:
            return "ExpiredProviderToken"
        return None

    def _verify(self, token: str) -> str | None:
        """None (and ``iat`` remembered) for a token signed as APNs wants, else the reason."""
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
                return "InvalidProviderToken"
            claims = jwt.decode(token, self.public_key, algorithms=["ES256"],
                                options={"require": ["iss", "iat"], "verify_iat": False})
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        iat = claims.get("iat")
        if claims.get("iss") != self.team_id or not isinstance(iat, (int, float)) or iat > time.time() + 60:
            return "InvalidProviderToken"
        self._seen_tokens.add(token)
        self._verified[token] = float(iat)
        return None


class _ServerProtocol(asyncio.Protocol):
    """One HTTP/2 connection of an ApnsSink."""

    def __init__(self, sink: ApnsSink):
        self.sink = sink
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
        self.pending: dict[int, bytes] = {}  # response bodies waiting for the client's flow-control window

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.sink.connections += 1
        ssl_object = transport.get_extra_info("ssl_object")
        self.sink.alpn[ssl_object.selected_alpn_protocol() if ssl_object is not None else None] += 1
        self.sink._protocols.add(self)
        self.conn.initiate_connection()
        self.conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self.sink.max_concurrent_streams})
        transport.write(self.conn.data_to_send())

    def connection_lost(self, exc) -> None:
        self.sink._protocols.discard(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self._write()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self.streams[event.stream_id] = (list(event.headers), bytearray())  # type: ignore[arg-type]
            elif isinstance(event, DataReceived):
                entry = self.streams.get(event.stream_id)
                if entry is not None:
                    entry[1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                entry = self.streams.pop(event.stream_id, None)
                if entry is not None and self.sink.delay_s > 0:
                    asyncio.get_running_loop().call_later(self.sink.delay_s, self._respond_later, event.stream_id,
                                                          entry[0], bytes(entry[1]))
                elif entry is not None:
                    self._respond(event.stream_id, entry[0], bytes(entry[1]))
            elif isinstance(event, StreamReset):
                self.streams.pop(event.stream_id, None)
                self.pending.pop(event.stream_id, None)
            elif isinstance(event, WindowUpdated):
                for stream_id in list(self.pending):
                    self._send_body(stream_id, self.pending.pop(stream_id))
            elif isinstance(event, ConnectionTerminated):
                self._write()
                if self.transport is not None:
                    self.transport.close()
                return
        self._write()

    def _respond_later(self, stream_id: int, headers: list[tuple[str, str]], body: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self._respond(stream_id, headers, body)
        except (StreamClosedError, ProtocolError):
            pass  # the client reset the stream meanwhile
        self._write()

    def _respond(self, stream_id: int, headers: list[tuple[str, str]], body: bytes) -> None:
        sink = self.sink
        status, reason, extra = sink.handle(headers, body)
        apns_id = dict(headers).get("apns-id")
        if not apns_id or not _UUID.fullmatch(apns_id):
            apns_id = str(uuid.uuid4())
        if status == 200:
            sink.last_apns_id = apns_id
        response = [(":status", str(status)), ("apns-id", apns_id), *extra.items()]
        if reason is None:
            self.conn.send_headers(stream_id, response, end_stream=True)
            return
        doc: dict = {"reason": reason}
        if status == 410:
            doc["timestamp"] = int(time.time() * 1000)
        self.conn.send_headers(stream_id, [*response, ("content-type", "application/json")])
        self._send_body(stream_id, json.dumps(doc).encode())

    def _send_body(self, stream_id: int, body: bytes) -> None:
        """Send as much of ``body`` as the client's window allows; the rest waits
        for a WINDOW_UPDATE (as any HTTP/2 server must)."""
        try:
            while body:
                room = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
                if room <= 0:
                    self.pending[stream_id] = body
                    return
                chunk, body = body[:room], body[room:]
                self.conn.send_data(stream_id, chunk, end_stream=not body)
        except (StreamClosedError, ProtocolError):
            self.pending.pop(stream_id, None)

    def _write(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())


__all__ = ["ApnsSink", "make_signing_key", "self_signed_certificate"]
