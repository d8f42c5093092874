"""Routing: the order in which one delivery tries a channel's provider slots.

A ``Router`` answers one question, ``order(slots, task)``; ``deliver()`` then walks
that order with failover as before (a slot whose breaker is open, whose daily limit
is spent or whose bucket wait is too long is skipped; a retryable failure moves on
to the next). ``record()`` is a no-op hook through which ``deliver()`` reports each
provider call, so a strategy that learns (health) can learn. One file per strategy:
``priority``, ``round_robin``, ``weighted``, ``health``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import ClassVar

from actors.delivery.bucket import Clock
from actors.delivery.slot import ProviderSlot
from policy.types import DeliveryTask
from providers.errors import DeliveryError


def by_priority(slots: Sequence[ProviderSlot]) -> list[ProviderSlot]:
    """``slots`` by ``priority`` ascending; equal priorities keep their given order."""
    return sorted(slots, key=lambda s: s.priority)


class Router:
    """Orders slots for one delivery. Subclasses override ``order``; a strategy that
    learns from outcomes also overrides ``record``. Built once per channel with its
    slots, the shared ``rng`` and a monotonic ``clock`` (both injected for tests)."""

    name: ClassVar[str] = ""

    def __init__(self, slots: Sequence[ProviderSlot], *, rng: random.Random, clock: Clock) -> None:
        self.slots = by_priority(slots)
        self.rng = rng
        self.clock = clock

    def order(self, slots: Sequence[ProviderSlot], task: DeliveryTask) -> list[ProviderSlot]:
        """The slots to try for ``task``, first choice first (a new list, every slot once)."""
        raise NotImplementedError

    def record(self, slot: ProviderSlot, err: DeliveryError | None, duration_s: float) -> None:
        """One provider call on ``slot`` ended (``err`` None: accepted) after ``duration_s``."""


# The strategies import Router from here, so they come after it.
from actors.delivery.routing.health import HealthRouter
from actors.delivery.routing.priority import PriorityRouter
from actors.delivery.routing.round_robin import RoundRobinRouter
from actors.delivery.routing.weighted import WeightedRouter

ROUTERS: tuple[str, ...] = ("priority", "round_robin", "weighted", "health")


def make_router(
    name: str,
    slots: Sequence[ProviderSlot],
    rng: random.Random,
    clock: Clock,
    *,
    weights: Mapping[ProviderSlot, float] | None = None,
    window_s: float = 60.0,
    max_error_rate: float = 0.5,
) -> Router:
    """The router called ``name`` (one of ``ROUTERS``) for a channel's ``slots``.
    ``weights`` is for ``weighted`` (a slot missing from it weighs 1.0),
    ``window_s`` and ``max_error_rate`` for ``health``. ValueError for another name."""
    match name:
        case "priority":
            return PriorityRouter(slots, rng=rng, clock=clock)
        case "round_robin":
            return RoundRobinRouter(slots, rng=rng, clock=clock)
        case "weighted":
            return WeightedRouter(slots, rng=rng, clock=clock, weights=weights or {})
        case "health":
            return HealthRouter(slots, rng=rng, clock=clock, window_s=window_s, max_error_rate=max_error_rate)
    raise ValueError(f"unknown routing {name!r}; known: {', '.join(ROUTERS)}")


__all__ = [
    "ROUTERS",
    "HealthRouter",
    "PriorityRouter",
    "RoundRobinRouter",
    "Router",
    "WeightedRouter",
    "by_priority",
    "make_router",
]
