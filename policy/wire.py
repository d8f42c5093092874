"""How batches cross actor boundaries: MessagePack through msgspec, one cached
Decoder per type (building a Decoder is the slow part)."""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar, cast

import msgspec

from policy.types import BroadcastRequest, NotificationRequest

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode


@cache
def decoder(typ: Any) -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(typ)


def decode(data: bytes, typ: type[T]) -> T:
    return decoder(cast(Any, typ)).decode(data)  # cast: a type is hashable, lru_cache's stub does not know it


class Inbound(msgspec.Struct, array_like=True):
    """A decoded request with its resolved notification id, Ingestor → UserShard."""

    id: str
    request: NotificationRequest
    stages: dict[str, float] | None = None  # a traced one's stamps (policy.trace)
    traceparent: str | None = None  # W3C, when its OpenTelemetry trace is sampled (actors/spans.py)


class Broadcast(msgspec.Struct, array_like=True):
    """A decoded broadcast with its resolved id, Ingestor → every UserShard."""

    id: str
    request: BroadcastRequest


class Engaged(msgspec.Struct, array_like=True, frozen=True):
    """An open or click an HTTP process recorded, → the UserShard owning the person
    (engine/engaged.py): when it happened (as stored) and when it was passed on."""

    user_id: str
    at: float
    recorded: float
    channel: str = ""  # where (channel choice counts it, policy/choice.py)
