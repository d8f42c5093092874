"""SMS providers (Twilio, MessageBird, Vonage) and what they share: E.164
numbers (``e164``), segment counting (``segments``) and the checks every SMS
provider makes before it spends a request.

Importing this package imports no HTTP client; each provider module does.
"""

from __future__ import annotations

import re

from policy.types import DeliveryTask
from providers.errors import ConfigurationError, InvalidMessage
from providers.sms import e164, segments

DEFAULT_MAX_SEGMENTS = 10
# An alphanumeric sender ID as Twilio, MessageBird and Vonage take one: up to 11
# ASCII letters, digits and spaces, at least one letter (all digits is a number).
_ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_SHORT_CODE = re.compile(r"[0-9]{3,8}")


def message_text(task: DeliveryTask) -> str:
    """What to send for ``task`` by SMS (or say in a call): its content's text,
    else its subject; InvalidMessage when neither has more than whitespace (a
    blank SMS notifies nobody)."""
    body = next((b for b in (task.content.text, task.content.subject) if b and b.strip()), None)
    if body is None:
        raise InvalidMessage(f"{task.channel} needs text (or a subject)")
    return body


def recipient(task: DeliveryTask) -> str:
    """``task.address`` as E.164 (``+<digits>``); InvalidMessage saying why not."""
    try:
        return e164.normalize(task.address)
    except ValueError as exc:
        raise InvalidMessage(f"sms recipient: {exc}") from exc


def check_segments(text: str, max_segments: int) -> tuple[segments.Encoding, int]:
    """``(encoding, segments)`` of ``text``; InvalidMessage when it needs more
    than ``max_segments`` segments (a runaway template must not be billed 40 times)."""
    enc, n, units = segments.count(text)
    if n > max_segments:
        raise InvalidMessage(f"sms body needs {n} segments ({units} {'septets' if enc == 'GSM-7' else 'UTF-16 units'}, "
                             f"{enc}), more than max_segments {max_segments}")
    return enc, n


def sender(value: object) -> str:
    """A From value: an international number (``+`` or ``00``; returned as E.164),
    a short code (3-8 digits) or an alphanumeric sender ID (1-11 letters, digits
    and spaces with at least one letter), returned as given. ValueError otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("sender is empty")
    stripped = value.strip()
    if stripped.startswith(("+", "00")):
        return e164.normalize(stripped)
    if _SHORT_CODE.fullmatch(stripped) or _ALPHANUMERIC.fullmatch(stripped):
        return stripped
    raise ValueError(f"sender {value!r} is neither an international number (+...), a short code nor an "
                     "alphanumeric sender ID (1-11 letters, digits, spaces)")


def max_segments_setting(kind: str, name: str, settings: dict) -> int:
    """The ``max_segments`` setting (default 10); ConfigurationError unless an int >= 1."""
    value = settings.get("max_segments", DEFAULT_MAX_SEGMENTS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{kind} provider {name!r}: max_segments must be an integer >= 1")
    return value


__all__ = ["DEFAULT_MAX_SEGMENTS", "check_segments", "e164", "max_segments_setting", "message_text", "recipient",
           "segments", "sender"]
