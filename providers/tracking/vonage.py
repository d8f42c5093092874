"""Vonage SMS API webhooks: delivery receipts and inbound messages, signed.

Vonage signs a webhook (once the account has signed webhooks on) with the
account's signature secret: ``sig`` is a digest of every other parameter, sorted
by name, each as ``&name=value`` with ``&`` and ``=`` in the value replaced by
``_``. With the default method, "MD5 hash", the digest is MD5 of that text
followed by the secret; with "MD5/SHA1/SHA-256/SHA-512 HMAC" it is the HMAC
keyed by the secret. A signed request carries ``timestamp`` (epoch seconds) and
``nonce``: a timestamp too far from now and a nonce seen before are refused, so
a captured request cannot be replayed.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Mapping

from providers.tracking.common import PayloadError, SignatureError, TrackingEvent, TrackingStatus, _detail

SIGNATURE_METHODS = ("md5hash", "md5", "sha1", "sha256", "sha512")
VONAGE_TOLERANCE_S = 300.0
# Vonage's own parameter names (err-code, client-ref, message-timestamp...). The
# signed text cannot tell "a=1&b" from the name "a=1&b", so other names are refused.
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def signature_method(name: str) -> str:
    """A ``signature_method`` setting as Vonage's dashboard or SDKs spell it
    ("MD5 hash", "SHA-256 HMAC", "sha256") → one of SIGNATURE_METHODS; else ValueError."""
    text = name.lower().replace("-", "").replace(" ", "").replace("_", "")
    method = "md5hash" if text == "md5hash" else text.removesuffix("hmac")
    if method not in SIGNATURE_METHODS:
        raise ValueError(f"signature_method {name!r} is not one of Vonage's: MD5 hash, MD5/SHA1/SHA-256/SHA-512 HMAC")
    return method

# err-code values of a receipt that say the number is not there to be reached:
# the address is suppressed. Others may pass next time.
VONAGE_GONE_CODES = frozenset({
    3,  # absent subscriber, permanent
    9,  # illegal number
})
_FAILED = frozenset({"failed", "rejected", "expired"})


def vonage_signature(secret: str, params: Mapping[str, str], method: str = "md5hash") -> str:
    """The hex ``sig`` Vonage computes over ``params`` (``sig`` itself left out)."""
    method = signature_method(method)
    text = "".join(f"&{name}={params[name].replace('&', '_').replace('=', '_')}"
                   for name in sorted(params) if name != "sig")
    if method == "md5hash":
        return hashlib.md5((text + secret).encode(), usedforsecurity=False).hexdigest()
    return hmac.new(secret.encode(), text.encode(), method).hexdigest()


def verify_vonage(secret: str, params: Mapping[str, str], method: str = "md5hash", *,
                  tolerance_s: float = VONAGE_TOLERANCE_S, now: float | None = None) -> None:
    """Raise SignatureError unless ``params`` carry Vonage's ``sig`` of them
    (compared in constant time) and a ``timestamp`` within ``tolerance_s`` of now.
    The caller refuses a ``nonce`` it has seen (``TokenMemory``)."""
    given = params.get("sig", "")
    if not given:
        raise SignatureError("missing sig parameter")
    if not all(_NAME.fullmatch(name) for name in params):
        raise SignatureError("a parameter name Vonage does not use")
    expected = vonage_signature(secret, params, method)
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode("utf-8", "replace")):
        raise SignatureError("signature does not match")
    stamp = params.get("timestamp", "")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        raise SignatureError("missing or bad timestamp")
    now = time.time() if now is None else now
    if abs(now - int(stamp)) > tolerance_s:
        raise SignatureError("timestamp too far from now")


def _when(text: str | None, default: float) -> float:
    """``message-timestamp`` ("2020-01-01 12:00:00", UTC) as epoch seconds."""
    try:
        return float(calendar.timegm(time.strptime(text or "", "%Y-%m-%d %H:%M:%S")))
    except ValueError:
        return default


def vonage_event(params: Mapping[str, str], now: float | None = None) -> TrackingEvent:
    """A delivery receipt (``messageId``, ``status``, ``err-code``, ``msisdn``,
    ``client-ref``: the notification id we sent) as a TrackingEvent."""
    message_id, event = params.get("messageId", ""), params.get("status", "")
    if not message_id or not event:
        raise PayloadError("a Vonage delivery receipt needs messageId and status")
    now = time.time() if now is None else now
    raw = params.get("err-code", "")
    code = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else None
    status: TrackingStatus | None = None
    hard = False
    if event == "delivered":
        status = "delivered"
    elif event in _FAILED:
        hard = code in VONAGE_GONE_CODES
        status = "bounced" if hard else "failed"
    msisdn = params.get("msisdn") or None
    return TrackingEvent(
        provider="vonage", notification_id=params.get("client-ref") or None, provider_message_id=message_id,
        channel="sms", address=f"+{msisdn}" if msisdn and not msisdn.startswith("+") else msisdn,
        status=status, hard=hard, at=_when(params.get("message-timestamp"), now),
        detail=_detail(event, f"err-code {raw}" if raw else None), event=event)


def vonage_inbound(params: Mapping[str, str]) -> tuple[str, str]:
    """(the sender's number in E.164, the text) of an inbound message."""
    msisdn, text = params.get("msisdn", ""), params.get("text")
    if not msisdn or text is None:
        raise PayloadError("a Vonage inbound message needs msisdn and text")
    return (msisdn if msisdn.startswith("+") else f"+{msisdn}"), text
