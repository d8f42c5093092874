"""How many SMS segments a text costs, counted the way carriers bill it.

A text goes as GSM-7 when every character is in the GSM 03.38 default alphabet
or its extension table, else as UCS-2 (UTF-16). GSM-7 counts septets: a basic
character is one, an extension character (``^ { } \\ [ ~ ] | €`` and form feed)
is an escape plus the character, two. UCS-2 counts UTF-16 code units: a
character outside the Basic Multilingual Plane (most emoji) is a surrogate pair,
two.

One segment carries 160 septets or 70 code units. A longer text is sent
concatenated, and each part loses room to the User Data Header (6 bytes), so
carries 153 septets or 67 code units. Like carriers, a part never ends in the
middle of an escape sequence or a surrogate pair: such a character moves whole to
the next part, which can make a text one segment longer than a plain division
says.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

# GSM 03.38 default alphabet, in table order (0x00-0x7F) except 0x1B, the escape
# to the extension table, which is not a character of its own.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# The extension table characters a handset can show: each costs ESC + itself.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

SINGLE = {"GSM-7": 160, "UCS-2": 70}
CONCATENATED = {"GSM-7": 153, "UCS-2": 67}


def is_gsm7(text: str) -> bool:
    """Whether every character of ``text`` can go in GSM-7."""
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def encoding(text: str) -> Encoding:
    """``"GSM-7"`` when all of ``text`` fits the GSM 03.38 alphabet (basic or
    extension table), else ``"UCS-2"``. The empty text is GSM-7."""
    return "GSM-7" if is_gsm7(text) else "UCS-2"


def _cost(c: str, enc: Encoding) -> int:
    if enc == "GSM-7":
        return 2 if c in GSM7_EXTENSION else 1
    return 2 if ord(c) > 0xFFFF else 1  # a surrogate pair in UTF-16


def units(text: str, enc: Encoding | None = None) -> int:
    """Septets (GSM-7) or UTF-16 code units (UCS-2) of ``text`` in ``enc``
    (default: ``encoding(text)``)."""
    enc = enc or encoding(text)
    return sum(_cost(c, enc) for c in text)


def split(text: str) -> list[str]:
    """``text`` cut into the parts a carrier sends: ``[text]`` when it fits one
    segment, else parts of at most 153 septets / 67 code units that never split
    an escape sequence or a surrogate pair; ``"".join(split(t)) == t``. The
    empty text has no parts."""
    if not text:
        return []
    enc = encoding(text)
    if units(text, enc) <= SINGLE[enc]:
        return [text]
    room = CONCATENATED[enc]
    parts: list[str] = []
    start, used = 0, 0
    for i, c in enumerate(text):
        cost = _cost(c, enc)
        if used + cost > room:  # does not fit whole: it opens the next part
            parts.append(text[start:i])
            start, used = i, 0
        used += cost
    parts.append(text[start:])
    return parts


def count(text: str) -> tuple[Encoding, int, int]:
    """``(encoding, segments, units)`` for ``text``: the encoding a carrier
    uses, how many segments it bills (0 for the empty text, which nobody
    sends), and the septets or UTF-16 code units it takes."""
    enc = encoding(text)
    n = units(text, enc)
    if n == 0:
        return enc, 0, 0
    if n <= SINGLE[enc]:
        return enc, 1, n
    return enc, len(split(text)), n


__all__ = ["CONCATENATED", "GSM7_BASIC", "GSM7_EXTENSION", "SINGLE", "count", "encoding", "is_gsm7", "split",
           "units"]
