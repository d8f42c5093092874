"""Weighted routing: the first slot is drawn at random in proportion to its
``weight`` (from the injected rng, so a seeded one repeats); the others follow in
priority order, for failover. A slot of weight 0 is never drawn first: it only
takes over when the drawn ones fail. All weights 0: priority order."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from actors.delivery.bucket import Clock
from actors.delivery.routing.base import Router, by_priority
from actors.delivery.slot import ProviderSlot
from policy.types import DeliveryTask


class WeightedRouter(Router):
    name = "weighted"

    def __init__(self, slots: Sequence[ProviderSlot], *, rng: random.Random, clock: Clock,
                 weights: Mapping[ProviderSlot, float]) -> None:
        super().__init__(slots, rng=rng, clock=clock)
        for slot, w in weights.items():
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"provider {slot.name!r}: weight must be a finite number >= 0, not {w!r}")
        self.weights = dict(weights)

    def order(self, slots: Sequence[ProviderSlot], task: DeliveryTask) -> list[ProviderSlot]:
        ranked = by_priority(slots)
        weights = [self.weights.get(s, 1.0) for s in ranked]
        total = sum(weights)
        if total <= 0:
            return ranked
        point = self.rng.random() * total  # in [0, total): lands in exactly one weight > 0
        for i, w in enumerate(weights):
            point -= w
            if point < 0 and w > 0:
                return [ranked.pop(i), *ranked]
        # Float rounding left the point at the very end: the last slot that has weight.
        i = max(i for i, w in enumerate(weights) if w > 0)
        return [ranked.pop(i), *ranked]


__all__ = ["WeightedRouter"]
