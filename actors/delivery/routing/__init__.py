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

from actors.delivery.bucket import Clock
from actors.delivery.routing.base import Router, by_priority
from actors.delivery.routing.health import HealthRouter
from actors.delivery.routing.priority import PriorityRouter
from actors.delivery.routing.round_robin import RoundRobinRouter
from actors.delivery.routing.weighted import WeightedRouter
from actors.delivery.slot import ProviderSlot

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
