"""Test doubles for the delivery mechanics: a hand-driven clock with a fake async
sleep, scripted providers, and builders for tasks and slots."""

from __future__ import annotations

import asyncio

from actors.delivery import Backoff, CircuitBreaker, DailyLimit, ProviderSlot, TokenBucket
from policy.types import Content, DeliveryTask
from providers.base import Receipt

WALL_START = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class FakeClock:
    """Monotonic and wall time that move only when told (or when ``sleep`` is awaited).

    ``clock()`` / ``clock.monotonic()`` give monotonic seconds, ``clock.wall()`` epoch
    seconds; ``await clock.sleep(s)`` records ``s`` in ``sleeps`` and advances both.
    """

    def __init__(self, start: float = 1000.0, wall_start: float = WALL_START) -> None:
        self.now = start
        self.wall_now = wall_start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall_now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)  # still a suspension point, like a real sleep


class FakeProvider:
    """Raises the scripted exceptions in order (``None`` = succeed that call), then
    succeeds forever. ``hang=True`` makes every call wait until cancelled."""

    channel = "email"

    def __init__(self, name: str = "primary", script: list[BaseException | None] | None = None, *, hang: bool = False):
        self.name = name
        self.script = list(script or [])
        self.hang = hang
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.entered = asyncio.Event()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, task: DeliveryTask) -> Receipt:
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.entered.set()
        try:
            await asyncio.sleep(0)
            if self.hang:
                await asyncio.Event().wait()
            step = self.script.pop(0) if self.script else None
            if step is not None:
                raise step
            return Receipt(message_id=f"{self.name}-{self.calls}")
        finally:
            self.active -= 1


def make_task(**overrides: object) -> DeliveryTask:
    fields: dict[str, object] = dict(
        notification_id="n-1",
        user_id="u-1",
        channel="email",
        category="billing",
        address="u1@example.com",
        content=Content(subject="Hi", text="Hello"),
        priority="high",
        accepted_at=WALL_START - 5.0,
    )
    fields.update(overrides)
    return DeliveryTask(**fields)  # type: ignore[arg-type]


def make_slot(
    provider: FakeProvider,
    clock: FakeClock,
    *,
    priority: int = 0,
    rate_per_s: float = 0.0,
    burst: float = 10.0,
    daily_limit: int = 0,
    failure_threshold: int = 5,
    recovery_s: float = 30.0,
    concurrency: int = 10,
    **overrides: object,
) -> ProviderSlot:
    """A slot on ``clock``; unlimited bucket and deterministic backoff unless told."""
    overrides.setdefault("backoff", Backoff(jitter="none"))
    return ProviderSlot(
        provider=provider,  # type: ignore[arg-type]
        priority=priority,
        bucket=TokenBucket(rate_per_s, burst, clock),
        daily=DailyLimit(daily_limit, clock.wall),
        breaker=CircuitBreaker(failure_threshold, recovery_s, 1, clock),
        bulkhead=asyncio.Semaphore(concurrency),
        **overrides,  # type: ignore[arg-type]
    )
