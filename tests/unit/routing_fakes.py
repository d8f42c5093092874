"""Test doubles for routing: providers that take time on the fake clock or can
batch, a provider the registry can build from config, a router that remembers
what deliver() told it, and a deliver() call with a router."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from fakes import FakeClock, FakeProvider, make_slot, make_task

from actors.delivery import ProviderSlot, deliver
from actors.delivery.routing import PriorityRouter, Router
from policy.types import DeliveryTask, Outcome
from providers.base import Receipt
from providers.errors import DeliveryError


class TimedProvider(FakeProvider):
    """A FakeProvider whose every call takes ``latency`` seconds of ``clock`` time."""

    def __init__(self, name: str, clock: FakeClock, latency: float,
                 script: list[BaseException | None] | None = None) -> None:
        super().__init__(name, script)
        self.clock, self.latency = clock, latency

    async def send(self, task: DeliveryTask) -> Receipt:
        self.clock.advance(self.latency)
        return await super().send(task)


class BatchProvider(FakeProvider):
    """A FakeProvider with ``send_batch``: one call for many tasks."""

    max_batch = 100

    async def send_batch(self, tasks: Sequence[DeliveryTask]) -> Receipt:
        return await self.send(tasks[0])


class ConfigProvider(FakeProvider):
    """Built by the provider registry as ``cls(name, settings)``; logs every accepted
    send in ``ConfigProvider.sent`` (shared, so a test sees all instances)."""

    sent: ClassVar[list[str]] = []

    def __init__(self, name: str, settings: dict) -> None:
        super().__init__(name)

    async def send(self, task: DeliveryTask) -> Receipt:
        receipt = await super().send(task)
        ConfigProvider.sent.append(self.name)
        return receipt


class RecordingRouter(PriorityRouter):
    """Priority order; remembers each ``order`` call and each ``record`` as
    (provider name, error kind or None, duration_s)."""

    def __init__(self, slots: Sequence[ProviderSlot], clock: FakeClock) -> None:
        super().__init__(slots, rng=random.Random(0), clock=clock)
        self.orders = 0
        self.records: list[tuple[str, str | None, float]] = []

    def order(self, slots: Sequence[ProviderSlot], task: DeliveryTask) -> list[ProviderSlot]:
        self.orders += 1
        return super().order(slots, task)

    def record(self, slot: ProviderSlot, err: DeliveryError | None, duration_s: float) -> None:
        self.records.append((slot.name, None if err is None else err.kind, duration_s))


def channel(clock: FakeClock, *providers: FakeProvider, **slot_options: object) -> list[ProviderSlot]:
    """One slot per provider, priorities 0, 1, 2, … in the order given."""
    return [make_slot(p, clock, priority=i, **slot_options) for i, p in enumerate(providers)]  # type: ignore[arg-type]


async def routed(clock: FakeClock, slots: list[ProviderSlot], router: Router | None, **task: object) -> Outcome:
    return await deliver(make_task(**task), slots, clock=clock, wall=clock.wall, sleep=clock.sleep,
                         rng=random.Random(0), router=router)
