"""The ``Router`` every strategy subclasses, and the order they start from."""

from __future__ import annotations

import random
from collections.abc import Sequence
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
