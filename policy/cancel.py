"""Cancelling a notification: what each of its channels answers.

The store (``stores.schedules.cancel``) locks the notification's held rows,
cancels those no release has taken, and reports what it found; this turns
that into the per-channel answer and says whether anything is cancelled.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from policy.api import ChannelCancel

FALLBACK_CHANNEL = "fallback"  # a fallback check has no channel of its own (stores.schedules)
CANCELLED = "cancelled"  # the tracking status and reason of a cancelled channel


def answers(statuses: Mapping[str, str], cancelled: set[str], releasing: set[str],
            earlier: Set[str] = frozenset()) -> list[ChannelCancel]:
    """The answer per channel, in channel order. ``statuses``: each channel's
    tracking status after the cancellation; ``cancelled``: the held channels
    (or the fallback check) cancelled now; ``releasing``: those a release holds;
    ``earlier``: held rows with no tracking row (a fallback check) an earlier
    cancellation took."""
    out = []
    for channel in sorted(set(statuses) | cancelled | releasing | earlier):
        status = statuses.get(channel)
        if channel in cancelled:
            result = "cancelled"
        elif channel in releasing:
            result = "releasing"
        elif status == CANCELLED or channel in earlier:
            result = "already_cancelled"
        else:
            result = "final"
        out.append(ChannelCancel(channel=channel, result=result, status=status))  # type: ignore[arg-type]
    return out


def anything_cancelled(channels: list[ChannelCancel]) -> bool:
    """Whether a channel is cancelled, by this call or an earlier one (a
    repeated cancellation answers as the first did)."""
    return any(c.result in ("cancelled", "already_cancelled") for c in channels)


def why_not(c: ChannelCancel) -> str:
    """Why a channel could not be cancelled, for an answer that cancelled nothing."""
    if c.result == "releasing":
        return "being released by the Scheduler now; read the notification for its outcome"
    return f"not held: {c.status}"


__all__ = ["CANCELLED", "FALLBACK_CHANNEL", "answers", "anything_cancelled", "why_not"]
