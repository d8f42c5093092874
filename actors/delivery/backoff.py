"""Exponential backoff between retries on one provider, with full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Jitter = Literal["full", "none"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry ``attempt`` (1 = the first retry):
    ``min(max_s, base_s * multiplier ** (attempt - 1))``, then with full jitter a
    uniform draw from [0, that]."""

    # Defaults give 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, ... s
    # (6.4 and beyond are capped at max_s = 5 s); full jitter draws from [0, each].
    base_s: float = 0.1
    max_s: float = 5.0
    multiplier: float = 2.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if self.jitter not in ("full", "none"):
            raise ValueError(f"jitter must be 'full' or 'none', not {self.jitter!r}")
        if self.base_s < 0 or self.max_s < 0 or self.multiplier < 1:
            raise ValueError("need base_s >= 0, max_s >= 0 and multiplier >= 1")

    def cap(self, attempt: int) -> float:
        """The delay for ``attempt`` before jitter."""
        try:
            raw = self.base_s * self.multiplier ** (max(1, attempt) - 1)
        except OverflowError:
            return self.max_s
        return min(self.max_s, raw)

    def delay(self, attempt: int, rng: random.Random) -> float:
        capped = self.cap(attempt)
        return capped if self.jitter == "none" else rng.uniform(0.0, capped)


__all__ = ["Backoff", "Jitter"]
