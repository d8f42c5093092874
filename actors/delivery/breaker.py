"""A per-provider circuit breaker: stop calling a provider that keeps failing,
then let a probe through after a while to see whether it recovered."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """closed -> (``failure_threshold`` consecutive failures) -> open
    -> (``recovery_s`` elapsed, on the next ``allow()``) -> half_open, which lets
    ``half_open_probes`` calls through: a success closes it, a failure reopens it
    with a fresh recovery timer.

    A caller that was allowed but did not get a verdict (the call was cancelled,
    or the provider's answer says nothing about its health, e.g. a rate limit or
    an invalid message) calls ``release()`` so a half-open probe is not lost.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_s: float = 30.0,
        half_open_probes: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or half_open_probes < 1:
            raise ValueError("failure_threshold and half_open_probes must be >= 1")
        self.failure_threshold = failure_threshold
        self.recovery_s = recovery_s
        self.half_open_probes = half_open_probes
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at: float | None = None
        self._probes = 0  # probes still available while half_open

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        """May a call go to the provider now? In half_open, each True uses a probe."""
        if self._state == "open":
            assert self._opened_at is not None
            if self._clock() - self._opened_at < self.recovery_s:
                return False
            self._state, self._probes = "half_open", self.half_open_probes
        if self._state == "half_open":
            if self._probes <= 0:
                return False
            self._probes -= 1
        return True

    def release(self) -> None:
        """Give back an allowed call that produced no success or failure."""
        if self._state == "half_open":
            self._probes = min(self._probes + 1, self.half_open_probes)

    def record_success(self) -> None:
        if self._state == "open":
            return  # a late answer to a call made before the breaker opened
        self._state, self._failures, self._opened_at = "closed", 0, None

    def record_failure(self) -> None:
        if self._state == "open":
            return  # a late answer to a call made before the breaker opened
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.failure_threshold:
            self._state, self._opened_at, self._probes = "open", self._clock(), 0

    def metrics(self) -> dict[str, Any]:
        """``state``, consecutive ``failures``, ``opened_at`` (monotonic, None when closed)."""
        return {"state": self._state, "failures": self._failures, "opened_at": self._opened_at}


__all__ = ["BreakerState", "CircuitBreaker"]
