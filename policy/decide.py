"""``decide()``: for one request and one user's state, what happens on each channel.

Pure and fast: no I/O, no clock reads (the caller passes ``now``). The full
preference model (levels, quiet hours, digests) plugs in here later; the order of
checks below is the order reasons are reported in.
"""

from __future__ import annotations

from collections.abc import Iterable

from policy.types import Decision, Message, UserState

# Channels whose address may come from the provider's configuration instead of
# the user (a product's webhook endpoint serves every user).
ADDRESS_OPTIONAL = frozenset({"webhook", "in_app"})


def opted_out(state: UserState, channel: str, category: str) -> str | None:
    """The reason code if the user switched this (channel, category) off."""
    outs = state.opt_outs
    if not outs:
        return None
    if f"{channel}:*" in outs:
        return "pref.channel_off"
    if f"{channel}:{category}" in outs or f"*:{category}" in outs:
        return "pref.category_off"
    return None


def decide_channel(request: Message, state: UserState | None, channel: str,
                   available: frozenset[str]) -> Decision:
    if channel not in available:
        return Decision(channel, "suppress", "channel.unavailable")
    if state is None:
        # An unregistered user has every default and no address: channels whose
        # address comes from the provider's configuration still deliver.
        if channel in ADDRESS_OPTIONAL:
            return Decision(channel, "send", "ok")
        return Decision(channel, "suppress", "user.unknown")
    reason = opted_out(state, channel, request.category)
    if reason is not None:
        return Decision(channel, "suppress", reason)
    if channel not in state.addresses and channel not in ADDRESS_OPTIONAL:
        return Decision(channel, "suppress", f"address.missing_{channel}")
    why = state.suppressed.get(channel)
    if why is not None:
        return Decision(channel, "suppress", f"suppression.{why}")
    return Decision(channel, "send", "ok")


def decide(request: Message, state: UserState | None,
           available: frozenset[str]) -> list[Decision]:
    """One Decision per distinct channel the request asks for, in its order."""
    return [decide_channel(request, state, ch, available) for ch in unique(request.channels)]


def unique(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out
