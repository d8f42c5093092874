"""Send-time optimization (policy/timing.py) and how a round plans with it
(policy.plan): pure, no PostgreSQL, no Ray."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from policy.plan import Context, Item, plan_round
from policy.prefs import Preference, ordered
from policy.rules import Policy, PolicyConfig, Rule
from policy.timing import EMPTY, TimingConfig, best_time, profile_of, scores
from policy.types import CHANNELS, Content, NotificationRequest, UserState
from policy.validate import message_errors
from policy.windows import Window

BERLIN = ZoneInfo("Europe/Berlin")
ALL = frozenset(CHANNELS)
CFG = TimingConfig()


def at(text: str, tz: ZoneInfo = BERLIN) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def reads_at(hour: int, n: int = 20, tz: ZoneInfo = BERLIN) -> tuple[int, ...]:
    """A profile of someone who read n times at ``hour`` local."""
    first = datetime(2026, 1, 1, hour, 30, tzinfo=tz)
    return profile_of([(first + timedelta(days=d)).timestamp() for d in range(n)], tz)


def test_a_reader_at_nine_gets_it_at_nine():
    now = at("2026-03-10T15:20")
    assert best_time(reads_at(9), CFG, BERLIN, now, now + 2 * 86_400) == at("2026-03-11T09:00")


def test_this_hour_when_it_is_the_best_and_never_after_the_latest():
    now = at("2026-03-10T09:10")
    assert best_time(reads_at(9), CFG, BERLIN, now, now + 86_400) == now
    now = at("2026-03-10T15:20")  # the best hour is tomorrow 09:00, the latest before it
    t = best_time(reads_at(9), CFG, BERLIN, now, at("2026-03-10T23:00"))
    assert now <= t <= at("2026-03-10T23:00")
    assert best_time(reads_at(9), CFG, BERLIN, now, now - 1) == now  # past its latest: now


def test_someone_new_follows_the_prior():
    now = at("2026-03-10T03:00")
    t = best_time(EMPTY, CFG, BERLIN, now, now + 86_400)
    hour = datetime.fromtimestamp(t, BERLIN).hour
    assert CFG.prior[hour] == max(CFG.prior)
    s = scores(EMPTY, CFG)
    assert s.index(max(s)) == hour and sum(s) == pytest.approx(1.0)


def test_few_events_are_smoothed_toward_the_prior():
    one = reads_at(3, n=1)  # a single open at 03:30: not enough to wake someone at 3
    now = at("2026-03-10T00:10")
    assert datetime.fromtimestamp(best_time(one, CFG, BERLIN, now, now + 86_400), BERLIN).hour != 3
    many = reads_at(3, n=40)
    assert datetime.fromtimestamp(best_time(many, CFG, BERLIN, now, now + 86_400), BERLIN).hour == 3


def test_quiet_hours_are_never_chosen():
    now = at("2026-03-10T15:20")
    quiet = (Window(start="08:00", end="10:00"),)
    t = best_time(reads_at(9), CFG, BERLIN, now, now + 2 * 86_400, quiet)
    assert not (8 <= datetime.fromtimestamp(t, BERLIN).hour < 10)


def test_hours_are_local_across_a_dst_change():
    # Europe goes to summer time on 2026-03-29 at 02:00
    now = at("2026-03-28T15:00")
    assert best_time(reads_at(9), CFG, BERLIN, now, now + 2 * 86_400) == at("2026-03-29T09:00")


def request(**kw) -> NotificationRequest:
    base = dict(user_id="u1", category="job_alerts", channels=["email"], content=Content(subject="s", text="t"))
    return NotificationRequest(**{**base, **kw})


STATE = UserState(user_id="u1", addresses={"email": "a@example.com"}, timezone="Europe/Berlin")


def test_a_round_holds_an_optimal_send_until_the_persons_hour():
    now = at("2026-03-10T15:20")
    item = Item("00000000-0000-0000-0000-000000000001", "u1", request(deliver="optimal", deliver_by=now + 86_400))
    ctx = Context(ALL, Policy(), profiles={"u1": (now, reads_at(9))})
    plan = plan_round([item], {"u1": STATE}, set(), ctx, now=now)
    [held] = plan.holds
    assert (held.reason, held.due_at) == ("timing.optimized", at("2026-03-11T09:00"))
    # released at 09:00 and decided again: sent
    plan = plan_round([item], {"u1": STATE}, set(), ctx, now=at("2026-03-11T09:00"))
    assert plan.holds == [] and len(plan.sends["email"]) == 1
    # "now" requests are not held
    plan = plan_round([Item(item.notification_id, "u1", request())], {"u1": STATE}, set(), ctx, now=now)
    assert plan.holds == []


def test_the_persons_quiet_hours_shape_the_choice():
    now = at("2026-03-10T15:20")
    state = msgspec.structs.replace(STATE, prefs=ordered([Preference(quiet_hours=[Window(start="08:00",
                                                                                           end="10:00")])]))
    item = Item("00000000-0000-0000-0000-000000000001", "u1", request(deliver="optimal", deliver_by=now + 86_400))
    plan = plan_round([item], {"u1": state}, set(), Context(ALL, Policy(), profiles={"u1": (now, reads_at(9))}),
                      now=now)
    assert all(not (8 <= datetime.fromtimestamp(h.due_at, BERLIN).hour < 10) for h in plan.holds)


def test_requests_say_what_is_wrong_with_their_timing():
    fields = {f for f, _ in message_errors(request(deliver="optimal"))}
    assert fields == {"$.deliver_by"}
    assert {f for f, _ in message_errors(request(deliver_by=1e9))} == {"$.deliver_by"}
    assert "$.deliver" in {f for f, _ in message_errors(request(deliver="optimal", deliver_by=2e9, send_at=2e9))}
    assert message_errors(request(deliver="optimal", deliver_by=2e9)) == []
    with pytest.raises(msgspec.ValidationError, match="deliver"):
        msgspec.convert({"user_id": "u", "category": "c", "channels": ["email"], "deliver": "later"},
                        NotificationRequest)


def test_the_prior_is_validated():
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"prior": [1] * 23}, TimingConfig)
    with pytest.raises(msgspec.ValidationError, match="more than 0"):
        msgspec.convert({"prior": [0] * 24}, TimingConfig)
    assert Policy(PolicyConfig(rules=(Rule(name="x", kind="mandatory", category="security"),))).cfg.timing == CFG


@settings(max_examples=200, deadline=None)
@given(hours=st.lists(st.integers(0, 23), max_size=30), start=st.integers(0, 7 * 24 * 60),
       window_h=st.floats(0.1, 72), zone_name=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York",
                                                               "Asia/Kathmandu", "Australia/Lord_Howe"]))
def test_the_time_chosen_is_within_now_and_the_latest(hours, start, window_h, zone_name):
    tz = ZoneInfo(zone_name)
    now = (datetime(2026, 3, 23, tzinfo=tz) + timedelta(minutes=start)).timestamp()
    profile = profile_of([now - 86_400 * 3 + h * 3600 for h in hours], tz)
    latest = now + window_h * 3600
    t = best_time(profile, CFG, tz, now, latest)
    assert now <= t <= latest
    assert t == now or datetime.fromtimestamp(t, tz).minute == 0 or zone_name == "Australia/Lord_Howe"


def test_a_held_send_is_released_as_a_send_now_and_never_held_for_its_timing_again():
    now = at("2026-03-10T15:20")
    item = Item("00000000-0000-0000-0000-000000000001", "u1", request(deliver="optimal", deliver_by=now + 86_400))
    plan = plan_round([item], {"u1": STATE}, set(), Context(ALL, Policy(), profiles={"u1": (now, reads_at(9))}),
                      now=now)
    stored = msgspec.msgpack.decode(plan.holds[0].request, type=NotificationRequest)
    assert (stored.deliver, stored.deliver_by) == ("now", None)
    # released, even with a profile that now prefers another hour: sent
    released = Item(item.notification_id, "u1", stored)
    plan = plan_round([released], {"u1": STATE}, set(), Context(ALL, Policy(), profiles={"u1": (now, reads_at(20))}),
                      now=at("2026-03-11T09:00"), )
    assert plan.holds == [] and len(plan.sends["email"]) == 1


def test_the_time_to_live_and_the_allowed_windows_bound_the_choice():
    now = at("2026-03-10T10:20")
    profiles = {"u1": (now, reads_at(19))}
    # a time to live of two hours: 19:00 would be dropped as expired; the choice stays inside it
    short = Item("00000000-0000-0000-0000-000000000001", "u1",
                 request(deliver="optimal", deliver_by=now + 86_400, ttl_s=7200, accepted_at=now))
    plan = plan_round([short], {"u1": STATE}, set(), Context(ALL, Policy(), profiles=profiles), now=now)
    assert all(h.due_at <= now + 7200 - 600 for h in plan.holds)
    # allowed 09:00-17:00 only: never 19:00 (which would bounce between the window and the hour)
    windowed = msgspec.structs.replace(STATE, prefs=ordered([Preference(time_windows=[Window(start="09:00",
                                                                                              end="17:00")])]))
    item = Item("00000000-0000-0000-0000-000000000002", "u1", request(deliver="optimal", deliver_by=now + 86_400))
    plan = plan_round([item], {"u1": windowed}, set(), Context(ALL, Policy(), profiles=profiles), now=now)
    assert all(9 <= datetime.fromtimestamp(h.due_at, BERLIN).hour < 17 for h in plan.holds)


def test_a_dry_run_does_not_optimize():
    now = at("2026-03-10T15:20")
    item = Item("00000000-0000-0000-0000-000000000001", "u1", request(deliver="optimal", deliver_by=now + 86_400))
    plan = plan_round([item], {"u1": STATE}, set(), Context(ALL, Policy(), profiles=None), now=now)
    assert plan.holds == [] and len(plan.sends["email"]) == 1


def test_critical_notifications_are_not_optimized():
    fields = {f for f, _ in message_errors(request(deliver="optimal", deliver_by=2e9, priority="critical"))}
    assert fields == {"$.deliver"}


def test_a_profile_is_24_bytes_whatever_the_counts():
    tz = ZoneInfo("UTC")
    p = profile_of([3600 * 5 + 86_400 * d for d in range(1000)] + [3600 * 7], tz)
    assert len(p) == 24 and p[5] == 255 and 0 <= p[7] <= 1
    assert profile_of([], tz) is EMPTY
