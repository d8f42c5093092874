"""Faults a loopback HTTP sink injects, decided per request, for the fault bench
(bench/faults.py), which changes them while the sink runs (``PUT /_sink/faults``).

Every answer waits ``delay_s`` first (a receiver that takes its time). Then
``fail_ratio`` of the requests are answered 503 and ``hang_ratio`` are held for
``hang_s`` (past the caller's timeout) and then answered 503; the rest are
accepted (200). With ``garbage`` every body is garbage — NUL bytes, bytes that
are not UTF-8, JSON that does not parse — on the 2xx and on the 5xx answers
alike. A request is decided and counted with no ``await`` in between, so a
change of faults applies to every request decided after it.
"""

from __future__ import annotations

import random
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Ratio = Annotated[float, Meta(ge=0, le=1)]
Seconds = Annotated[float, Meta(ge=0, le=600)]
Verdict = Literal["accept", "fail", "hang"]

# Bodies a broken receiver answers with: every one would break a naive reader.
GARBAGE = (
    b"\x00" * 16,
    b'{"ok": true, "note": "\x00 raw NUL inside JSON"}',
    b'{"error": "escaped NUL \\u0000 here"}',
    b"\xff\xfe\x00<html>\x00</html>\xc3\x28",
    b"<!DOCTYPE html><title>502 Bad Gateway</title>\x00\x00",
    b"{{{{ not json",
)


class Faults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    fail_ratio: Ratio = 0.0
    hang_ratio: Ratio = 0.0
    hang_s: Seconds = 0.0
    garbage: bool = False
    delay_s: Seconds = 0.0
    seed: int = 1


def verdict(faults: Faults, rng: random.Random) -> Verdict:
    """What to do with one request."""
    roll = rng.random()
    if roll < faults.fail_ratio:
        return "fail"
    if roll < faults.fail_ratio + faults.hang_ratio:
        return "hang"
    return "accept"


def garbage_body(rng: random.Random) -> bytes:
    """One of the fixed garbage bodies, or random bytes (NUL bytes likely)."""
    pick = rng.randrange(len(GARBAGE) + 1)
    return GARBAGE[pick] if pick < len(GARBAGE) else bytes(rng.randrange(4) and rng.randrange(256) for _ in range(48))


__all__ = ["GARBAGE", "Faults", "Verdict", "garbage_body", "verdict"]
