"""Webhook signatures, Stripe style.

A delivery carries ``Tidings-Signature: t=<unix seconds>,v1=<hex>`` where the hex is
HMAC-SHA256 over ``f"{t}."`` followed by the exact body bytes. Putting the
timestamp inside the signed bytes lets a receiver refuse replays older (or newer)
than a tolerance window; several ``v1=`` entries may be present so a sender can
sign with an old and a new secret while receivers rotate.

``Tidings-Delivery-Id: <notification_id>:<channel>`` is stable across retries of
the same delivery, so a receiver can drop duplicates.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "Tidings-Signature"
ID_HEADER = "Tidings-Delivery-Id"
SCHEME = "v1"


class SignatureError(ValueError):
    """A signature header did not verify; the message says why."""


def _key(secret: bytes | str) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    # An empty key is a known key: anyone could forge signatures with it.
    if not key:
        raise ValueError("webhook secret must not be empty")
    return key


def _digest(key: bytes, body: bytes, timestamp: int) -> str:
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def delivery_id(notification_id: str, channel: str) -> str:
    """The ``ID_HEADER`` value for one (notification, channel)."""
    return f"{notification_id}:{channel}"


def sign(secret: bytes | str, body: bytes, timestamp: int) -> str:
    """Return the ``SIGNATURE_HEADER`` value ``t=<timestamp>,v1=<hex hmac>`` for
    ``body`` signed at ``timestamp`` (whole seconds since the epoch).

    Raises ValueError for an empty secret."""
    ts = int(timestamp)
    return f"t={ts},{SCHEME}={_digest(_key(secret), body, ts)}"


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    if not header or not header.strip():
        raise SignatureError("malformed signature header: empty")
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key or not value:
            raise SignatureError(f"malformed signature header: bad element {item.strip()!r}")
        if key == "t":
            if timestamp is not None:
                raise SignatureError("malformed signature header: more than one timestamp")
            if not (value.isascii() and value.isdigit()):
                raise SignatureError(f"malformed signature header: timestamp {value!r} is not an integer")
            timestamp = int(value)
        elif key == SCHEME:
            signatures.append(value)
        # Other schemes (v0, future v2) are ignored so senders can add them freely.
    if timestamp is None:
        raise SignatureError("malformed signature header: no timestamp (t=)")
    if not signatures:
        raise SignatureError(f"malformed signature header: no {SCHEME}= signature")
    return timestamp, signatures


def verify(
    secret: bytes | str,
    header: str,
    body: bytes,
    *,
    now: float,
    tolerance_s: float = 300,
) -> None:
    """Return None if ``header`` is a valid signature of ``body`` by ``secret``
    made within ``tolerance_s`` seconds of ``now`` (either direction).

    Raises SignatureError for a malformed header, a timestamp outside the window,
    or when no ``v1=`` entry matches. Raises ValueError for an empty secret."""
    key = _key(secret)
    timestamp, signatures = _parse(header)
    age = now - timestamp
    if age > tolerance_s:
        raise SignatureError(f"signature timestamp too old: {age:.0f}s > {tolerance_s:.0f}s tolerance")
    if -age > tolerance_s:
        raise SignatureError(f"signature timestamp in the future: {-age:.0f}s > {tolerance_s:.0f}s tolerance")
    expected = _digest(key, body, timestamp)
    # Compare against every entry (no early exit on the first match) in constant
    # time per entry, so timing says nothing about which one was close.
    matched = False
    for candidate in signatures:
        # compare_digest refuses non-ASCII str; such an entry cannot match anyway.
        if candidate.isascii() and hmac.compare_digest(expected, candidate.lower()):
            matched = True
    if not matched:
        raise SignatureError(f"no matching {SCHEME} signature")


__all__ = ["ID_HEADER", "SIGNATURE_HEADER", "SignatureError", "delivery_id", "sign", "verify"]
