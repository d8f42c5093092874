"""Outbound status events: what one says, where it is published, which
subscriptions want it, and in which lane a subscription delivers it.

An event is a change of one (notification, channel): ``accepted`` when the
Ingestor takes the request (channel ``any``: it has no channels yet), then each
status its tracking row takes (``sent``, ``deferred``, ``delivered``, ...), and
``opened`` / ``clicked`` / ``converted`` from engagement. Published on NATS as
``<prefix>.events.<channel>.<status>`` and delivered to webhook subscriptions
(actors/event_sender.py; docs/design.md, "Status events").
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from policy.sharding import stable_hash
from policy.types import CHANNELS

EventStatus = Literal["accepted", "sent", "delivered", "bounced", "complained", "opened", "clicked", "converted", "failed",
                      "suppressed", "rejected", "deferred", "digested", "expired", "cancelled"]
STATUSES: tuple[str, ...] = EventStatus.__args__  # type: ignore[attr-defined]
ANY_CHANNEL = "any"  # the channel of an event about the whole request (accepted; a rejected payload)
EVENT_CHANNELS: tuple[str, ...] = (*CHANNELS, ANY_CHANNEL)
EventChannel = Literal["email", "sms", "push", "in_app", "web", "voice", "webhook", "any"]
Category = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]


class StatusEvent(Struct, kw_only=True, omit_defaults=True):
    """One status change, as published on NATS and POSTed to subscribers."""

    id: str  # the event's id: the same on every copy (JetStream's Nats-Msg-Id; Tidings-Delivery-Id of a webhook)
    type: str  # "notification.<status>"
    notification_id: str
    user_id: str
    channel: EventChannel
    category: str
    status: EventStatus
    at: float  # when the change was committed (epoch seconds)
    reason: str | None = None
    provider: str | None = None
    parent_id: str | None = None  # the broadcast it belongs to


def channel_token(channel: str) -> str:
    """A tracking row's channel as an event's: ``*`` (the request rejected
    before it had channels) is ``any``."""
    return ANY_CHANNEL if channel == "*" or channel not in EVENT_CHANNELS else channel


def event(*, id: str, notification_id: str, user_id: str, channel: str, category: str, status: str, at: float,
          reason: str | None = None, provider: str | None = None, parent_id: str | None = None) -> StatusEvent:
    return StatusEvent(id=id, type=f"notification.{status}", notification_id=notification_id, user_id=user_id,
                       channel=channel_token(channel), category=category, status=status,  # type: ignore[arg-type]
                       at=at, reason=reason, provider=provider, parent_id=parent_id)


def subject(prefix: str, e: StatusEvent) -> str:
    return f"{prefix}.events.{e.channel}.{e.status}"


class Filters(Struct, kw_only=True, frozen=True):
    """What a subscription wants; an empty list wants everything of its kind."""

    channels: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    def wants(self, e: StatusEvent) -> bool:
        # an event about the whole request (accepted) belongs to every channel
        return ((not self.channels or e.channel == ANY_CHANNEL or e.channel in self.channels)
                and (not self.statuses or e.status in self.statuses)
                and (not self.categories or e.category in self.categories))


def filter_subject(prefix: str, f: Filters) -> str:
    """The one subject filter a subscription's JetStream consumer takes (a
    server before NATS 2.10 takes one). One status narrows it; channels cannot,
    since ``accepted`` comes on channel ``any`` for every channel.
    ``Filters.wants`` decides the rest."""
    if len(f.statuses) == 1:
        return f"{prefix}.events.*.{f.statuses[0]}"
    return f"{prefix}.events.>"


def lane(notification_id: str, lanes: int) -> int:
    """A subscription delivers one notification's events in one lane, one at a
    time: their order is kept while other notifications go on beside them."""
    return stable_hash(notification_id) % lanes


def backoff(retry_backoff_s: list[float], attempt: int) -> float | None:
    """The wait before attempt ``attempt + 1`` (``attempt`` tries made so far),
    or None when no try is left: the event is then a dead letter."""
    return retry_backoff_s[attempt - 1] if 1 <= attempt <= len(retry_backoff_s) else None


# 4xx answers that say "not now" rather than "never", retried like 5xx: a timeout, a
# conflict, a lock, too early, too many; and what a receiver answers while it is being
# deployed or rotating its secret (401, 403, 404)
RETRYABLE_4XX = frozenset({401, 403, 404, 408, 409, 423, 425, 429})


def refused_for_good(status: int) -> bool:
    """Whether a subscriber's HTTP answer refuses the event itself (a 4xx other
    than ``RETRYABLE_4XX``): retrying the same body cannot help, and its lane
    would hold the notifications behind it for every retry wait."""
    return 400 <= status < 500 and status not in RETRYABLE_4XX


ENCODER = msgspec.json.Encoder()
DECODER = msgspec.json.Decoder(StatusEvent)
