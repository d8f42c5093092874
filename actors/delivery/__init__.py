"""Delivery mechanics a ChannelShard composes: rate limits, circuit breaker,
backoff, provider slots and ``deliver()`` (priority failover with retries).

No Ray, and no I/O besides ``provider.send`` and the shared limits' Redis step
(``shared.py``); clocks, sleep and randomness are injected so all of it runs
under test without sleeping.
"""

from actors.delivery.backoff import Backoff, Jitter
from actors.delivery.breaker import BreakerState, CircuitBreaker
from actors.delivery.bucket import Clock, DailyLimit, Sleep, TokenBucket
from actors.delivery.deliver import UnexpectedProviderError, deliver, deliver_batch, reason_for
from actors.delivery.slot import ProviderSlot

__all__ = [
    "Backoff",
    "BreakerState",
    "CircuitBreaker",
    "Clock",
    "DailyLimit",
    "Jitter",
    "ProviderSlot",
    "Sleep",
    "TokenBucket",
    "UnexpectedProviderError",
    "deliver",
    "deliver_batch",
    "reason_for",
]
