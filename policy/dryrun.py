"""A dry run's answer: every (recipient, channel) decided as a send would decide
it (``policy.plan``), counted by channel, action and reason, with a few users
for each. Nothing is sent, held or recorded.

Each send is taken to succeed: the fallback channels a send tries at once (when
no channel of a request would be sent or held) are decided too; those tried only
after a delivery's answer (``fallback_unless``) are not.

The actions are the decision's, not a delivery's status: ``send`` (reason
``ok``), ``defer`` (quiet hours, a time window), ``digest``
(``digest.<frequency>``), ``suppress`` (the reason code), ``reject`` (the content
could not be made for that channel)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import msgspec

from policy.api import DecisionAction
from policy.held import HeldDeferred, HeldDigest
from policy.plan import Context, Item, Plan, next_fallbacks, plan_round, start_fallbacks
from policy.types import UserState

SAMPLE = 5  # users shown per (channel, action, reason)


class Count(msgspec.Struct, array_like=True):
    """One (channel, action, reason): how many, and up to ``SAMPLE`` of their users."""

    channel: str
    action: DecisionAction
    reason: str
    count: int = 0
    sample: list[str] = []


class Tally(msgspec.Struct):
    """What a UserShard answers for its part; ``merge`` adds the shards' up."""

    recipients: int = 0
    counts: dict[str, Count] = {}  # "channel\0action\0reason" -> its count

    def add(self, channel: str, action: DecisionAction, reason: str, user_id: str) -> None:
        key = f"{channel}\0{action}\0{reason}"
        c = self.counts.get(key)
        if c is None:
            c = self.counts[key] = Count(channel, action, reason)
        c.count += 1
        if len(c.sample) < SAMPLE and user_id not in c.sample:
            c.sample.append(user_id)

    def add_plan(self, plan: Plan, recipients: int) -> None:
        """A round's plan for ``recipients`` users (those without a decision
        count too: a user unknown to this shard is still one asked about)."""
        self.recipients += recipients
        for channel, tasks in plan.sends.items():
            for t in tasks:
                self.add(channel, "send", "ok", t.user_id)
        for h in plan.holds:
            if isinstance(h, HeldDeferred):
                self.add(h.channel, "defer", h.reason, h.user_id)
            elif isinstance(h, HeldDigest):
                self.add(h.channel, "digest", h.reason, h.user_id)
        for o in plan.outcomes:
            self.add(o.channel, "reject" if o.status == "rejected" else "suppress", o.reason, o.user_id)

    def merge(self, other: Tally) -> Tally:
        self.recipients += other.recipients
        for key, c in other.counts.items():
            mine = self.counts.get(key)
            if mine is None:
                self.counts[key] = Count(c.channel, c.action, c.reason, c.count, list(c.sample))
                continue
            mine.count += c.count
            mine.sample.extend(u for u in c.sample if u not in mine.sample)
            del mine.sample[SAMPLE:]
        return self

    def rows(self) -> list[Count]:
        """The counts in a stable order: by channel, then action, then most first."""
        order = {a: i for i, a in enumerate(("send", "defer", "digest", "suppress", "reject"))}
        return sorted(self.counts.values(), key=lambda c: (c.channel, order.get(c.action, 9), -c.count, c.reason))


def decide(items: Collection[Item], states: Mapping[str, UserState], ctx: Context, tally: Tally, *,
           now: float) -> None:
    """The rounds a send plans for ``items`` (``UserShard._decide_and_send``),
    each send taken to succeed, added to ``tally``: the first round, then the
    fallback channels of the requests none of whose channels was sent or held,
    one round per channel, as long as one is left."""
    plan = plan_round(items, states, set(), ctx, now=now)
    tally.add_plan(plan, len(items))
    pending = start_fallbacks(items, _handled(plan))
    while pending:
        attempt, pending = next_fallbacks(pending)
        if not attempt:
            break
        more = plan_round(attempt, states, set(), ctx, now=now)
        tally.add_plan(more, 0)  # the same recipients, on another channel
        handled = _handled(more)
        pending = [p for p in pending if p.item.notification_id not in handled]


def _handled(plan: Plan) -> set[str]:
    """Notifications with a channel sent (taken to succeed) or held."""
    return plan.kept() | {t.notification_id for tasks in plan.sends.values() for t in tasks}
