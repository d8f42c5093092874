"""Rate limits for one provider account: a token bucket (sends per second, with a
burst) and a per-UTC-day counter.

Both read an injected clock, so tests drive time by hand and never sleep.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
"""Seconds: monotonic for buckets and breakers, epoch for wall time."""
Sleep = Callable[[float], Awaitable[None]]
"""An ``asyncio.sleep``-like coroutine function."""

_EPS = 1e-9  # float slack, so a waiter woken at exactly the computed time succeeds
_DAY_S = 86_400
WAITS_KEPT = 100_000  # waits kept until drained: a bound in case no one drains them


class TokenBucket:
    """``rate_per_s`` tokens a second, holding at most ``burst``; starts full.

    ``rate_per_s <= 0`` means unlimited (only a ``pause_until`` holds it back).
    A request for more than ``burst`` tokens can never be met (wait is ``inf``).
    """

    def __init__(self, rate_per_s: float, burst: float, clock: Clock = time.monotonic) -> None:
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()  # refill reference time; in the future while paused
        self._paused_until = -math.inf
        # for the metrics (actors/metrics.py), taken by ``drain_waits``: the seconds
        # each acquire that had to wait waited, and how many gave up
        self.waits: list[float] = []
        self.refused = 0

    def drain_waits(self) -> tuple[list[float], int]:
        """The waits and refusals since the last call, forgotten here."""
        waits, refused = self.waits, self.refused
        self.waits, self.refused = [], 0
        return waits, refused

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    @property
    def paused_until(self) -> float | None:
        """Monotonic time before which no token is given, or None if never paused."""
        return None if self._paused_until == -math.inf else self._paused_until

    @property
    def tokens(self) -> float:
        """Tokens available now (``inf`` when unlimited and not paused)."""
        now = self._clock()
        if self.unlimited:
            return math.inf if now >= self._paused_until else 0.0
        self._refill(now)
        return self._tokens if now >= self._last else 0.0

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def try_take(self, n: float = 1.0) -> float:
        """Take ``n`` tokens and return 0.0 if they are there now; otherwise take
        nothing and return the seconds until they would be."""
        now = self._clock()
        if self.unlimited:
            wait = self._paused_until - now
            return wait if wait > _EPS else 0.0
        if n > self.burst:
            return math.inf
        self._refill(now)
        paused = self._last - now
        paused = paused if paused > _EPS else 0.0
        if not paused and self._tokens >= n - _EPS:
            self._tokens = max(0.0, self._tokens - n)
            return 0.0
        return paused + max(0.0, n - self._tokens) / self.rate

    async def acquire(self, sleep: Sleep, max_wait_s: float) -> bool:
        """Wait (with ``sleep``) for one token and take it; False, without waiting
        further, as soon as getting it would take longer than ``max_wait_s`` in all."""
        started = self._clock()
        deadline = started + max(0.0, max_wait_s)
        waited = False
        while True:
            wait = self.try_take()
            if wait <= 0.0:
                if waited and len(self.waits) < WAITS_KEPT:
                    self.waits.append(self._clock() - started)
                return True
            if self._clock() + wait > deadline + _EPS:
                self.refused += 1
                return False
            waited = True
            await sleep(wait)

    def pause_until(self, t: float) -> None:
        """Honour a provider's Retry-After: no tokens before monotonic time ``t``.

        Refill is frozen until ``t`` and the bucket keeps at most one token, so the
        first send after the pause is not followed by a whole burst.
        """
        now = self._clock()
        if t <= now:
            return
        self._paused_until = max(self._paused_until, t)
        if not self.unlimited:
            self._refill(now)
            self._tokens = min(self._tokens, 1.0)
            self._last = max(self._last, t)


class DailyLimit:
    """At most ``limit`` sends per UTC day (``limit <= 0``: unlimited).

    ``wall_clock`` gives epoch seconds; the day rolls over at UTC midnight.
    """

    def __init__(self, limit: int, wall_clock: Clock = time.time) -> None:
        self.limit = int(limit)
        self._wall = wall_clock
        self._day = self._today()
        self._count = 0

    def _today(self) -> int:
        return int(self._wall() // _DAY_S)

    def _roll(self) -> None:
        day = self._today()
        if day != self._day:
            self._day, self._count = day, 0

    @property
    def used(self) -> int:
        """Sends counted so far today."""
        self._roll()
        return self._count

    def exhausted(self) -> bool:
        """True when no send is left today (does not count one)."""
        return self.limit > 0 and self.used >= self.limit

    def take(self) -> bool:
        """Count one send; False (and nothing counted) when today's limit is reached."""
        if self.exhausted():
            return False
        self._count += 1
        return True


__all__ = ["Clock", "DailyLimit", "Sleep", "TokenBucket"]
