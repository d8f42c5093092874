"""What every provider's tracking webhook shares: the normalized event, the
errors, small field readers."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from typing import Literal

import msgspec

TrackingStatus = Literal["delivered", "bounced", "complained", "failed"]
Engaged = Literal["opened", "clicked"]

SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"
MAILGUN_TOLERANCE_S = 300.0  # Mailgun: refuse timestamps further than this from now
MAX_DETAIL = 500


class SignatureError(Exception):
    """The request is not signed by the provider (answer 401)."""


class PayloadError(ValueError):
    """The body is not what the provider sends (answer 400)."""


class TrackingEvent(msgspec.Struct, frozen=True):
    """One provider event, normalized.

    ``status``: what the delivery became (None: timeline only). ``hard``: the
    address must not be used again (hard bounce, complaint). ``at``: when the
    provider says it happened (epoch seconds). ``event``: the provider's own
    name of the event ("bounce", "failed", "undelivered", ...).
    ``engagement``: the recipient opened or clicked the message (the
    provider's open or click tracking), stored by ``stores.engagement``.
    """

    provider: str
    notification_id: str | None
    provider_message_id: str | None
    channel: str
    address: str | None
    status: TrackingStatus | None
    hard: bool
    at: float
    detail: str
    event: str = ""
    engagement: Engaged | None = None


def first_values(params: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A form's or query's fields, the first value of a repeated one."""
    out: dict[str, str] = {}
    for name, value in params:
        out.setdefault(name, value)
    return out


def _detail(*parts) -> str:
    text = " ".join(str(p).strip() for p in parts if p is not None and p is not False and str(p).strip())
    return text[:MAX_DETAIL]


def _str(value) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _float(value, default: float) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return default
    return f if math.isfinite(f) else default


_REASON = re.compile(r"[^a-z0-9]+")


def reason_of(event: TrackingEvent) -> str:
    """The tracking row's ``reason`` for a status an event sets: the provider's
    event name in snake case ("bounce", "spamreport", "no_answer")."""
    return _REASON.sub("_", event.event.lower()).strip("_")[:64] or "tracking"

def _check_age(timestamp: str, now: float | None, tolerance_s: float) -> float:
    try:
        ts = float(timestamp)
    except ValueError:
        raise SignatureError(f"timestamp {timestamp[:40]!r} is not epoch seconds") from None
    now = time.time() if now is None else now
    if not abs(now - ts) <= tolerance_s:
        raise SignatureError(f"timestamp is {now - ts:.0f} s from now (tolerance {tolerance_s:.0f} s)")
    return ts
