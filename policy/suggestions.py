"""Preference suggestions from a person's engagement, and engagement drift.

``suggest`` looks at one person's sends and opens per (category, channel) over the
lookback (``ChannelUse``, read from the tracking rows and engagement events) and
their effective preferences, and proposes changes, each with its evidence and the
preference rows that would make it (applied, on acceptance, through the audited
preference path like any PATCH):

- ``digest_unread``: a category whose email they never open (at least
  ``MIN_UNREAD`` sent, none opened or clicked) and get at once: a weekly digest.
- ``sms_to_push``: a category they get by SMS and also by push (opened there at
  least once, push on whatever the urgency, a live device), where they open push
  within ``FAST_OPEN_S`` (median, at least ``MIN_OPENS`` opens): SMS off for it.

Categories whose messages must arrive (``KEEP``: security, account, transactional)
are never suggested away. ``drift`` compares the population's open rate per
(category, channel) in two consecutive windows with a two-proportion z-test,
Bonferroni-corrected for the number of pairs.

Pure: the caller passes the counts and a resolver of effective preferences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from hashlib import blake2b
from statistics import NormalDist

import msgspec
from msgspec import Struct

from policy.experiments import two_proportions
from policy.prefs import Preference, Resolved

MIN_UNREAD = 10  # emails of a category sent, none opened, before a digest is suggested
MIN_OPENS = 3  # push opens before their speed counts
FAST_OPEN_S = 600.0  # a median push open this fast: push reaches them
KEEP = frozenset({"security", "account", "transactional"})


class ChannelUse(Struct, frozen=True, array_like=True):
    """A person's sends of one category on one channel over the lookback, how many were
    opened or clicked, and the median time from send to open (None: none opened)."""

    category: str
    channel: str
    sent: int
    opened: int
    median_open_s: float | None = None


class Suggestion(Struct, kw_only=True):
    """``id``: stable for the same proposal, so it can be accepted by id; ``set``: the
    preference rows a PATCH would set; ``evidence``: the counts behind it."""

    id: str
    kind: str
    category: str
    channel: str
    summary: str
    set: list[Preference]
    evidence: dict[str, float | int | None]


def _id(kind: str, category: str, channel: str) -> str:
    return blake2b(f"{kind}\x00{category}\x00{channel}".encode(), digest_size=6).hexdigest()


def merged(rows: Sequence[Preference], new: Preference) -> Preference | None:
    """``new`` over the person's row with the same key, if they have one (``rows``: their
    live rows, none expired): a PATCH replaces a row by its key, and the suggestion
    changes one field, not the others. None when that row is temporary (it has an
    expiry): made permanent, the rest of it would outlast what the person set."""
    for r in rows:
        if (r.channel, r.category, r.content_type, r.context) == (new.channel, new.category, "*", {}):
            if r.expires_at is not None:
                return None
            changes = {f: getattr(new, f) for f in ("enabled", "frequency") if getattr(new, f) is not None}
            return msgspec.structs.replace(r, **changes)
    return new


def suggest(uses: Sequence[ChannelUse], resolve: Callable[[str, str], Resolved], lookback_days: int,
            rows: Sequence[Preference] = (), may_change: Callable[[str], bool] = lambda category: True,
            push_reaches: Callable[[str], bool] = lambda category: True) -> list[Suggestion]:
    """What to propose to a person (``resolve(channel, category)``: their effective
    preference now; ``rows``: their own rows; ``may_change(category)``: whether they
    may turn it off themselves, ``Policy.can_opt_out``; ``push_reaches(category)``:
    whether push reaches them for it whatever the urgency, on a live device), most
    evidence first. The caller drops those its validation would refuse."""
    out: list[Suggestion] = []
    by = {(u.category, u.channel): u for u in uses}
    push_opens = [u for u in uses if u.channel == "push" and u.opened and u.median_open_s is not None]
    n_push = sum(u.opened for u in push_opens)
    fast_push = None
    if n_push >= MIN_OPENS:  # the median over categories, weighted by opens: a person's habit, not a category's
        weighted = sorted((u.median_open_s, u.opened) for u in push_opens)
        half, seen = n_push / 2, 0
        for value, n in weighted:
            seen += n
            if seen >= half:
                fast_push = value
                break
    for u in uses:
        if u.category in KEEP or not may_change(u.category):
            continue
        pref = resolve(u.channel, u.category)
        if not pref.enabled:
            continue
        digest = merged(rows, Preference(channel="email", category=u.category, frequency="weekly"))
        if (u.channel == "email" and u.sent >= MIN_UNREAD and u.opened == 0 and pref.frequency == "immediate"
                and digest is not None):
            out.append(Suggestion(
                id=_id("digest_unread", u.category, "email"), kind="digest_unread", category=u.category,
                channel="email", summary=f"You have not opened any of the last {u.sent} {u.category} emails: "
                                         "get them as one weekly digest instead",
                set=[digest],
                evidence={"sent": u.sent, "opened": 0, "lookback_days": lookback_days}))
        push = by.get((u.category, "push"))
        # push must already reach them for the category: sent there, opened there at least once, on
        # whatever the urgency and a live device to go to
        texts_off = merged(rows, Preference(channel="sms", category=u.category, enabled=False))
        if (u.channel == "sms" and u.sent >= MIN_OPENS and fast_push is not None and fast_push <= FAST_OPEN_S
                and push is not None and push.opened and push_reaches(u.category) and texts_off is not None):
            out.append(Suggestion(
                id=_id("sms_to_push", u.category, "sms"), kind="sms_to_push", category=u.category, channel="sms",
                summary=f"You open push notifications within {round(fast_push / 60) or 1} min: "
                        f"stop {u.category} texts and get them by push",
                set=[texts_off],
                evidence={"sms_sent": u.sent, "sms_opened": u.opened, "push_opens": n_push,
                          "push_median_open_s": round(fast_push, 1), "push_sent_in_category": push.sent,
                          "lookback_days": lookback_days}))
    out.sort(key=lambda s: -int(s.evidence.get("sent") or s.evidence.get("sms_sent") or 0))
    return out


class Window(Struct, frozen=True, array_like=True):
    """The population's sends of a (category, channel) in one window, and how many were opened."""

    category: str
    channel: str
    sent: int
    opened: int


class Drift(Struct, kw_only=True):
    category: str
    channel: str
    before: dict[str, float | int | None]  # sent, opened, rate
    after: dict[str, float | int | None]
    difference: float  # after − before, in rate
    interval: tuple[float, float]
    p_value: float
    significant: bool  # below 0.05 / the number of pairs compared


def drift(before: Sequence[Window], after: Sequence[Window], min_sent: int = 30) -> list[Drift]:
    """Each (category, channel) with at least ``min_sent`` sends in both windows, the
    change of its open rate, the largest significant changes first."""
    prior = {(w.category, w.channel): w for w in before}
    pairs = [(prior[(w.category, w.channel)], w) for w in after
             if (w.category, w.channel) in prior and w.sent >= min_sent and prior[(w.category, w.channel)].sent >= min_sent]
    alpha = 0.05 / max(1, len(pairs))
    z = NormalDist().inv_cdf(1 - alpha / 2)  # the interval agrees with the corrected test
    out = []
    for b, a in pairs:
        diff, interval, p = two_proportions(a.opened, a.sent, b.opened, b.sent, z)
        out.append(Drift(category=a.category, channel=a.channel,
                         before={"sent": b.sent, "opened": b.opened, "rate": round(b.opened / b.sent, 4)},
                         after={"sent": a.sent, "opened": a.opened, "rate": round(a.opened / a.sent, 4)},
                         difference=round(diff, 4), interval=(round(interval[0], 4), round(interval[1], 4)),
                         p_value=p, significant=p < alpha))
    out.sort(key=lambda d: (not d.significant, -abs(d.difference)))
    return out


__all__ = ["FAST_OPEN_S", "KEEP", "MIN_OPENS", "MIN_UNREAD", "ChannelUse", "Drift", "Suggestion", "Window", "drift",
           "merged", "suggest"]
