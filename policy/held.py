"""Notifications held for later, and what comes back when they are due.

A UserShard holds a (notification, channel) when ``decide`` defers it (quiet
hours, a time window) or collects it into a digest, and holds a fallback check
when a request asks for its fallback channels unless it is answered in time.
The Scheduler hands them back as ``Due`` items. Each kind is its own Struct of a
tagged union, so code dispatches with ``match`` and the type checker sees every
kind; ``stores.schedules`` maps them to ``scheduled_notifications`` rows.
"""

from __future__ import annotations

from msgspec import Struct

from policy.types import DigestKey


class _Held(Struct, kw_only=True):
    notification_id: str
    user_id: str
    category: str
    priority: str
    due_at: float  # seconds since the epoch
    request: bytes  # the single-user NotificationRequest as MessagePack (``policy.wire``)
    accepted_at: float
    parent_id: str | None = None  # the broadcast it belongs to


class HeldDeferred(_Held, tag="deferred", kw_only=True):
    """One channel deferred until ``due_at``, then decided again."""

    channel: str
    reason: str  # quiet_hours | time_window


class HeldDigest(_Held, tag="digest", kw_only=True):
    """One channel's item collected into the bucket ``key``. The store moves it
    to the next period's bucket when ``key``'s is sealed already, and sets
    ``digest_id`` to the bucket's digest."""

    channel: str
    key: DigestKey
    digest_id: str | None = None
    why: str | None = None  # a reason of its own (fatigue.<window>), else the frequency's

    @property
    def reason(self) -> str:
        return self.why or f"digest.{self.key.frequency}"


class HeldFallback(_Held, tag="fallback", kw_only=True):
    """At ``due_at`` the request's fallback channels go out unless it was
    answered (delivered, or opened: ``fallback_unless``). It has no channel of
    its own."""


Held = HeldDeferred | HeldDigest | HeldFallback


class DueDeferred(Struct, tag="deferred", array_like=True):
    """A deferred channel that is due: decide it again."""

    user_id: str
    notification_id: str
    channel: str
    request: bytes


class DueFallback(Struct, tag="fallback", array_like=True):
    """A fallback check that is due."""

    user_id: str
    notification_id: str
    request: bytes


class DueDigest(Struct, tag="digest", array_like=True):
    """A digest bucket that is due: seal it, compose its items, send once."""

    user_id: str
    key: DigestKey


Due = DueDeferred | DueFallback | DueDigest


__all__ = ["Due", "DueDeferred", "DueDigest", "DueFallback", "Held", "HeldDeferred", "HeldDigest", "HeldFallback"]
