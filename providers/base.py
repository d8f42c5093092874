"""The protocol every provider implements, the one a provider that batches adds,
and what they return."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import msgspec

from policy.types import TTL_MAX_S, DeliveryTask


def seconds_left(task: DeliveryTask, now: float | None = None) -> int | None:
    """Whole seconds left of ``task``'s life (``expires_at``), at least 1, for a
    push service's TTL; None when it has no end. (A task already past it is not
    sent: ``actors.delivery.deliver`` checks right before the call.)"""
    if task.expires_at is None:
        return None
    # at most TTL_MAX_S: the shard that planned it may have a clock a little ahead of this one
    return min(TTL_MAX_S, max(1, int(task.expires_at - (time.time() if now is None else now))))


class Receipt(msgspec.Struct, frozen=True):
    """What a provider answered when it accepted a message."""

    message_id: str | None = None


@runtime_checkable
class Provider(Protocol):
    """A client for one provider account.

    ``send`` either returns a Receipt or raises a ``providers.errors.DeliveryError``
    subclass; it never retries by itself (the ChannelShard owns retries, limits and
    breakers). ``start``/``close`` open and release connections and sessions.
    """

    name: str
    channel: str

    async def start(self) -> None: ...

    async def send(self, task: DeliveryTask) -> Receipt: ...

    async def close(self) -> None: ...


@runtime_checkable
class BatchProvider(Provider, Protocol):
    """A Provider that can also take many tasks in one call.

    ``send_batch`` sends every task (at most ``max_batch``) in one request and
    returns one Receipt, or raises one DeliveryError for them all: a batch is
    accepted or refused as a whole. A ChannelShard batches only when every
    provider of the channel is one, so failover never meets a provider that
    cannot take what it is given. Tasks share their content unless the provider
    also says ``mixed_content = True`` (optional, so not part of the protocol).
    """

    max_batch: int

    async def send_batch(self, tasks: Sequence[DeliveryTask]) -> Receipt: ...
