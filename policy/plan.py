"""What a UserShard does with a batch, planned without doing it.

``plan_round`` takes a batch of (notification id, user, request), the users'
states, what is recorded already and ``now``, and returns a ``Plan``: the
delivery tasks per channel, the items to hold (deferred or digested), and the
outcomes settled here (suppressed, rejected). The shard carries the plan out —
sends through the ChannelShards, holds through ``stores.schedules``, records
through the Recorder — and comes back for what depends on the result:

- ``fallback_checks``: a request with ``fallback_after_s`` whose channel was
  sent gets a check held for later;
- ``start_fallbacks`` / ``next_fallbacks``: a request none of whose channels was
  sent or held tries its ``fallback`` channels, one at a time, in order;
- ``retry_later``: a delivery that failed for a reason that passes (a provider
  down) is held and decided again later, until ``engine.retry_failed_for_s``.

Pure: no I/O, no clock (``now`` is an argument), no randomness.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping, Set
from dataclasses import dataclass, field

import msgspec

from policy import choice, devices, schedule, wire
from policy.decide import decide, request_context, zone
from policy.email import with_footer
from policy.fatigue import PERIOD, Ledger, Over, Tally
from policy.held import Held, HeldDeferred, HeldDigest, HeldFallback
from policy.links import LinkRules, track
from policy.rules import Policy
from policy.templating import Compiled, pick, render_error
from policy.timing import EMPTY, REASON as OPTIMIZED, best_time
from policy.types import (
    Content,
    Defer,
    DeliveryTask,
    Digest,
    DigestKey,
    Message,
    NotificationRequest,
    Outcome,
    Send,
    Status,
    Suppress,
    TemplateRef,
    UserState,
)
from policy.unsubscribe import UnsubscribeRules
from policy.windows import Window

DEVICE_CHANNELS = frozenset({"push", "web"})  # a user may have several devices there (policy/devices.py)

# Compiled message templates by (template id, version) → channel → locale.
Templates = Mapping[tuple[str, int | None], Mapping[str, Mapping[str, Compiled]]]


class Item(msgspec.Struct, frozen=True, array_like=True):
    """One notification for one user: a request, or a broadcast's recipient."""

    notification_id: str
    user_id: str
    request: Message


@dataclass(frozen=True)
class Context:
    """What every round of one shard plans with. ``digest=False``: nothing is
    collected into a digest (a released or a digest notification)."""

    available: frozenset[str]
    policy: Policy
    templates: Templates = field(default_factory=dict)
    links: LinkRules | None = None
    digest: bool = True
    parent_id: str | None = None  # the broadcast the batch belongs to
    unsubscribe: UnsubscribeRules | None = None  # None: no one-click unsubscribe URL in email
    # CAN-SPAM: (postal address, marketing categories); their email gets the footer
    footer: tuple[str, frozenset[str]] | None = None
    # the shard's fatigue counts (policy/fatigue.py), when the policy has caps; read here, never written
    ledger: Ledger | None = None
    # people's engagement by local hour (policy/timing.py), for requests with deliver "optimal":
    # user → (when read, profile); someone not in it is decided on the prior alone
    profiles: Mapping[str, tuple] | None = None  # (when read, Profile, zone name)
    # people's sends and engagement per channel (policy/choice.py), for "channel_strategy": "best":
    # user → (when read, Stats); and the population's, summed over the people held
    channel_stats: Mapping[str, tuple[float, choice.Stats]] | None = None
    population: choice.Stats | None = None
    # best-of notifications with a channel sent or held already (recorded, or sent and not yet
    # recorded): the choice was made, none of their other channels is chosen now
    chosen: frozenset[str] = frozenset()


@dataclass
class Plan:
    sends: dict[str, list[DeliveryTask]] = field(default_factory=dict)  # channel → tasks
    holds: list[Held] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)  # settled without a provider
    parent_id: str | None = None  # the broadcast: the delivered outcomes name it too
    # sends a fatigue cap counts: (notification, user, channel, category, priority); the shard
    # counts them before it sends and gives back those that did not go (policy/fatigue.py)
    capped: list[tuple[str, str, str, str, str]] = field(default_factory=list)

    def kept(self) -> set[str]:
        """Notifications with a channel held: they need no fallback now."""
        return {h.notification_id for h in self.holds}


def plan_round(items: Collection[Item], states: Mapping[str, UserState], done: Set[tuple[str, str]],
               ctx: Context, *, now: float) -> Plan:
    """Decide every (item, channel) not in ``done`` (recorded already) and say
    what to do with it. A send over a fatigue cap (``ctx.ledger``) is held until
    the cap's window ends; the round's own sends count toward the caps too."""
    plan = Plan(parent_id=ctx.parent_id)
    tally: Tally = {}
    for it in items:
        state = states.get(it.user_id)
        decisions = decide(it.request, state, ctx.available, ctx.policy, now=now, digest=ctx.digest)
        prepared: dict[str, Plan] = {}  # the candidates planned while choosing: not rendered again
        others = _not_chosen(it, decisions, state, ctx, done, tally, now, prepared) \
            if it.request.channel_strategy == "best" else None
        for d in decisions:
            if (it.notification_id, d.channel) in done:
                continue
            if others is not None and d.channel in others:
                plan.outcomes.append(settled(it, d.channel, "suppressed", choice.REASON, now, ctx.parent_id,
                                             others[d.channel]))
                continue
            match d:
                case Send(channel=channel):
                    scratch = prepared.get(channel)
                    if scratch is not None and not scratch.sends:  # it could not go (rejected): never held either
                        plan.outcomes.extend(scratch.outcomes)
                        continue
                    if it.request.deliver == "optimal" and state is not None and _later(plan, it, channel, state,
                                                                                      ctx, now):
                        continue
                    capped = ctx.ledger is not None and state is not None
                    if capped and state is not None and _over_cap(plan, it, channel, state, ctx, tally, now):
                        continue
                    planned = len(plan.sends.get(channel, ()))
                    if scratch is None:
                        _send(plan, it, channel, state, ctx, now)
                    else:  # what _send would add, planned already
                        for ch, tasks in scratch.sends.items():
                            plan.sends.setdefault(ch, []).extend(tasks)
                        plan.outcomes.extend(scratch.outcomes)
                    if capped and len(plan.sends.get(channel, ())) > planned:  # a task, not a settled outcome
                        _count(plan, it, channel, state, ctx, tally, now)
                case Defer() | Digest():
                    plan.holds.append(held(it, d, now, ctx.parent_id))
                case Suppress(channel=channel, reason=reason):
                    plan.outcomes.append(settled(it, channel, "suppressed", reason, now, ctx.parent_id))
    return plan


def _not_chosen(it: Item, decisions: list, state: UserState | None, ctx: Context, done: Set[tuple[str, str]],
                tally: Tally, now: float, prepared: dict[str, Plan] | None = None) -> dict[str, str] | None:
    """The channels of a ``channel_strategy: best`` request not chosen (policy/choice.py),
    each with the outcome's detail. The candidates are the channels not recorded yet
    that may go now: decided ``Send``, with content to send (rendered as ``_send``
    would) and under the fatigue caps; when there are none, those that would be held
    (quiet hours, a digest, a cap). One is chosen; the other candidates are not, and
    a channel that could not have gone keeps its own outcome (rejected, ...).
    A notification the choice was made for before (``ctx.chosen``: a channel of it
    sent or held) chooses nothing new: its other channels are not chosen.
    ``prepared``: filled with each candidate's scratch plan, for the caller to use."""
    if len(decisions) < 2:
        return None
    nid = it.notification_id
    open_ = [d for d in decisions if (nid, d.channel) not in done and not isinstance(d, Suppress)]
    if nid in ctx.chosen:
        return {d.channel: "chosen before" for d in open_}
    now_: list[str] = []
    later = [d.channel for d in open_ if isinstance(d, (Defer, Digest))]
    for d in open_:
        if isinstance(d, Send):
            scratch = Plan()
            _send(scratch, it, d.channel, state, ctx, now)
            if prepared is not None:
                prepared[d.channel] = scratch
            if scratch.sends:  # not rejected (no content, a template error, expired, no device on)
                (later if _over(it, d.channel, state, ctx, tally, now) is not None else now_).append(d.channel)
    pool = now_ or later
    if not pool:
        return None  # nothing would go: each channel keeps its own outcome
    scores: dict[str, float] = {}
    chosen = pool[0]
    if len(pool) > 1:
        held = ctx.channel_stats.get(it.user_id) if ctx.channel_stats is not None else None
        chosen, scores = choice.choose(pool, held[1] if held is not None else {}, ctx.population or {},
                                       ctx.policy.cfg.choice, nid)
    why = choice.detail(chosen, scores) if scores else f"chose {chosen}, the only one that could go"
    # the candidates not chosen; a channel that could not have gone keeps its own outcome (rejected, ...)
    return {ch: why for ch in (*now_, *later) if ch != chosen}


def _over(it: Item, channel: str, state: UserState | None, ctx: Context, tally: Tally, now: float) -> Over | None:
    """The fatigue cap a send on ``channel`` now would exceed (nothing counted), or None."""
    if ctx.ledger is None or state is None:
        return None
    req = it.request
    return ctx.ledger.fatigue.over(ctx.ledger.get(it.user_id), tally, it.user_id, channel, req.category, req.priority,
                                   zone(state.timezone), now)


def _count(plan: Plan, it: Item, channel: str, state: UserState | None, ctx: Context, tally: Tally,
           now: float) -> None:
    """A send planned: the round's next decisions for the person see it (``tally``), and
    the shard counts it (``plan.capped``)."""
    assert ctx.ledger is not None and state is not None
    req = it.request
    if not ctx.ledger.fatigue.capped((channel,), req.category, req.priority):
        return
    ctx.ledger.fatigue.plan(tally, it.user_id, channel, req.category, req.priority, zone(state.timezone), now)
    plan.capped.append((it.notification_id, it.user_id, channel, req.category, req.priority))


TIMING_MARGIN_S = 600.0  # a send held for its hour goes at least this long before its time to live ends


def _later(plan: Plan, it: Item, channel: str, state: UserState, ctx: Context, now: float) -> bool:
    """Hold a ``deliver: optimal`` send until the person's best hour (True), unless this
    is it. Held as a request to send now: released, it is decided again like any other
    and never optimized again. Not in a dry run (``ctx.profiles`` None: there are none)."""
    req = it.request
    if req.deliver_by is None or req.deliver_by <= now or ctx.profiles is None:
        return False
    latest = req.deliver_by
    ttl_s, _ = expiry(req, channel, ctx.policy)
    if ttl_s is not None:
        latest = min(latest, (req.accepted_at if req.accepted_at is not None else now) + ttl_s - TIMING_MARGIN_S)
    policy = ctx.policy
    pref = policy.resolve(state.prefs, state.templates, channel, req.category, req.content_type,
                          request_context(req), now)
    quiet: tuple[Window, ...] = ()
    allowed = [rule.windows for rule in policy.send_windows_for(channel, req.category)]
    if not policy.bypasses("bypass_quiet_hours", req.priority, req.category):
        quiet = tuple(pref.quiet_hours)
        allowed.append(tuple(pref.time_windows))
    known = ctx.profiles.get(it.user_id)
    at = best_time(known[1] if known is not None else EMPTY, policy.cfg.timing, zone(state.timezone), now, latest,
                   quiet, allowed)
    if at <= now:
        return False
    now_it = Item(it.notification_id, it.user_id, msgspec.structs.replace(req, deliver="now", deliver_by=None))
    plan.holds.append(held(now_it, Defer(channel, OPTIMIZED, at), now, ctx.parent_id))
    return True


def _over_cap(plan: Plan, it: Item, channel: str, state: UserState, ctx: Context, tally: Tally,
              now: float) -> bool:
    """Hold the send if it would exceed a fatigue cap (True)."""
    over = _over(it, channel, state, ctx, tally, now)
    if over is None:
        return False
    req = it.request
    if over.cap.over == "digest" and ctx.digest:  # a released one or a digest is held instead
        key = DigestKey(it.user_id, channel, req.category, PERIOD[over.cap.window], int(over.until))
        plan.holds.append(msgspec.structs.replace(held(it, Digest(channel, key), now, ctx.parent_id),
                                                  why=over.reason))
    else:
        plan.holds.append(held(it, Defer(channel, over.reason, over.until), now, ctx.parent_id))
    return True


def _send(plan: Plan, it: Item, channel: str, state: UserState | None, ctx: Context, now: float) -> None:
    ttl_s, collapse_key = expiry(it.request, channel, ctx.policy)
    req, accepted = it.request, it.request.accepted_at
    # the life starts at acceptance (a producer's future accepted_at does not lengthen
    # it), or when a scheduled send became due
    born = min(accepted, now) if accepted is not None else now
    if ttl_s is not None and (req.send_at is not None or req.send_at_local is not None):
        born = schedule.start_of_life(req.send_at, req.send_at_local, zone(state.timezone if state else "UTC"), born)
    expires_at = born + ttl_s if ttl_s is not None else None
    if expires_at is not None and now >= expires_at:  # e.g. held past its life by quiet hours
        plan.outcomes.append(settled(it, channel, "suppressed", "ttl.expired", now, ctx.parent_id))
        return
    content, why, detail = content_for(it.request, channel, state, ctx.templates)
    if content is None:
        plan.outcomes.append(settled(it, channel, "rejected", why, now, ctx.parent_id, detail))
        return
    task = task_for(it, channel, state, content)
    if state is not None and state.devices and channel in DEVICE_CHANNELS:
        found, owned = devices.targets(state, channel, it.request, ctx.policy, request_context(it.request), now)
        if found:
            task.targets, task.address = found, found[0].token
        elif owned:  # every live device turned off by its context: not the profile address either
            plan.outcomes.append(settled(it, channel, "suppressed", "pref.device_off", now, ctx.parent_id))
            return
        # no live device at all: the profile's one address, as before devices (decide found one)
    task.expires_at, task.collapse_key = expires_at, collapse_key
    if channel in DEVICE_CHANNELS:
        task.push = it.request.push
    if ctx.links is not None and content.html and channel in ctx.links.channels:
        task = track(ctx.links, task)
    if channel == "email":  # after the rewrite for click tracking: the footer's links stay as they are
        _email_links(task, it, ctx, now)
    plan.sends.setdefault(channel, []).append(task)


def _email_links(task: DeliveryTask, it: Item, ctx: Context, now: float) -> None:
    """A non-transactional email's one-click unsubscribe URL (List-Unsubscribe)
    and its footer: the postal address for the marketing categories (CAN-SPAM),
    the unsubscribe link, the person's preference center link. No link that could
    only ever answer "cannot": a category outside the policy, or a mandatory one."""
    category = it.request.category
    postal = ctx.footer[0] if ctx.footer is not None and category in ctx.footer[1] else None
    center = None
    if ctx.unsubscribe is not None and ctx.policy.can_opt_out(category):
        task.unsubscribe_url = ctx.unsubscribe.url(it.user_id, category, "email")
        center = ctx.unsubscribe.center_url(it.user_id, now)
    task.content = with_footer(task.content, postal, task.unsubscribe_url, center)  # as it was when none is given


def expiry(req: Message, channel: str, policy: Policy) -> tuple[int | None, str | None]:
    """``(ttl_s, collapse_key)`` for ``req`` on ``channel``: the request's own,
    else its ``expiry`` rule's (``policy.rules``), each on its own."""
    ttl_s, collapse_key = req.ttl_s, req.collapse_key
    if ttl_s is None or collapse_key is None:
        rule = policy.expiry(channel, req.category)
        if rule is not None:
            ttl_s = ttl_s if ttl_s is not None else rule.ttl_s
            collapse_key = collapse_key if collapse_key is not None else rule.collapse_key
    return ttl_s, collapse_key


def content_for(req: Message, channel: str, state: UserState | None,
                templates: Templates) -> tuple[Content | None, str, str | None]:
    """The channel's content: given in the request, else rendered from its
    template in the user's locale; else None with the reason and detail
    (``content.missing``, ``template.missing``, ``template.error``)."""
    content = req.content_for(channel)
    if content is not None:
        return content, "ok", None
    if req.template is None:
        return None, "content.missing", None
    return render(req.template, channel, state.locale if state is not None else "en", templates)


def render(ref: TemplateRef, channel: str, locale: str,
           templates: Templates) -> tuple[Content | None, str, str | None]:
    compiled = pick(templates.get((ref.id, ref.version), {}).get(channel, {}), locale)
    if compiled is None:
        return None, "template.missing", f"no template {ref.id!r} for {channel} in {locale} or a fallback"
    try:
        return compiled.render(ref.data), "ok", None
    except Exception as e:  # noqa: BLE001 - a template's error is the request's, reported on its row
        return None, "template.error", render_error(e)


def task_for(it: Item, channel: str, state: UserState | None, content: Content) -> DeliveryTask:
    r = it.request
    address = state.addresses.get(channel, "") if state is not None else ""
    locale = state.locale if state is not None else "en"
    return DeliveryTask(it.notification_id, it.user_id, channel, r.category, address, content, r.priority,
                        r.accepted_at or 0.0, r.metadata, locale)


def settled(it: Item, channel: str, status: Status, reason: str, now: float, parent_id: str | None = None,
            detail: str | None = None) -> Outcome:
    r = it.request
    return Outcome(it.notification_id, it.user_id, channel, r.category, status, reason, r.accepted_at or now, now,
                   priority=r.priority, parent_id=parent_id, detail=detail)


_REQUEST_FIELDS = [f.name for f in msgspec.structs.fields(NotificationRequest) if f.name != "user_id"]


def as_notification(req: Message, user_id: str) -> NotificationRequest:
    """The single-user form of a request (a broadcast recipient's, too), as held rows store it."""
    if isinstance(req, NotificationRequest):
        return req
    return NotificationRequest(user_id=user_id, **{name: getattr(req, name) for name in _REQUEST_FIELDS
                                                   if hasattr(req, name)})


def held(it: Item, d: Defer | Digest, now: float, parent_id: str | None = None) -> Held:
    r = it.request
    accepted = r.accepted_at if r.accepted_at is not None else now
    if r.accepted_at is None:  # stored with it: a release decides from the same moment
        r = msgspec.structs.replace(r, accepted_at=accepted)
    request = wire.encode(as_notification(r, it.user_id))
    match d:
        case Digest(channel=channel, key=key):
            return HeldDigest(notification_id=it.notification_id, user_id=it.user_id, category=r.category,
                              priority=r.priority, request=request, accepted_at=accepted, parent_id=parent_id,
                              channel=channel, key=key, due_at=d.until)
        case Defer(channel=channel, reason=reason, until=until):
            return HeldDeferred(notification_id=it.notification_id, user_id=it.user_id, category=r.category,
                                priority=r.priority, request=request, accepted_at=accepted, parent_id=parent_id,
                                channel=channel, reason=reason, due_at=until)


def fallback_checks(items: Collection[Item], sent: Set[str], done: Set[tuple[str, str]], *,
                    now: float) -> list[HeldFallback]:
    """For each request with ``fallback_after_s`` that was ``sent`` on a channel
    in this call (not on a redelivery of an earlier one: ``done``), a check due at
    ``now + fallback_after_s``."""
    recorded = {nid for nid, _ in done}
    return [HeldFallback(notification_id=it.notification_id, user_id=it.user_id, category=it.request.category,
                         priority=it.request.priority, due_at=now + (it.request.fallback_after_s or 0.0),
                         request=wire.encode(as_notification(it.request, it.user_id)),
                         accepted_at=it.request.accepted_at or now)
            for it in items
            if it.request.fallback and it.request.fallback_after_s and it.notification_id in sent
            and it.notification_id not in recorded]


# Failures that pass: every provider down, refusing for now or with its breaker
# open, a rate or daily limit, the user's own endpoint failing for now. The others
# (a refused message or address, a configuration or authentication error, a bug)
# would fail the same way later.
# (A daily limit is not among them: it passes at midnight, past any sensible retry.)
RETRY_REASONS = frozenset({"circuit_open", "rate_limited", "network_error", "provider_error",
                           "destination_error", "destination_circuit_open"})
RETRY_FIRST_S = 5.0
RETRY_MOST_S = 300.0


def retry_later(items: Collection[Item], outcomes: list[Outcome], retry_for_s: float, *,
                now: float) -> tuple[list[HeldDeferred], list[Outcome]]:
    """The failed deliveries to try again later, held (reason ``retry.<reason>``),
    and the outcomes left to record. A delivery is tried again while it is
    younger than ``retry_for_s`` since its notification was accepted, after a
    wait as long as its age (so the waits double: 5 s, 10 s, 20 s, ... up to 5
    min), spread by ±20 % by its id so a provider coming back is not met by
    every retry at once. Requests with fallback channels are not held: their
    fallbacks take over now."""
    if retry_for_s <= 0:
        return [], outcomes
    by_id = {it.notification_id: it for it in items}
    held_, kept = [], []
    for o in outcomes:
        it = by_id.get(o.notification_id)
        if o.status != "failed" or o.reason not in RETRY_REASONS or it is None or it.request.fallback:
            kept.append(o)
            continue
        r = it.request
        # the clock starts at acceptance; a producer's missing or future accepted_at
        # starts it now, and the held request carries that start, or it would never end
        accepted = r.accepted_at if r.accepted_at and r.accepted_at <= now else now
        left = accepted + retry_for_s - now
        if left < RETRY_FIRST_S:  # no time for another try
            kept.append(o)
            continue
        spread = 0.8 + 0.4 * zlib.crc32(o.notification_id.encode()) / 0xFFFFFFFF
        wait = min(max(now - accepted, RETRY_FIRST_S), RETRY_MOST_S) * spread
        request = as_notification(msgspec.structs.replace(r, accepted_at=accepted), it.user_id)
        held_.append(HeldDeferred(notification_id=o.notification_id, user_id=o.user_id, category=r.category,
                                  priority=r.priority, request=wire.encode(request),
                                  accepted_at=accepted, parent_id=o.parent_id, channel=o.channel,
                                  reason=f"retry.{o.reason}", due_at=now + min(wait, left)))
    return held_, kept


class Pending(msgspec.Struct, frozen=True):
    """A request still trying its fallback channels; ``at`` is the next to try."""

    item: Item
    at: int = 0


def start_fallbacks(items: Collection[Item], handled: Set[str]) -> list[Pending]:
    """Requests with fallback channels none of whose channels was sent or held
    (``handled``: sent, held, or recorded before)."""
    return [Pending(it) for it in items if it.request.fallback and it.notification_id not in handled]


def next_fallbacks(pending: Collection[Pending]) -> tuple[list[Item], list[Pending]]:
    """The next fallback channel of each pending request, as an item to plan
    (its request narrowed to that channel), and where each goes on if that one
    is not sent either. Fallback channels the request asked for already are
    skipped."""
    attempt, rest = [], []
    for p in pending:
        req, at = p.item.request, p.at
        while at < len(req.fallback) and req.fallback[at] in req.channels:
            at += 1
        if at < len(req.fallback):
            attempt.append(Item(p.item.notification_id, p.item.user_id,
                                msgspec.structs.replace(req, channels=[req.fallback[at]])))
            rest.append(Pending(p.item, at + 1))
    return attempt, rest


__all__ = ["RETRY_REASONS", "Context", "Item", "Pending", "Plan", "Templates", "as_notification", "content_for", "expiry",
           "fallback_checks", "held", "next_fallbacks", "plan_round", "render", "retry_later", "settled",
           "start_fallbacks", "task_for"]
