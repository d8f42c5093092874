"""E.164 phone numbers: the one form every SMS and voice provider here accepts.

Pure: no I/O, no carrier lookups. A number that passes ``normalize`` is
well-formed (``+``, a country code that does not start with 0, 7 to 15 digits
in all), not necessarily assigned or able to take an SMS; the provider says
that later, and its answer is mapped to an error there.
"""

from __future__ import annotations

import re

# What people and forms put between digits: whitespace (any Unicode space, so a
# pasted non-breaking space is no error), the ASCII hyphen and the Unicode dashes
# and minus sign, dots and parentheses. Nothing else is dropped: a letter or a
# slash is far more likely a wrong field than a formatting habit.
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212.()]")
# ASCII digits only: ``\d`` would also take Arabic-Indic and other Unicode digits,
# which no provider accepts in a To parameter.
E164 = re.compile(r"\+[1-9][0-9]{6,14}")
MIN_DIGITS, MAX_DIGITS = 7, 15


def normalize(number: str) -> str:
    """``number`` as ``+<digits>``: separators (whitespace, dashes, dots,
    parentheses) removed and an international ``00`` prefix replaced by ``+``.

    Raises ValueError, saying what is wrong, unless the result matches
    ``^\\+[1-9]\\d{6,14}$`` (ASCII digits). A national number (``030 1234567``,
    ``(415) 555-2671``) is refused rather than guessed at: which country it
    belongs to is not knowable here. Idempotent: a result normalizes to itself.
    """
    if not isinstance(number, str):
        # ValueError, not TypeError: callers catch one error for "not a number".
        raise ValueError(f"phone number must be a string, not {type(number).__name__}")
    compact = _SEPARATORS.sub("", number)
    if not compact:
        raise ValueError("phone number is empty")
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not compact.startswith("+"):
        raise ValueError(f"phone number {number!r} is not international: it needs a leading + or 00 "
                         "and the country code")
    digits = compact[1:]
    if not (digits.isascii() and digits.isdigit()):
        bad = next((c for c in digits if not ("0" <= c <= "9")), "")
        what = f"character {bad!r}" if bad else "no digits"
        raise ValueError(f"phone number {number!r} has {what} after the +; only digits 0-9 may follow")
    if digits[0] == "0":
        raise ValueError(f"phone number {number!r}: a country code cannot start with 0")
    if len(digits) < MIN_DIGITS:
        raise ValueError(f"phone number {number!r} is too short: {len(digits)} digits, E.164 needs at least "
                         f"{MIN_DIGITS}")
    if len(digits) > MAX_DIGITS:
        raise ValueError(f"phone number {number!r} is too long: {len(digits)} digits, E.164 allows at most "
                         f"{MAX_DIGITS}")
    return compact


def is_e164(number: str) -> bool:
    """Whether ``number`` is already in normalized form (no separators)."""
    return isinstance(number, str) and E164.fullmatch(number) is not None


__all__ = ["E164", "is_e164", "normalize"]
