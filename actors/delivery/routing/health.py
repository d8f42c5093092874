"""Health routing: priority order, corrected by what each slot did in the last
``window_s`` seconds.

Per slot, a sliding window counts calls, errors and seconds spent. Its score is the
expected time per accepted message, ``mean latency / (1 - error rate)``, compared
with the best slot's: slots within ``SLOWER``x of the best share a tier, each further
factor of ``SLOWER`` is one tier down, and within a tier priority decides (so noise
does not reshuffle providers that are about as good). A slot whose error rate exceeds
``max_error_rate`` goes last; one with fewer than ``min_samples`` calls in the
window has no score and keeps its priority in the first tier.

An invalid message (or gone address) is the message's fault: it counts as a call,
not an error. Every other failure, rate limits included, counts as an error.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from actors.delivery.bucket import Clock
from actors.delivery.routing.base import Router, by_priority
from actors.delivery.slot import ProviderSlot
from policy.types import DeliveryTask
from providers.errors import DeliveryError, InvalidMessage

BUCKETS = 30  # window resolution: a call leaves the window between window_s and window_s*(1-1/30) later
SLOWER = 2.0  # a slot this many times slower than the best drops one tier
FLOOR_S = 0.001  # latencies below 1 ms count as 1 ms, so a 0-second fake clock compares as equal


class Window:
    """Calls, errors and seconds over the last ``window_s`` seconds: a ring of
    ``BUCKETS`` time buckets with running totals, so adding a call or reading the
    totals costs at most one pass over the ring (O(1) in the number of calls)."""

    __slots__ = ("calls", "errors", "head", "seconds", "total_calls", "total_errors", "total_seconds", "width")

    def __init__(self, window_s: float) -> None:
        self.width = window_s / BUCKETS
        self.calls = [0] * BUCKETS
        self.errors = [0] * BUCKETS
        self.seconds = [0.0] * BUCKETS
        self.head: int | None = None  # the newest bucket's number (time // width)
        self.total_calls = self.total_errors = 0
        self.total_seconds = 0.0

    def add(self, now: float, error: bool, seconds: float) -> None:
        if self.width <= 0:
            return  # a window of 0 s remembers nothing
        self._advance(now)
        b = self.head % BUCKETS  # type: ignore[operator]
        self.calls[b] += 1
        self.errors[b] += error
        self.seconds[b] += seconds
        self.total_calls += 1
        self.total_errors += error
        self.total_seconds += seconds

    def totals(self, now: float) -> tuple[int, int, float]:
        """(calls, errors, seconds) in the window ending at ``now``."""
        if self.head is not None:
            self._advance(now)
        return self.total_calls, self.total_errors, self.total_seconds

    def _advance(self, now: float) -> None:
        newest = math.floor(now / self.width)
        if self.head is None:
            self.head = newest
            return
        for n in range(self.head + 1, min(newest, self.head + BUCKETS) + 1):  # buckets that expire
            b = n % BUCKETS
            self.total_calls -= self.calls[b]
            self.total_errors -= self.errors[b]
            self.total_seconds -= self.seconds[b]
            self.calls[b] = self.errors[b] = 0
            self.seconds[b] = 0.0
        if self.total_calls == 0:
            self.total_seconds = 0.0  # no float dust from the subtractions
        self.head = max(self.head, newest)


class HealthRouter(Router):
    name = "health"

    def __init__(self, slots: Sequence[ProviderSlot], *, rng: random.Random, clock: Clock,
                 window_s: float = 60.0, max_error_rate: float = 0.5, min_samples: int = 5) -> None:
        super().__init__(slots, rng=rng, clock=clock)
        self.window_s, self.max_error_rate, self.min_samples = window_s, max_error_rate, min_samples
        self.windows: dict[ProviderSlot, Window] = {s: Window(window_s) for s in self.slots}

    def record(self, slot: ProviderSlot, err: DeliveryError | None, duration_s: float) -> None:
        window = self.windows.get(slot)
        if window is None:
            window = self.windows[slot] = Window(self.window_s)
        error = err is not None and not isinstance(err, InvalidMessage)
        window.add(self.clock(), error, max(0.0, duration_s))

    def scores(self, slots: Sequence[ProviderSlot]) -> dict[ProviderSlot, tuple[float, float] | None]:
        """Per slot (error rate, seconds per accepted message), None when it has too few calls."""
        now = self.clock()
        out: dict[ProviderSlot, tuple[float, float] | None] = {}
        for s in slots:
            window = self.windows.get(s)
            calls, errors, seconds = window.totals(now) if window else (0, 0, 0.0)
            if calls < max(1, self.min_samples):
                out[s] = None
                continue
            rate = errors / calls
            latency = max(FLOOR_S, seconds / calls)
            out[s] = (rate, latency / (1.0 - rate) if rate < 1.0 else math.inf)
        return out

    def order(self, slots: Sequence[ProviderSlot], task: DeliveryTask) -> list[ProviderSlot]:
        ranked = by_priority(slots)
        scores = self.scores(ranked)
        best = min((sc[1] for sc in scores.values() if sc is not None and sc[0] <= self.max_error_rate),
                   default=math.inf)

        def key(item: tuple[int, ProviderSlot]) -> tuple[bool, float, int]:
            i, s = item
            sc = scores[s]
            if sc is None:
                return False, 0.0, i
            rate, cost = sc
            if rate > self.max_error_rate:
                return True, 0.0, i
            tier = math.floor(math.log(cost / best, SLOWER)) if math.isfinite(cost) else math.inf
            return False, max(0.0, tier), i

        return [s for _, s in sorted(enumerate(ranked), key=key)]


__all__ = ["BUCKETS", "FLOOR_S", "SLOWER", "HealthRouter", "Window"]
