"""Priority routing (the default, and what deliver() always did): lowest
``priority`` first, equal priorities in config order."""

from __future__ import annotations

from collections.abc import Sequence

from actors.delivery.routing.base import Router, by_priority
from actors.delivery.slot import ProviderSlot
from policy.types import DeliveryTask


class PriorityRouter(Router):
    name = "priority"

    def order(self, slots: Sequence[ProviderSlot], task: DeliveryTask) -> list[ProviderSlot]:
        return by_priority(slots)


__all__ = ["PriorityRouter"]
