"""A loopback Web Push service (RFC 8030) that checks what a real one checks and
more: the VAPID JWT (RFC 8292) is verified, and the aes128gcm body (RFC 8291) is
decrypted with the subscription's private key, which the sink holds because it
creates the subscriptions (``subscribe()``), like a browser would."""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from dataclasses import dataclass, field

import http_ece
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import jwt as vapid_jwt

from sandbox.http import _HttpSink

MAX_BODY = 4096
URGENCIES = ("very-low", "low", "normal", "high")
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
_AUTH_PARAM = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=\s*([^,\s]+)\s*")


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Refused(Exception):
    """A request the push service refuses: (status, reason)."""


@dataclass
class _Sub:
    id: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    application_server_key: str | None = None
    expired: bool = False


@dataclass
class ReceivedPush:
    """One accepted push message, decrypted."""

    subscription_id: str
    payload: bytes  # the decrypted plaintext
    ttl: int
    urgency: str | None
    topic: str | None
    claims: dict = field(default_factory=dict)  # the verified VAPID JWT claims
    vapid_key: str = ""  # the k= parameter
    message_id: str = ""

    def json(self):
        """The payload decoded as JSON."""
        return json.loads(self.payload)


def parse_vapid(header: str) -> tuple[str, str]:
    """``(token, key)`` of an ``Authorization: vapid t=<jwt>, k=<key>`` header;
    _Refused(401) when it is not of that form."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "vapid":
        raise _Refused(401, "Authorization scheme must be 'vapid'")
    params = {}
    for part in rest.split(","):
        m = _AUTH_PARAM.fullmatch(part)
        if not m:
            raise _Refused(401, "malformed vapid Authorization parameters")
        params[m.group(1).lower()] = m.group(2)
    if "t" not in params or "k" not in params:
        raise _Refused(401, "vapid Authorization needs t= and k=")
    return params["t"], params["k"]


def verify_vapid(header: str, audience: str, now: float | None = None) -> tuple[dict, str]:
    """The verified claims and the ``k`` key of a VAPID header for ``audience``:
    ES256 signature by ``k``, ``aud`` = audience, ``exp`` in the future and at
    most 24 h ahead, ``sub`` a mailto: or https: URI. _Refused(401) otherwise."""
    token, key = parse_vapid(header)
    parts = token.split(".")
    if len(parts) != 3:
        raise _Refused(401, "vapid t= is not a JWT")
    try:
        jose = json.loads(_unb64u(parts[0]))
    except ValueError as exc:
        raise _Refused(401, "JWT header is not JSON") from exc
    if not isinstance(jose, dict) or jose.get("alg") != "ES256":
        raise _Refused(401, "JWT alg must be ES256")
    try:
        claims = vapid_jwt.decode(token, key)  # verifies the signature with k
    except InvalidSignature as exc:
        raise _Refused(401, "JWT signature does not verify with k") from exc
    except (ValueError, TypeError) as exc:
        raise _Refused(401, "JWT claims are not JSON") from exc
    if not isinstance(claims, dict):
        raise _Refused(401, "JWT claims are not an object")
    if claims.get("aud") != audience:
        raise _Refused(401, f"JWT aud must be {audience!r}")
    exp = claims.get("exp")
    now = time.time() if now is None else now
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or exp <= now:
        raise _Refused(401, "JWT has expired or has no exp")
    if exp > now + 86400:
        raise _Refused(401, "JWT exp is more than 24 hours ahead")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.startswith(("mailto:", "https:")):
        raise _Refused(401, "JWT sub must be a mailto: or https: URI")
    return claims, key


class WebPushSink(_HttpSink):
    """An HTTP push service with ``POST /push/{id}`` for the subscriptions it made.

    ``subscribe()`` (after ``start()``) returns a PushSubscription dict
    (``{"endpoint", "expirationTime": None, "keys": {"p256dh", "auth"}}``) whose
    private key the sink keeps; ``subscribe(application_server_key=k)`` makes a
    restricted subscription that takes only VAPID key ``k`` (else 403).
    ``expire(sub)`` makes it answer 410 from then on.

    A request is checked in this order: injected failure; unknown subscription
    404; expired 410; VAPID (``Authorization: vapid t=, k=``: ES256 signature,
    ``aud`` = this server's origin, ``exp`` within 24 h) 401, wrong key for a
    restricted subscription 403; missing or bad ``TTL``, bad ``Urgency`` or
    ``Topic``, ``Content-Encoding`` other than ``aes128gcm`` 400; body over 4096
    bytes 413; a body that does not decrypt 400. Accepted messages get 201 with
    ``Location: <url>/message/<id>`` and are kept (decrypted) in ``received``
    when ``keep_payloads``.

    Counts: ``accepted``, ``rejected`` (4xx other than injected), ``gone``
    (404/410), ``bad_vapid`` (401/403), ``failed`` (injected), ``duplicates``
    (a payload ``id`` seen before). Failure injection as WebhookSink:
    ``fail_status`` for every request, ``fail_next`` = N for only the next N; 429
    adds ``Retry-After: <retry_after>``.
    """

    _stats_name = "webpush"
    _stats_counts = ("accepted", "rejected", "gone", "bad_vapid", "failed", "duplicates")

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, keep_payloads: bool = True):
        self.host = host
        self.port = port
        self.keep_payloads = keep_payloads
        self.accepted = self.rejected = self.gone = self.bad_vapid = self.failed = self.duplicates = 0
        self.received: list[ReceivedPush] = []
        self.last_reason: str | None = None
        self.fail_status: int | None = None
        self.fail_next = 0
        self.retry_after = "1"
        self._subs: dict[str, _Sub] = {}
        self._ids: set[str] = set()
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        """The VAPID ``aud`` this service expects."""
        return self.url

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/push/{id}", self._handle)
        return app

    def subscribe(self, *, application_server_key: str | None = None, expired: bool = False) -> dict:
        """A new PushSubscription (as ``PushSubscription.toJSON()``) on this sink."""
        if self._runner is None and self.port == 0:
            raise RuntimeError("start() the sink before subscribe(): the endpoint needs its port")
        key = ec.generate_private_key(ec.SECP256R1())
        sub = _Sub(secrets.token_urlsafe(24), key, secrets.token_bytes(16), application_server_key, expired)
        self._subs[sub.id] = sub
        public = key.public_key().public_bytes(serialization.Encoding.X962,
                                               serialization.PublicFormat.UncompressedPoint)
        return {"endpoint": f"{self.url}/push/{sub.id}", "expirationTime": None,
                "keys": {"p256dh": _b64u(public), "auth": _b64u(sub.auth)}}

    def expire(self, subscription: dict | str) -> None:
        """Make a subscription (its dict or id) answer 410 Gone."""
        sid = subscription if isinstance(subscription, str) else subscription["endpoint"].rsplit("/", 1)[1]
        self._subs[sid].expired = True

    def payloads(self) -> list:
        """The decrypted payloads received, decoded as JSON."""
        return [r.json() for r in self.received]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail_status is not None:
            return self._failure()
        try:
            msg = self._accept(request, body)
        except _Refused as exc:
            status, reason = exc.args
            self.last_reason = reason
            if status in (404, 410):
                self.gone += 1
            elif status in (401, 403):
                self.bad_vapid += 1
            else:
                self.rejected += 1
            return web.json_response({"code": status, "error": reason}, status=status)
        self.accepted += 1
        if self.keep_payloads:
            self.received.append(msg)
        return web.Response(status=201, headers={"Location": f"{self.url}/message/{msg.message_id}", "TTL":
                                                 str(msg.ttl)})

    def _accept(self, request: web.Request, body: bytes) -> ReceivedPush:
        sub = self._subs.get(request.match_info["id"])
        if sub is None:
            raise _Refused(404, "no such subscription")
        if sub.expired:
            raise _Refused(410, "subscription expired")
        claims, key = verify_vapid(request.headers.get("Authorization", ""), self.origin)
        if sub.application_server_key is not None and key != sub.application_server_key:
            raise _Refused(403, "VAPID key does not match the subscription's applicationServerKey")
        try:
            ttl = int(request.headers["TTL"])
            if ttl < 0:
                raise ValueError
        except (KeyError, ValueError) as exc:
            raise _Refused(400, "missing or invalid TTL header") from exc
        urgency = request.headers.get("Urgency")
        if urgency is not None and urgency not in URGENCIES:
            raise _Refused(400, f"invalid Urgency {urgency!r}")
        topic = request.headers.get("Topic")
        if topic is not None and not _TOPIC.fullmatch(topic):
            raise _Refused(400, "invalid Topic")
        if request.headers.get("Content-Encoding", "").lower() != "aes128gcm":
            raise _Refused(400, "Content-Encoding must be aes128gcm")
        if len(body) > MAX_BODY:
            raise _Refused(413, f"payload of {len(body)} bytes is over {MAX_BODY}")
        try:
            plaintext = http_ece.decrypt(body, private_key=sub.private_key, auth_secret=sub.auth,
                                         version="aes128gcm")
        except Exception as exc:  # ECEException, ValueError, struct.error...: all a 400
            raise _Refused(400, f"body does not decrypt: {getattr(exc, 'message', type(exc).__name__)}") from exc
        try:
            nid = json.loads(plaintext).get("id")
        except (ValueError, AttributeError):
            nid = None
        if isinstance(nid, str):
            if nid in self._ids:
                self.duplicates += 1
            self._ids.add(nid)
        return ReceivedPush(sub.id, plaintext, ttl, urgency, topic, claims, key, secrets.token_urlsafe(16))

    def _failure(self) -> web.Response:
        status = self._take_failure()
        headers = {"Retry-After": self.retry_after} if status == 429 else None
        return web.json_response({"code": status, "error": "injected failure"}, status=status, headers=headers)


__all__ = ["ReceivedPush", "WebPushSink", "parse_vapid", "verify_vapid"]
