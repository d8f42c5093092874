"""The one protocol every provider implements, and what it returns."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec

from policy.types import DeliveryTask


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

