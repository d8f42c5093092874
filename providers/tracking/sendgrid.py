"""SendGrid's Event Webhook: ECDSA-signed JSON arrays of events."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Sequence

import msgspec
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from providers.tracking.common import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    Engaged,
    PayloadError,
    SignatureError,
    TrackingEvent,
    TrackingStatus,
    _check_age,
    _detail,
    _float,
    _str,
)


def load_sendgrid_key(key: str) -> ec.EllipticCurvePublicKey:
    """The public key of SendGrid's Signed Event Webhook settings: base64 DER
    (SubjectPublicKeyInfo), or PEM. ValueError when it is neither, or not EC."""
    text = key.strip() if isinstance(key, str) else ""
    try:
        if text.startswith("-----BEGIN"):
            public = serialization.load_pem_public_key(text.encode())
        else:
            public = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm, TypeError) as exc:
        raise ValueError(f"not a base64 DER or PEM public key: {exc}") from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve (ECDSA) public key")
    return public


def verify_sendgrid(public_key: ec.EllipticCurvePublicKey | str | Sequence[ec.EllipticCurvePublicKey | str],
                    signature: str | None, timestamp: str | None, body: bytes, *, now: float | None = None,
                    tolerance_s: float = 0.0) -> None:
    """Raise SignatureError unless ``signature`` (base64 DER ECDSA) signs
    ``timestamp + body`` with SHA-256 under ``public_key`` (or one of several).
    With ``tolerance_s`` > 0, a timestamp further than that from ``now`` is
    refused as well."""
    keys = [public_key] if isinstance(public_key, (str, ec.EllipticCurvePublicKey)) else list(public_key)
    keys = [load_sendgrid_key(k) if isinstance(k, str) else k for k in keys]
    if not keys:
        raise SignatureError("no public key configured")
    if not signature:
        raise SignatureError(f"missing {SENDGRID_SIGNATURE_HEADER} header")
    if not timestamp:
        raise SignatureError(f"missing {SENDGRID_TIMESTAMP_HEADER} header")
    try:
        der = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not base64") from None
    signed = timestamp.encode() + body
    for key in keys:
        try:
            key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
            break
        except InvalidSignature:
            continue
    else:
        raise SignatureError("signature does not match")
    if tolerance_s > 0:
        _check_age(timestamp, now, tolerance_s)



def _sg_message_id(value) -> str | None:
    """SendGrid's ``sg_message_id`` is ``<X-Message-Id>.<filter>...``: the part
    before the first dot is what the send answered."""
    text = _str(value)
    return text.split(".", 1)[0] if text else None


_SG_DROPPED_BOUNCE = ("bounced address", "invalid")
_SG_DROPPED_COMPLAINT = ("spam reporting address",)
_SG_ENGAGEMENT: dict[str, Engaged] = {"open": "opened", "click": "clicked"}


def sendgrid_event(item: dict, now: float | None = None) -> TrackingEvent:
    """One SendGrid event object as a TrackingEvent (see ``SENDGRID_STATUS``)."""
    event = item.get("event")
    if not isinstance(event, str) or not event:
        raise PayloadError("a SendGrid event needs an 'event' string")
    status: TrackingStatus | None = None
    hard = False
    reason = item.get("reason")
    if event == "delivered":
        status = "delivered"
        detail = _detail(item.get("response"))
    elif event == "bounce":
        kind = item.get("type") or "bounce"
        if kind == "blocked":  # a soft bounce: the receiver refused this time, not the address
            status = "failed"
        else:
            status, hard = "bounced", True
        detail = _detail(kind, item.get("status"), reason)
    elif event == "dropped":
        text = str(reason or "").strip().lower()
        if text in _SG_DROPPED_BOUNCE:
            status, hard = "bounced", True
        elif text in _SG_DROPPED_COMPLAINT:
            status, hard = "complained", True
        else:
            status = "failed"
        detail = _detail(reason)
    elif event == "spamreport":
        status, hard = "complained", True
        detail = "spam report"
    elif event == "deferred":
        detail = _detail(item.get("attempt") and f"attempt {item.get('attempt')}:", item.get("response"))
    elif event == "click":
        detail = _detail(item.get("url"))
    else:  # processed, open, unsubscribe, group_unsubscribe, group_resubscribe, ...
        detail = _detail(item.get("useragent") if event == "open" else None)
    nid = item.get("notification_id")
    return TrackingEvent(
        provider="sendgrid", notification_id=nid if isinstance(nid, str) and nid else None,
        provider_message_id=_sg_message_id(item.get("sg_message_id")), channel="email",
        address=_str(item.get("email")), status=status, hard=hard,
        at=_float(item.get("timestamp"), time.time() if now is None else now), detail=detail, event=event,
        engagement=_SG_ENGAGEMENT.get(event))


def parse_sendgrid(body: bytes, now: float | None = None) -> list[TrackingEvent]:
    """The events of a SendGrid Event Webhook body (a JSON array of objects)."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"not JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("not JSON: nested too deeply") from None
    if not isinstance(doc, list):
        raise PayloadError("a SendGrid Event Webhook body is a JSON array of events")
    events = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            raise PayloadError(f"event {i} is not an object")
        try:
            events.append(sendgrid_event(item, now))
        except PayloadError as exc:
            raise PayloadError(f"event {i}: {exc}") from None
    return events
