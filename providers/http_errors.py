"""What an HTTP provider's non-accepted answer means, as a ``DeliveryError``:
one mapping for every provider that speaks HTTP, each adding only what its
service documents beyond it (an error body, another rate-limit header, 404)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from providers.errors import (
    AuthenticationError,
    DeliveryError,
    InvalidMessage,
    NetworkError,
    ProviderError,
    RateLimited,
)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date);
    None when absent or unparsable, never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def map_status(status: int, headers: Mapping[str, str], snippet: str = "") -> DeliveryError:
    """The error for a non-accepted HTTP status."""
    text = f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}"
    if status == 429:
        return RateLimited(text, status=status, retry_after=parse_retry_after(headers.get("Retry-After")))
    if status in (401, 403):
        return AuthenticationError(text, status=status)
    if status == 408:
        return NetworkError(text, status=status)
    if 500 <= status < 600:
        return ProviderError(text, status=status)
    # Other 4xx, and 3xx: redirects are not followed on purpose (a webhook's
    # signature would be replayed to wherever the receiver points), so both mean
    # the endpoint or the payload needs fixing, not a retry.
    return InvalidMessage(text, status=status)


__all__ = ["map_status", "parse_retry_after"]
