"""What a UserShard does with held items the Scheduler hands back when due,
planned without doing it (``policy.plan`` then plans each round as usual):

- deferred channels: each notification decided again, on its claimed channels only;
- fallback checks: a notification not ``answered`` goes out on its next fallback channel;
- digest buckets: the sealed bucket's items composed into one notification.

Pure: no I/O, no clock (``now`` is an argument).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Collection, Mapping, Set
from typing import cast

import msgspec

from policy import wire
from policy.digest import compose
from policy.held import DueDeferred, DueDigest, DueFallback, HeldDigest
from policy.plan import Item
from policy.types import Channel, DigestKey, NotificationRequest, derive_id
from policy.windows import period_bounds


def deferred_items(dues: Collection[DueDeferred]) -> list[Item]:
    """One item per notification, asking for only the channels that were
    claimed: its other channels were settled already or are held on their own."""
    claimed: dict[str, list[str]] = {}
    first: dict[str, DueDeferred] = {}
    for d in dues:
        channels = claimed.setdefault(d.notification_id, [])
        if d.channel not in channels:
            channels.append(d.channel)
        first.setdefault(d.notification_id, d)
    return [Item(nid, d.user_id, msgspec.structs.replace(wire.decode(d.request, NotificationRequest),
                                                         channels=claimed[nid]))
            for nid, d in first.items()]


def answered(unless: str | None, statuses: Set[str], engaged: bool) -> bool:
    """Whether a due fallback check finds its notification answered: opened or
    clicked on a channel (``engaged``: an engagement event), or, unless
    ``fallback_unless`` is "opened", a channel delivered (``statuses``: its
    channels' tracking statuses). An open implies delivery, so it always counts."""
    return engaged or (unless != "opened" and "delivered" in statuses)


def fallback_items(dues: Collection[DueFallback], statuses: Mapping[str, Set[str]], engaged: Set[str],
                   recorded: Set[tuple[str, str]]) -> tuple[list[Item], set[tuple[str, str]]]:
    """For due fallback checks: the notifications not ``answered``, each narrowed
    to its first fallback channel not asked for already (the rest stay its
    fallbacks, tried as usual if that one is not sent), and the (notification,
    channel) pairs among them recorded already (a redelivered check sends
    nothing twice). ``statuses``: per notification, its channels' tracking
    statuses; ``engaged``: notifications opened or clicked; ``recorded``: the
    final (not deferred) tracking rows."""
    items: list[Item] = []
    done: set[tuple[str, str]] = set()
    for d in dues:
        req = wire.decode(d.request, NotificationRequest)
        nid = d.notification_id
        if answered(req.fallback_unless, statuses.get(nid, set()), nid in engaged):
            continue
        ahead = [ch for ch in req.fallback if ch not in req.channels]
        if not ahead:
            continue
        done |= {(n, c) for n, c in recorded if n == nid and c in ahead}
        items.append(Item(nid, d.user_id, msgspec.structs.replace(
            req, channels=ahead[:1], fallback=ahead[1:], fallback_after_s=None, fallback_unless=None)))
    return items, done


def digest_id(key: DigestKey) -> str:
    """The id of the notification a bucket is sent as: a retry sends the same id,
    which the tracking row's unique (notification, channel) lets through once."""
    return derive_id(f"digest:{key.text()}")


def digest_item(due: DueDigest, found: Collection[tuple[str, bytes]], *, now: float) -> Item:
    """The notification a sealed bucket is sent as: its items (``found``, as
    (notification id, held request), oldest first; at least one) composed into
    one message on the bucket's channel."""
    key = due.key
    items = [(nid, wire.decode(blob, NotificationRequest)) for nid, blob in found]
    first = items[0][1]
    channel = cast(Channel, key.channel)  # decided on a Channel: the key holds one
    digest = NotificationRequest(user_id=due.user_id, category=key.category, channels=[channel],
                                 id=None, priority="normal", metadata={"digest": key.text()},
                                 content=compose(items, key.category, key.frequency),
                                 content_type=first.content_type, accepted_at=now)
    return Item(digest_id(key), due.user_id, digest)


def next_bucket(item: HeldDigest, tz: zoneinfo.ZoneInfo) -> tuple[DigestKey, float]:
    """The bucket after ``item``'s (sealed) one: its key and when it is due."""
    k = item.key
    _, end = period_bounds(k.frequency, tz, item.due_at)
    return DigestKey(k.user_id, k.channel, k.category, k.frequency, int(end)), end


__all__ = ["answered", "deferred_items", "digest_id", "digest_item", "fallback_items", "next_bucket"]
