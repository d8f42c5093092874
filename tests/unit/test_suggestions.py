"""Preference suggestions and engagement drift, the pure part (policy/suggestions.py)."""

from __future__ import annotations

from policy.prefs import Preference, Resolved
from policy.suggestions import ChannelUse, Window, drift, suggest
from policy.windows import Window as TimeWindow


def on(ch: str, cat: str) -> Resolved:
    return Resolved()


def test_a_never_opened_category_email_becomes_a_weekly_digest():
    got = suggest([ChannelUse("marketing", "email", 12, 0), ChannelUse("messages", "email", 12, 3)], on, 90)
    assert [(s.kind, s.category) for s in got] == [("digest_unread", "marketing")]
    assert got[0].set == [Preference(channel="email", category="marketing", frequency="weekly")]
    assert got[0].evidence == {"sent": 12, "opened": 0, "lookback_days": 90}


def test_too_little_evidence_kept_categories_and_what_is_off_or_digested_already_are_not_suggested():
    assert suggest([ChannelUse("marketing", "email", 9, 0)], on, 90) == []
    assert suggest([ChannelUse("security", "email", 50, 0)], on, 90) == []
    assert suggest([ChannelUse("marketing", "email", 50, 0)], lambda ch, cat: Resolved(frequency="daily"), 90) == []
    assert suggest([ChannelUse("marketing", "email", 50, 0)], lambda ch, cat: Resolved(enabled=False), 90) == []
    assert suggest([ChannelUse("promo", "email", 50, 0)], on, 90, may_change=lambda c: c == "marketing") == []


def test_a_fast_push_reader_is_offered_push_instead_of_texts():
    uses = [ChannelUse("messages", "push", 10, 6, 90.0), ChannelUse("messages", "sms", 8, 0),
            ChannelUse("job_alerts", "sms", 8, 0)]  # no push in job_alerts: nothing to move to
    got = suggest(uses, on, 90)
    assert [(s.kind, s.category) for s in got] == [("sms_to_push", "messages")]
    assert got[0].set == [Preference(channel="sms", category="messages", enabled=False)]
    assert got[0].evidence["push_median_open_s"] == 90.0
    slow = [ChannelUse("messages", "push", 10, 6, 3600.0), ChannelUse("messages", "sms", 8, 0)]
    assert suggest(slow, on, 90) == []
    assert suggest(uses, on, 90, push_reaches=lambda c: False) == []  # no live device, or push not always on
    never_opened_here = [ChannelUse("news", "push", 10, 6, 90.0), ChannelUse("messages", "push", 4, 0),
                         ChannelUse("messages", "sms", 8, 0)]
    assert suggest(never_opened_here, on, 90) == []  # push reaches them fast, but not in this category


def test_a_suggestion_changes_one_field_of_the_persons_own_row():
    quiet = [TimeWindow(start="22:00", end="07:00")]
    own = Preference(channel="email", category="marketing", quiet_hours=quiet)
    (s,) = suggest([ChannelUse("marketing", "email", 12, 0)], on, 90, rows=[own])
    assert s.set == [Preference(channel="email", category="marketing", frequency="weekly", quiet_hours=quiet)]
    # a temporary row: made permanent by the suggestion, the rest of it would outlast what the person set
    temporary = Preference(channel="email", category="marketing", quiet_hours=quiet, expires_at=2e9)
    assert suggest([ChannelUse("marketing", "email", 12, 0)], on, 90, rows=[temporary]) == []


def test_ids_are_stable_and_differ_by_proposal():
    a = suggest([ChannelUse("marketing", "email", 12, 0)], on, 90)[0].id
    assert a == suggest([ChannelUse("marketing", "email", 40, 0)], on, 90)[0].id
    assert a != suggest([ChannelUse("news", "email", 12, 0)], on, 90)[0].id


def test_drift_finds_a_real_drop_and_not_noise():
    before = [Window("news", "email", 2000, 400), Window("promo", "push", 1000, 100), Window("tiny", "sms", 10, 5)]
    after = [Window("news", "email", 2000, 300), Window("promo", "push", 1000, 105), Window("tiny", "sms", 10, 0)]
    got = drift(before, after)
    assert [(d.category, d.significant) for d in got] == [("news", True), ("promo", False)]  # tiny: too few
    assert got[0].difference == -0.05 and got[0].before["rate"] == 0.2 and got[0].interval[1] < 0
