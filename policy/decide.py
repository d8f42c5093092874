"""``decide()``: for one request and one user's state, what happens on each channel.

Pure and fast: no I/O, no clock reads (the caller passes ``now``). The order of
the checks is the order reasons are reported in:

 1. ``channel.unavailable``   the deployment has no provider for the channel
 2. ``user.unknown``          no such user (webhook and in-app still deliver)
 3. ``rule.<name>``           a channel_priority rule (e.g. voice only for critical)
 4. ``consent.<status>_<ch>``  a consent_required channel without a grant for the
    rule's purpose that holds now: ``missing``, ``pending`` (not confirmed yet),
    ``withdrawn``, ``expired``
 5. ``pref.<level>_off``      the resolved preference is off (``pref.frequency_never``)
 6. ``address.missing_<ch>`` / ``suppression.<why>``
 7. DEFER ``scheduled``      the request's ``send_at`` / ``send_at_local`` is ahead (policy/schedule.py)
 8. DIGEST ``digest.<frequency>``  a non-immediate frequency collects into a digest
 9. DEFER ``tcpa.window`` (a ``send_window`` rule's reason)  held until its window opens
10. DEFER ``quiet_hours`` / ``time_window``  deferred to the window's end / next start
11. SEND ``ok``

Critical requests pass quiet hours (and digests) only where a rule says so;
nothing passes consent.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable, Sequence
from functools import lru_cache

from policy import schedule
from policy.prefs import DIGEST_FREQUENCIES
from policy.rules import Policy
from policy.types import CHANNEL_OF, Decision, Defer, Digest, DigestKey, Message, Send, Suppress, UserState
from policy.windows import next_allowed, period_bounds, quiet_until

# Channels whose address may come from the provider's configuration instead of
# the user (a product's webhook endpoint serves every user).
ADDRESS_OPTIONAL = frozenset({"webhook", "in_app"})

DEFAULT_POLICY = Policy()


@lru_cache(maxsize=1024)
def zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")  # names are validated on write; this is a stored bad one


def consent_key(channel: str, purpose: str) -> str:
    """(channel, purpose) → ``"sms"`` (purpose ``*``) or ``"sms:marketing"``."""
    return channel if purpose == "*" else f"{channel}:{purpose}"


def split_consent_key(key: str) -> tuple[str, str]:
    """``consent_key`` reversed: ``"sms"`` → ("sms", "*"); ``"sms:marketing"`` → ("sms", "marketing")."""
    channel, _, purpose = key.partition(":")
    return channel, purpose or "*"


def consent_status(state: UserState, channel: str, purpose: str, now: float, fallback: bool = True) -> str:
    """``granted`` if the consent for ``purpose`` on ``channel`` holds at ``now``,
    else why not (``missing``, ``pending``, ``withdrawn``, ``expired``). A record
    of the purpose itself decides; without one, the whole channel's does (a
    channel-wide grant covers the purposes nobody recorded apart, while a
    purpose's own withdrawal, or a grant still waiting for confirmation, is not
    overridden by it). ``fallback=False`` (a double opt-in purpose): only the
    purpose's own, confirmed grant will do."""
    key = consent_key(channel, purpose)
    if fallback and purpose != "*" and key not in state.consent and key not in state.consent_state:
        key = channel
    if key in state.consent:
        until = state.consent_until.get(key)
        return "granted" if until is None or until > now else "expired"
    return state.consent_state.get(key, "missing")


def current_consent(state: UserState, now: float) -> dict[str, str]:
    """Each recorded consent key's status at ``now`` (an expired grant is expired)."""
    out = dict(state.consent_state)
    for key in state.consent:
        until = state.consent_until.get(key)
        out[key] = "expired" if until is not None and until <= now else "granted"
    return out


def decide_channel(request: Message, state: UserState | None, channel: str, available: frozenset[str],
                   policy: Policy = DEFAULT_POLICY, *, now: float, digest: bool = True,
                   context: dict[str, str] | None = None) -> Decision:
    """``now``: seconds since the epoch (quiet hours, windows and digest periods
    are evaluated at it). ``digest=False`` for a message that is itself a digest
    (never collected again). ``context``: the request's context with its urgency
    (``decide`` builds it once)."""
    if channel not in available:
        return Suppress(channel, "channel.unavailable")
    if state is None:
        # An unregistered user has every default and no address: channels whose
        # address comes from the provider's configuration still deliver.
        if channel in ADDRESS_OPTIONAL:
            return _scheduled(request, channel, "UTC", now) or Send(channel)
        return Suppress(channel, "user.unknown")
    category, priority = request.category, request.priority
    if policy.channel_rules:
        blocked = policy.channel_blocked(channel, priority, category)
        if blocked is not None:
            return Suppress(channel, blocked)
    if policy.consent_channels:
        rule = policy.consent_rule(channel, category)
        if rule is not None:
            status = consent_status(state, channel, rule.purpose, now, fallback=not rule.double_opt_in)
            if status != "granted":
                return Suppress(channel, f"consent.{status}_{channel}")
    if context is None:
        context = request_context(request)
    pref = policy.resolve(state.prefs, state.templates, channel, category, request.content_type, context, now)
    if (not pref.enabled or pref.frequency == "never") and state.devices:
        pref = _on_some_device(pref, state, policy, channel, category, request.content_type, context, now)
    if not pref.enabled:
        return Suppress(channel, f"pref.{_origin(pref.source['enabled'])}_off")
    if pref.frequency == "never":
        return Suppress(channel, "pref.frequency_never")
    if channel not in state.addresses and channel not in ADDRESS_OPTIONAL and not _has_device(state, channel, now):
        return Suppress(channel, f"address.missing_{channel}")
    why = state.suppressed.get(channel)
    if why is not None:
        return Suppress(channel, f"suppression.{why}")
    if request.send_at is not None or request.send_at_local is not None:
        # before digests and quiet hours: those apply when it is due (decided again then)
        later = _scheduled(request, channel, state.timezone, now)
        if later is not None:
            return later
    held = _outside_send_window(policy, channel, category, state, now) if policy.send_windows else None
    if held is None and not pref.quiet_hours and not pref.time_windows and pref.frequency == "immediate":
        return Send(channel)
    tz = zone(state.timezone)
    if digest and pref.frequency in DIGEST_FREQUENCIES and not policy.bypasses("bypass_digest", priority, category):
        _, end = period_bounds(pref.frequency, tz, now)
        return Digest(channel, DigestKey(state.user_id, channel, category, pref.frequency, int(end)))
    if held is not None:  # after the digest: a digest sent later meets the window then, as one message
        return held
    if (pref.quiet_hours or pref.time_windows) and not policy.bypasses("bypass_quiet_hours", priority, category):
        until = quiet_until(pref.quiet_hours, tz, now) if pref.quiet_hours else None
        if until is not None:
            return Defer(channel, "quiet_hours", until)
        until = next_allowed(pref.time_windows, tz, now) if pref.time_windows else None
        if until is not None:
            return Defer(channel, "time_window", until)
    return Send(channel)


DEVICE_STALE_S = 270 * 86_400.0  # policy.devices.STALE_S (that module imports this one)


def _has_device(state: UserState, channel: str, now: float) -> bool:
    return any(CHANNEL_OF[d.service] == channel and now - d.last_seen <= DEVICE_STALE_S for d in state.devices)


def _on_some_device(pref, state: UserState, policy: Policy, channel: str, category: str, content_type: str,
                    context: dict[str, str], now: float):
    """A channel off for the request's context may still be on for a kind of
    device the user has there (``{"device": "mobile"}`` enabled under a channel
    that is off): that device's resolution then decides (``policy.devices.targets``
    picks the devices)."""
    for kind in sorted({d.kind for d in state.devices
                        if CHANNEL_OF[d.service] == channel and now - d.last_seen <= DEVICE_STALE_S}):
        other = policy.resolve(state.prefs, state.templates, channel, category, content_type,
                               {**context, "device": kind}, now)
        if other.enabled and other.frequency != "never":
            return other
    return pref


def _scheduled(request: Message, channel: str, timezone: str, now: float) -> Defer | None:
    """Held until the request's ``send_at`` / ``send_at_local`` (policy/schedule.py),
    if that is later than ``now``."""
    if request.send_at is None and request.send_at_local is None:
        return None
    accepted = request.accepted_at if request.accepted_at is not None else now
    due = schedule.due_at(request.send_at, request.send_at_local, zone(timezone), accepted)
    return Defer(channel, schedule.SCHEDULED, due) if due is not None and due > now else None


def _outside_send_window(policy: Policy, channel: str, category: str, state: UserState,
                         now: float) -> Defer | None:
    """A ``send_window`` rule (the TCPA's hours) that holds this send, until its
    next window opens in the recipient's zone. A digest collects first (the digest
    is decided again when it goes, and meets the window then); quiet hours after:
    a deferral released later is decided again too."""
    for rule in policy.send_windows_for(channel, category):
        until = next_allowed(rule.windows, zone(state.timezone), now)
        if until is not None:
            return Defer(channel, rule.reason or f"rule.{rule.name}", until)
    return None


def _origin(source: str) -> str:
    """``template:<id>`` → ``template``: reason codes name the level, not the template."""
    return source.split(":", 1)[0]


def request_context(request: Message) -> dict[str, str]:
    """What contextual preferences match on: the request's context and its
    priority as ``urgency``."""
    return {**request.context, "urgency": request.priority} if request.context else {"urgency": request.priority}


def decide(request: Message, state: UserState | None, available: frozenset[str],
           policy: Policy = DEFAULT_POLICY, *, now: float, digest: bool = True) -> list[Decision]:
    """One Decision per distinct channel the request asks for, in its order.
    ``now`` is required: a forgotten clock must not evaluate quiet hours in 1970."""
    context = request_context(request)
    channels: Sequence[str] = request.channels
    if len(channels) > 1:
        channels = unique(channels)
    return [decide_channel(request, state, ch, available, policy, now=now, digest=digest, context=context)
            for ch in channels]


def unique(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out
