"""One provider account as a ChannelShard sees it: the client plus its limits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from actors.delivery.backoff import Backoff
from actors.delivery.breaker import CircuitBreaker
from actors.delivery.bucket import DailyLimit, TokenBucket
from actors.delivery.bulkhead import Bulkhead
from actors.delivery.shared import SharedLimits
from providers.base import Provider


@dataclass(eq=False)  # compared and hashed by identity: one slot per provider account
class ProviderSlot:
    provider: Provider
    priority: int  # lower tries first; deliver() takes slots in the order given
    bucket: TokenBucket | SharedLimits  # a SharedLimits is both: counted in Redis for the deployment
    daily: DailyLimit | SharedLimits
    breaker: CircuitBreaker
    bulkhead: asyncio.Semaphore | Bulkhead  # bounds concurrent calls to this provider (urgent ones first)
    max_attempts: int = 3  # calls on this slot before failing over
    backoff: Backoff = field(default_factory=Backoff)
    timeout_s: float = 10.0  # per call
    max_wait_s: float = 2.0  # longest wait for a rate-limit token before failing over

    @property
    def name(self) -> str:
        return self.provider.name


__all__ = ["ProviderSlot"]
