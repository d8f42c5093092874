"""Text from outside (a provider's answer, a rejected payload) made fit for a
PostgreSQL text or jsonb column and a log line: PostgreSQL refuses NUL (one NUL
fails the whole batch of tracking rows) and UTF-8 cannot encode a lone surrogate."""

from __future__ import annotations

import re
from typing import overload

# C0 controls but tab and line feed, DEL and the C1 controls: each becomes U+FFFD
# (visible: something was there). Surrogates (never valid alone in UTF-8; a str
# holds them only from a lenient decode) are dropped.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
ELLIPSIS = "…"
LIMIT = 500


@overload
def printable(text: str, limit: int = LIMIT) -> str: ...


@overload
def printable(text: None, limit: int = LIMIT) -> None: ...


def printable(text: str | None, limit: int = LIMIT) -> str | None:
    """``text`` with control characters (but tab and line feed) replaced by U+FFFD,
    surrogates removed, and cut to ``limit`` characters plus an ellipsis when
    longer. None stays None."""
    if text is None:
        return None
    if not isinstance(text, str):  # a provider's error may be anything
        text = str(text)
    if len(text) > 4 * limit:  # cut first: cleaning a megabyte to keep 500 characters is waste
        text = text[:4 * limit]
    text = _SURROGATE.sub("", _CONTROL.sub(REPLACEMENT, text))
    return text if len(text) <= limit else text[:limit] + ELLIPSIS


__all__ = ["ELLIPSIS", "LIMIT", "REPLACEMENT", "printable"]
