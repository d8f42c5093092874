"""Scheduled sends (policy/schedule.py, and how decide() holds them)."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta

import pytest
from hypothesis import given, strategies as st

from policy import schedule
from policy.decide import decide
from policy.types import Defer, NotificationRequest, Send, Suppress, UserState

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Chatham",
         "America/Santiago", "Europe/London"]
instants = st.floats(min_value=1.6e9, max_value=2.2e9)
times = st.tuples(st.integers(0, 23), st.integers(0, 59))


@given(st.sampled_from(ZONES), instants, times)
def test_a_time_of_day_is_the_first_at_or_after_acceptance_on_the_recipients_clock(name, accepted, hm):
    tz = zoneinfo.ZoneInfo(name)
    due = schedule.due_at(None, f"{hm[0]:02d}:{hm[1]:02d}", tz, accepted)
    assert accepted <= due < accepted + 26 * 3600  # at most a day on, and a DST hour
    local = datetime.fromtimestamp(due, tz)
    wall = datetime.combine(local.date(), datetime.min.time()).replace(hour=hm[0], minute=hm[1])
    if datetime.fromtimestamp(wall.replace(tzinfo=tz).timestamp(), tz).replace(tzinfo=None) == wall:
        assert (local.hour, local.minute) == hm  # the clocks show it (unless that time was skipped that day)
    # and no earlier instant at or after acceptance shows it: the previous day's is before acceptance
    earlier = schedule.local_instant(local.date() - timedelta(days=1), wall.time(), tz)
    assert earlier < accepted


@given(st.sampled_from(ZONES), times, st.dates(min_value=datetime(2001, 1, 1).date(),
                                                 max_value=datetime(2090, 12, 31).date()))
def test_a_date_and_time_is_that_moment_on_the_recipients_clock(name, hm, day):
    tz = zoneinfo.ZoneInfo(name)
    due = schedule.due_at(None, f"{day.isoformat()}T{hm[0]:02d}:{hm[1]:02d}", tz, 0.0)
    local = datetime.fromtimestamp(due, tz)
    skipped = datetime.fromtimestamp(due, tz).replace(tzinfo=None) != datetime(day.year, day.month, day.day, *hm)
    assert skipped or (local.date(), local.hour, local.minute) == (day, *hm)


def test_across_the_jumps_a_skipped_time_goes_after_and_a_repeated_one_the_first_time():
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    # 2027-03-28 02:30 does not happen in Berlin: it goes at 03:30 CEST (01:30 UTC)
    assert schedule.due_at(None, "2027-03-28T02:30", berlin, 0) == datetime(2027, 3, 28, 1, 30,
                                                                          tzinfo=zoneinfo.ZoneInfo("UTC")).timestamp()
    # 2027-10-31 02:30 happens twice: the first (CEST, 00:30 UTC)
    assert schedule.due_at(None, "2027-10-31T02:30", berlin, 0) == datetime(2027, 10, 31, 0, 30,
                                                                          tzinfo=zoneinfo.ZoneInfo("UTC")).timestamp()


@pytest.mark.parametrize("value, reason", [("9:00", "HH:MM"), ("24:00", "time of day"), ("09:60", "time of day"),
                                           ("2027-02-30T09:00", "not a date"), ("1999-01-01T09:00", "year"),
                                           ("2027-01-01 09:00", "HH:MM"), ("09:00\n", "HH:MM")])
def test_bad_local_times_are_named(value, reason):
    (path, why), = schedule.errors(None, value)
    assert path == "$.send_at_local" and reason in why


def test_one_schedule_at_a_time():
    assert schedule.errors(2e9, "09:00") == [("$.send_at_local", "give send_at or send_at_local, not both")]


def request(**kw) -> NotificationRequest:
    return NotificationRequest(user_id="u1", category="orders", channels=["email", "webhook"],
                               content={"text": "hi"}, accepted_at=1.9e9, **kw)


STATE = UserState(user_id="u1", addresses={"email": "u1@example.test"}, timezone="Asia/Tokyo")


def test_decide_holds_a_scheduled_request_until_it_is_due_and_sends_it_then():
    req = request(send_at_local="09:00")
    due = schedule.due_at(None, "09:00", zoneinfo.ZoneInfo("Asia/Tokyo"), 1.9e9)
    held = decide(req, STATE, frozenset({"email", "webhook"}), now=1.9e9)
    assert held == [Defer("email", "scheduled", due), Defer("webhook", "scheduled", due)]
    assert decide(req, STATE, frozenset({"email", "webhook"}), now=due) == [Send("email"), Send("webhook")]
    # an unknown user's webhook (its address is the provider's) waits too, on UTC
    later = decide(request(send_at=1.9e9 + 60), None, frozenset({"email", "webhook"}), now=1.9e9)
    assert later == [Suppress("email", "user.unknown"), Defer("webhook", "scheduled", 1.9e9 + 60)]
    # a moment in the past: at once
    assert decide(request(send_at=1.0e9), STATE, frozenset({"email"}), now=1.9e9)[0] == Send("email")


def test_a_repeated_time_goes_the_second_time_when_the_request_came_between_them():
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    utc = zoneinfo.ZoneInfo("UTC")
    between = datetime(2027, 10, 31, 0, 45, tzinfo=utc).timestamp()  # 02:45 CEST, before the clocks go back
    assert schedule.due_at(None, "02:30", berlin, between) == datetime(2027, 10, 31, 1, 30, tzinfo=utc).timestamp()


def test_only_ascii_digits():
    assert schedule.errors(None, "\u0660\u0669:\u0663\u0660")[0][0] == "$.send_at_local"


def test_a_scheduled_life_starts_when_it_is_due():
    utc = zoneinfo.ZoneInfo("UTC")
    assert schedule.start_of_life(2e9, None, utc, 1.9e9) == 2e9
    assert schedule.start_of_life(1.8e9, None, utc, 1.9e9) == 1.9e9  # due before acceptance: from acceptance
    assert schedule.start_of_life(None, None, utc, 1.9e9) == 1.9e9
