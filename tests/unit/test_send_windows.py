"""The TCPA rule as the default configuration ships it (a ``send_window`` rule):
marketing SMS only 08:00-21:00 in the recipient's zone, held until 08:00 with
``tcpa.window`` outside it, DST included; other categories and channels, and no
priority, change that."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from engine import settings as engine_settings
from policy.decide import decide
from policy.rules import Policy, Rule
from policy.types import Content, NotificationRequest, UserState
from policy.windows import Window

POLICY = Policy(engine_settings.load("development", env={}).preferences)
AVAILABLE = frozenset({"email", "sms", "voice"})


def at(local: str, zone: str) -> float:
    return datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(zone)).timestamp()


def person(zone: str) -> UserState:
    return UserState(user_id="u1", addresses={"email": "a@b.c", "sms": "+15555550100"}, timezone=zone,
                     consent=frozenset({"sms", "sms:marketing", "voice"}))  # marketing texts: confirmed apart


def one(category: str, channel: str, zone: str, now: float, priority: str = "normal"):
    request = NotificationRequest(user_id="u1", category=category, channels=[channel], priority=priority,
                                  content=Content(text="x"))
    return decide(request, person(zone), AVAILABLE, POLICY, now=now)[0]


def test_marketing_sms_at_night_is_held_until_eight_in_the_recipients_zone():
    d = one("marketing", "sms", "America/Chicago", at("2026-12-03T22:30", "America/Chicago"))
    assert (d.action, d.reason) == ("defer", "tcpa.window")
    assert d.until == at("2026-12-04T08:00", "America/Chicago")
    early = one("marketing", "sms", "Asia/Tokyo", at("2026-12-03T07:59", "Asia/Tokyo"), priority="critical")
    assert (early.reason, early.until) == ("tcpa.window", at("2026-12-03T08:00", "Asia/Tokyo"))  # no bypass


def test_inside_the_window_other_categories_and_other_channels_send():
    day = at("2026-12-03T20:59", "America/New_York")
    night = at("2026-12-03T23:00", "America/New_York")
    assert one("marketing", "sms", "America/New_York", day).action == "send"
    assert one("job_alerts", "sms", "America/New_York", night).action == "send"
    assert one("marketing", "email", "America/New_York", night).action == "send"


def test_the_window_follows_daylight_saving_time():
    # the night before the spring change in New York: 08:00 EDT is 12:00 UTC, not 13:00
    d = one("marketing", "sms", "America/New_York", at("2027-03-13T23:00", "America/New_York"))
    assert datetime.fromtimestamp(d.until, ZoneInfo("America/New_York")).strftime("%H:%M") == "08:00"
    assert d.until == datetime(2027, 3, 14, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()


@settings(max_examples=200)
@given(st.floats(min_value=1.7e9, max_value=1.9e9), st.sampled_from(["UTC", "Europe/Berlin", "America/Los_Angeles",
                                                                        "Asia/Kolkata", "Australia/Lord_Howe"]))
def test_whatever_the_time_a_marketing_sms_is_sent_or_held_to_a_time_inside_the_window(now, zone):
    d = one("marketing", "sms", zone, now)
    hour = datetime.fromtimestamp(now if d.action == "send" else d.until, ZoneInfo(zone))
    assert "08:00" <= hour.strftime("%H:%M") < "21:00"
    if d.action == "defer":
        assert d.reason == "tcpa.window" and d.until > now


def test_a_send_window_needs_windows():
    with pytest.raises(ValueError):
        Rule(name="x", kind="send_window")
    assert Rule(name="x", kind="send_window", windows=(Window(start="09:00", end="17:00"),)).reason is None


def test_the_planner_holds_it_for_the_scheduler_with_the_reason():
    from policy.held import HeldDeferred
    from policy.plan import Context, Item, plan_round

    request = NotificationRequest(user_id="u1", category="marketing", channels=["sms"], content=Content(text="x"))
    night = at("2026-12-03T23:30", "Europe/Berlin")
    plan = plan_round([Item("n1", "u1", request)], {"u1": person("Europe/Berlin")}, set(),
                      Context(AVAILABLE, POLICY), now=night)
    (held,) = plan.holds
    assert isinstance(held, HeldDeferred) and (held.reason, held.due_at) == (
        "tcpa.window", at("2026-12-04T08:00", "Europe/Berlin"))
    assert not plan.sends and not plan.outcomes


def test_an_empty_or_reversed_window_is_refused_at_start():
    for start, end in (("08:00", "08:00"), ("21:00", "08:00")):
        with pytest.raises(ValueError):
            Rule(name="x", kind="send_window", windows=(Window(start=start, end=end),))


def test_a_digest_collects_first_and_the_window_applies_when_it_goes():
    from policy.prefs import Preference
    from policy.types import Digest

    state = person("America/Chicago")
    state.prefs = (Preference(category="marketing", frequency="daily"),)
    request = NotificationRequest(user_id="u1", category="marketing", channels=["sms"], content=Content(text="x"))
    night = at("2026-12-03T22:30", "America/Chicago")
    assert isinstance(decide(request, state, AVAILABLE, POLICY, now=night)[0], Digest)
    released = decide(request, state, AVAILABLE, POLICY, now=night, digest=False)[0]
    assert released.reason == "tcpa.window"
