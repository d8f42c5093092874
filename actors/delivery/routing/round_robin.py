"""Round-robin routing: each call starts at the next slot (in priority order,
wrapping around); the others follow in priority order, for failover."""

from __future__ import annotations

from collections.abc import Sequence

from actors.delivery.routing.base import Router, by_priority
from actors.delivery.slot import ProviderSlot
from policy.types import DeliveryTask


class RoundRobinRouter(Router):
    name = "round_robin"
    _calls = 0  # order() calls so far; the n-th starts at slot n mod len(slots)

    def order(self, slots: Sequence[ProviderSlot], task: DeliveryTask) -> list[ProviderSlot]:
        ranked = by_priority(slots)
        if not ranked:
            return ranked
        first = ranked.pop(self._calls % len(ranked))
        self._calls += 1
        return [first, *ranked]


__all__ = ["RoundRobinRouter"]
