"""MessageBird SMS webhooks: status reports and inbound messages, signed.

MessageBird signs every webhook with a JWT in ``MessageBird-Signature-JWT``,
HMAC-SHA256/384/512 keyed by the account's signing key (not the access key),
with the claims ``iss`` ("MessageBird"), ``nbf`` and ``exp`` (the token lives a
minute), ``jti`` (unique: a replay guard), ``url_hash`` (SHA-256 hex of the full
URL called, query string included) and ``payload_hash`` (SHA-256 hex of the body,
when there is one). PyJWT checks the token; the hashes are compared here.

A status report is a GET with ``id`` (the message), ``reference`` (ours: the
notification id), ``recipient``, ``status`` (scheduled, sent, buffered,
delivered, expired, delivery_failed), ``statusReason``, ``statusErrorCode`` and
``statusDatetime``. An inbound message carries ``originator`` (the sender),
``recipient`` (our number), ``body`` and ``id``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime

import jwt

from providers.tracking.common import PayloadError, SignatureError, TrackingEvent, TrackingStatus, _detail

SIGNATURE_HEADER = "MessageBird-Signature-JWT"
ALGORITHMS = ["HS256", "HS384", "HS512"]
TOKEN_LIFE_S = 60  # as MessageBird issues them
LEEWAY_S = 1.0

# statusReason values that say the number is not there to be reached (the
# address is suppressed), and the one that says the person opted out (a
# complaint: suppressed too). Other failures may pass next time.
GONE_REASONS = frozenset({"unknown subscriber"})
OPTED_OUT_REASONS = frozenset({"opted out"})
_FAILED = frozenset({"delivery_failed", "expired"})


def messagebird_jwt(signing_key: str, url: str, body: bytes = b"", now: float | None = None,
                    jti: str | None = None) -> str:
    """A ``MessageBird-Signature-JWT`` for a request to ``url`` with ``body``, as
    MessageBird makes them (the loopback MessageBird and tests use it)."""
    now = int(time.time() if now is None else now)
    claims = {"iss": "MessageBird", "nbf": now, "exp": now + TOKEN_LIFE_S, "jti": jti or str(uuid.uuid4()),
              "url_hash": hashlib.sha256(url.encode()).hexdigest()}
    if body:
        claims["payload_hash"] = hashlib.sha256(body).hexdigest()
    return jwt.encode(claims, signing_key, algorithm="HS256")


def verify_messagebird(signing_key: str, token: str | None, urls: Iterable[str], body: bytes,
                       now: float | None = None) -> dict:
    """The claims of ``token`` if MessageBird signed it for one of ``urls``
    and ``body``, now; else SignatureError. The caller refuses a ``jti`` it has seen."""
    if not token:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    # PyJWT checks nbf and exp against the clock; a test gives ``now`` and they are checked here
    clock = now is None
    try:
        claims = jwt.decode(token, signing_key, algorithms=ALGORITHMS, issuer="MessageBird", leeway=LEEWAY_S,
                            options={"require": ["iss", "nbf", "exp", "jti", "url_hash"], "verify_iat": False,
                                     "verify_exp": clock, "verify_nbf": clock})
    except jwt.InvalidTokenError as exc:
        raise SignatureError(f"bad token: {exc}") from None
    if not clock and not float(claims["nbf"]) - LEEWAY_S <= now <= float(claims["exp"]) + LEEWAY_S:
        raise SignatureError("token not valid now")
    given = str(claims["url_hash"]).encode()
    ok = False
    for url in urls:  # every candidate computed, whichever matches
        ok |= hmac.compare_digest(hashlib.sha256(url.encode()).hexdigest().encode(), given)
    if not ok:
        raise SignatureError("url_hash does not match the URL called")
    payload_hash = claims.get("payload_hash")
    if bool(body) != bool(payload_hash):
        raise SignatureError("payload_hash and the body disagree")
    if body and not hmac.compare_digest(hashlib.sha256(body).hexdigest().encode(), str(payload_hash).encode()):
        raise SignatureError("payload_hash does not match the body")
    return claims


def _when(text: str | None, default: float) -> float:
    try:
        return datetime.fromisoformat(text or "").timestamp()
    except ValueError:
        return default


def messagebird_event(params: Mapping[str, str], now: float | None = None) -> TrackingEvent:
    """A status report as a TrackingEvent."""
    message_id, event = params.get("id", ""), params.get("status", "")
    if not message_id or not event:
        raise PayloadError("a MessageBird status report needs id and status")
    now = time.time() if now is None else now
    reason = params.get("statusReason", "")
    status: TrackingStatus | None = None
    hard = False
    if event == "delivered":
        status = "delivered"
    elif event in _FAILED:
        if reason.lower() in OPTED_OUT_REASONS:
            status, hard = "complained", True
        elif reason.lower() in GONE_REASONS:
            status, hard = "bounced", True
        else:
            status = "failed"
    recipient = params.get("recipient") or None
    return TrackingEvent(
        provider="messagebird", notification_id=params.get("reference") or None, provider_message_id=message_id,
        channel="sms", address=f"+{recipient}" if recipient and not recipient.startswith("+") else recipient,
        status=status, hard=hard, at=_when(params.get("statusDatetime"), now),
        detail=_detail(event, reason or None, f"error {params['statusErrorCode']}"
                       if params.get("statusErrorCode") else None), event=event)


def messagebird_inbound(params: Mapping[str, str]) -> tuple[str, str]:
    """(the sender's number in E.164, the text) of an inbound message."""
    originator, body = params.get("originator", ""), params.get("body")
    if not originator or body is None:
        raise PayloadError("a MessageBird inbound message needs originator and body")
    return (originator if originator.startswith("+") else f"+{originator}"), body
