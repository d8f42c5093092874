"""Several devices per user (issue 16 item 5): a user's phones, tablets and
browsers, each with its push token (APNs, FCM) or web push subscription; a push
goes to each active one, and one (notification, channel) is still one record.

- ``Device``: what is registered (``PUT /v1/users/{id}/devices/{device}``);
  which channel it serves follows from its service (``apns``/``fcm``: ``push``,
  ``webpush``: ``web``).
- ``targets``: the devices a push goes to, each decided on its own with the
  ``device`` context of contextual preferences (``{"device": "tablet"}``
  rows apply to that device only), those not seen for ``STALE_S`` left out.
- ``merged``: the devices' outcomes as the channel's one outcome: sent if any
  device took it; the devices whose token is gone listed (``gone``) so the
  UserShard removes those devices, and only those.

No clock here: ``now`` is an argument.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from policy.decide import DEVICE_STALE_S
from policy.types import Attempt, DeliveryTask, Device, Message, Outcome, Service, Target, UserState

if TYPE_CHECKING:
    from policy.rules import Policy

STALE_S = DEVICE_STALE_S  # FCM's own horizon: a token unused this long is treated as expired
DEFAULT_SERVICE: dict[str, Service] = {"ios": "apns", "macos": "apns", "android": "fcm", "web": "webpush",
                                       "other": "fcm"}
DEFAULT_KIND = {"ios": "mobile", "android": "mobile", "web": "desktop", "macos": "desktop", "other": "mobile"}
MOST_DEVICES = 20  # per user: past it, the longest unseen goes


def live(d: Device, now: float) -> bool:
    """Seen within ``STALE_S``: its token is worth a try."""
    return now - d.last_seen <= STALE_S


def reachable(state: UserState, channel: str, now: float) -> bool:
    """The user has somewhere to send on ``channel``: an address, or a live device."""
    return channel in state.addresses or any(d.channel == channel and live(d, now) for d in state.devices)


def targets(state: UserState, channel: str, request: Message, policy: Policy, context: dict[str, str],
            now: float) -> tuple[list[Target], int]:
    """(the devices a send on ``channel`` goes to, how many live ones the user
    has there). Each is decided with its own ``device`` context; one not seen
    for ``STALE_S`` is left out (its token has most likely expired with the app)."""
    mine = [d for d in state.devices if d.channel == channel and live(d, now)]
    out = []
    contextual = state.templates or policy.contextual_defaults or any(p.context for p in state.prefs)
    for d in mine:
        if contextual:  # a contextual row may name this kind of device
            r = policy.resolve(state.prefs, state.templates, channel, request.category, request.content_type,
                               {**context, "device": d.kind}, now)
            if not r.enabled or r.frequency == "never":
                continue
        out.append(Target(d.device_id, d.service, d.token))
    return out, len(mine)


def fingerprint(token: str) -> str:
    """A token's short hash: what a gone device's outcome carries instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def gone_entry(device_id: str, token: str) -> str:
    """``Outcome.gone``'s entry for a device: its id and its token's fingerprint,
    so a device registered again with a new token meanwhile is not removed."""
    return f"{device_id}:{fingerprint(token)}"


def split_gone(entry: str) -> tuple[str, str]:
    device_id, _, fp = entry.rpartition(":")
    return device_id, fp


def merged(task: DeliveryTask, outcomes: Sequence[tuple[Target, Outcome]], now: float,
           retryable: frozenset[str] = frozenset()) -> Outcome:
    """The channel's one outcome from its devices' (each sent to one target):
    sent when any device took it (provider and message id the first such).
    Otherwise the failure that says most about what to do next: one that may
    pass (``retryable``: the whole channel is then tried again later, nothing
    having been sent) before any other of a device still there, then one that
    expired, and ``address_gone`` only when every token is gone. ``gone``: the
    devices whose token is gone (with the token, so a device registered again
    meanwhile is not the one removed); the attempts: all."""
    attempts: list[Attempt] = [a for _, o in outcomes for a in o.attempts]
    gone = [gone_entry(t.device_id, t.token) for t, o in outcomes if o.reason == "address_gone"]
    sent = [o for _, o in outcomes if o.status == "sent"]
    if not outcomes:
        return Outcome(task.notification_id, task.user_id, task.channel, task.category, "suppressed",
                       "address.missing_" + task.channel, task.accepted_at, now, priority=task.priority)
    left = [o for _, o in outcomes if o.reason != "address_gone"]
    first = sent[0] if sent else next(
        (o for o in left if o.status == "failed" and o.reason in retryable),
        next((o for o in left if o.status == "failed"), left[0] if left else outcomes[0][1]))
    n = len(outcomes)
    detail = first.detail
    if n > 1:
        detail = f"{len(sent)} of {n} devices" + (f"; {len(gone)} gone" if gone else "") + (
            f"; {first.detail}" if first.detail and not sent else "")
    status, reason = first.status, first.reason
    return Outcome(task.notification_id, task.user_id, task.channel, task.category, status, reason,
                   task.accepted_at, max((o.completed_at for _, o in outcomes), default=now),
                   provider=first.provider, provider_message_id=first.provider_message_id, attempts=attempts,
                   priority=task.priority, detail=detail, gone=gone or None)


def entry(d: Device) -> dict:
    """A device as its audit row shows it: everything but the token."""
    return {"device_id": d.device_id, "service": d.service, "platform": d.platform, "app": d.app, "kind": d.kind}


__all__ = ["DEFAULT_KIND", "entry", "DEFAULT_SERVICE", "MOST_DEVICES", "STALE_S", "fingerprint", "gone_entry", "live", "merged", "split_gone", "reachable", "targets"]
