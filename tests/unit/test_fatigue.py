"""Fatigue caps (policy/fatigue.py) and how a round plans with them (policy.plan):
pure, no PostgreSQL, no Ray."""

from datetime import datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from policy.fatigue import Cap, Fatigue, FatigueConfig, Ledger
from policy.plan import Context, Item, plan_round
from policy.rules import Policy, PolicyConfig
from policy.types import CHANNELS, NotificationRequest, UserState

BERLIN = ZoneInfo("Europe/Berlin")
ALL = frozenset(CHANNELS)
DAILY = Cap(name="daily", window="day", limit=2)
PUSH_HOURLY = Cap(name="push_hourly", window="hour", limit=1, channels=("push",))


def at(text: str, tz: ZoneInfo = BERLIN) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def fatigue(*caps: Cap) -> Fatigue:
    return Fatigue(FatigueConfig(caps=caps))


def request(category: str = "marketing", channels=("email",), priority: str = "normal") -> NotificationRequest:
    return NotificationRequest(user_id="u1", category=category, channels=list(channels), priority=priority,
                               content={"subject": "s", "text": "t"})


def items(n: int, **kw) -> list[Item]:
    return [Item(f"00000000-0000-0000-0000-{i:012d}", "u1", request(**kw)) for i in range(n)]


STATE = UserState(user_id="u1", addresses={"email": "a@example.com", "push": "tok"}, timezone="Europe/Berlin")


def ctx(ledger: Ledger | None) -> Context:
    return Context(ALL, Policy(PolicyConfig(fatigue=FatigueConfig(caps=(DAILY,)))), ledger=ledger)


def test_a_round_sends_up_to_the_cap_and_holds_the_rest_until_the_day_ends():
    now = at("2026-03-10T15:00")
    ledger = Ledger(fatigue(DAILY), 100)
    ledger.seed({}, {"u1": BERLIN}, now)
    plan = plan_round(items(3), {"u1": STATE}, set(), ctx(ledger), now=now)
    assert len(plan.sends["email"]) == 2
    [held] = plan.holds
    assert held.reason == "fatigue.day" and held.due_at == at("2026-03-11T00:00")


def test_sends_counted_before_fill_the_cap():
    now = at("2026-03-10T15:00")
    ledger = Ledger(fatigue(DAILY), 100)
    ledger.seed({"u1": [("email", "marketing", "normal", at("2026-03-10T08:00")),
                        ("sms", "news", "normal", at("2026-03-10T09:00")),
                        ("email", "marketing", "normal", at("2026-03-09T23:00"))]},  # yesterday: not counted
                {"u1": BERLIN}, now)
    plan = plan_round(items(1), {"u1": STATE}, set(), ctx(ledger), now=now)
    assert plan.sends == {} and plan.holds[0].reason == "fatigue.day"
    # the next day the cap is empty again
    tomorrow = at("2026-03-11T07:00")
    plan = plan_round(items(1), {"u1": STATE}, set(), ctx(ledger), now=tomorrow)
    assert len(plan.sends["email"]) == 1


def test_critical_and_transactional_are_never_capped_nor_counted():
    now = at("2026-03-10T15:00")
    ledger = Ledger(fatigue(DAILY), 100)
    ledger.seed({"u1": [("email", "security", "normal", now - 60)] * 5 + [("email", "x", "critical", now - 60)] * 5},
                {"u1": BERLIN}, now)
    assert ledger.counts["u1"] == () and ledger.get("u1") is None  # counted: none of them counts
    plan = plan_round(items(4, priority="critical") + items(4, category="security"), {"u1": STATE}, set(),
                      ctx(ledger), now=now)
    assert plan.holds == [] and len(plan.sends["email"]) == 8


def test_a_cap_counts_only_its_channels_and_category():
    f = fatigue(PUSH_HOURLY, Cap(name="news", window="week", limit=1, category="news"))
    now = at("2026-03-10T15:20")
    counts = f.add(None, "email", "marketing", "normal", BERLIN, now - 60, now)
    assert counts is None  # neither cap covers a marketing email
    counts = f.add(counts, "push", "marketing", "normal", BERLIN, now - 60, now)
    over = f.over(counts, {}, "u1", "push", "marketing", "normal", BERLIN, now)
    assert over is not None and over.reason == "fatigue.hour" and over.until == at("2026-03-10T16:00")
    assert f.over(counts, {}, "u1", "email", "marketing", "normal", BERLIN, now) is None
    assert f.over(counts, {}, "u1", "email", "news", "normal", BERLIN, now) is None


def test_when_several_caps_are_full_it_waits_for_the_last_window():
    f = fatigue(PUSH_HOURLY, Cap(name="weekly", window="week", limit=1))
    now = at("2026-03-10T15:20")  # a Tuesday
    counts = f.add(None, "push", "marketing", "normal", BERLIN, now - 60, now)
    over = f.over(counts, {}, "u1", "push", "marketing", "normal", BERLIN, now)
    assert over.reason == "fatigue.week" and over.until == at("2026-03-16T00:00")


def test_windows_are_the_recipients_calendar():
    tokyo = ZoneInfo("Asia/Tokyo")
    f = fatigue(DAILY)
    now = at("2026-03-10T23:30", tokyo)
    counts = f.add(None, "email", "m", "normal", tokyo, now - 3600, now)
    counts = f.add(counts, "email", "m", "normal", tokyo, now - 60, now)
    assert f.over(counts, {}, "u1", "email", "m", "normal", tokyo, now).until == at("2026-03-11T00:00", tokyo)
    assert f.over(counts, {}, "u1", "email", "m", "normal", tokyo, at("2026-03-11T00:00", tokyo)) is None


def test_a_send_for_someone_not_counted_yet_is_left_to_the_seed():
    ledger = Ledger(fatigue(DAILY), 100)
    now = at("2026-03-10T15:00")
    ledger.reserve("u1", "email", "m", "normal", BERLIN, now)
    assert "u1" not in ledger.counts  # counted from PostgreSQL when first needed, this send with it
    ledger.seed({}, {"u1": BERLIN}, now)
    ledger.reserve("u1", "email", "m", "normal", BERLIN, now)
    ledger.reserve("u1", "email", "m", "normal", BERLIN, now)
    assert ledger.fatigue.over(ledger.get("u1"), {}, "u1", "email", "m", "normal", BERLIN, now) is not None
    ledger.give_back("u1", "email", "m", "normal", BERLIN, now)  # one of them failed
    assert ledger.fatigue.over(ledger.get("u1"), {}, "u1", "email", "m", "normal", BERLIN, now) is None


def test_batches_planning_at_once_see_each_others_sends():
    # the shard counts a round's sends (plan.capped) before it sends them: the next round,
    # planned while they are in flight, sees them
    now = at("2026-03-10T15:00")
    ledger = Ledger(fatigue(DAILY), 100)
    ledger.seed({}, {"u1": BERLIN}, now)
    first = plan_round(items(2), {"u1": STATE}, set(), ctx(ledger), now=now)
    assert len(first.sends["email"]) == 2 and len(first.capped) == 2
    for _, user, channel, category, priority in first.capped:
        ledger.reserve(user, channel, category, priority, BERLIN, now)
    second = plan_round(items(1), {"u1": STATE}, set(), ctx(ledger), now=now)
    assert second.sends == {} and second.holds[0].reason == "fatigue.day"


def test_a_send_that_is_not_made_is_not_counted_in_the_round():
    now = at("2026-03-10T15:00")
    ledger = Ledger(fatigue(DAILY), 100)
    ledger.seed({}, {"u1": BERLIN}, now)
    expired = [Item("00000000-0000-0000-0000-00000000000a", "u1",
                    msgspec.structs.replace(request(), ttl_s=60, accepted_at=now - 3600))]
    plan = plan_round(expired + items(2), {"u1": STATE}, set(), ctx(ledger), now=now)
    assert [o.reason for o in plan.outcomes] == ["ttl.expired"]
    assert len(plan.sends["email"]) == 2 and plan.holds == []  # the expired one used no allowance


def test_the_ledger_is_bounded_least_recently_used_first_and_keeps_whom_a_batch_uses():
    ledger = Ledger(fatigue(DAILY), 3)
    now = at("2026-03-10T15:00")
    busy = ledger.use(["u0"])
    ledger.seed({}, {f"u{i}": BERLIN for i in range(5)}, now)
    assert list(ledger.counts) == ["u0", "u3", "u4"]  # u0 is in use: u1 and u2 went
    ledger.done(busy)
    ledger.reserve("u0", "email", "m", "normal", BERLIN, now)  # used again: the most recent
    ledger.seed({}, {"u5": BERLIN}, now)
    assert list(ledger.counts) == ["u4", "u0", "u5"]
    assert ledger.unknown(["u1", "u4", "u1"]) == ["u1"] and ledger.get("u1") is None


def test_exempt_categories_are_the_configured_ones_only():
    f = Fatigue(FatigueConfig(caps=(DAILY,), exempt_categories=()))
    assert not f.exempt("normal", "consent_confirmation")  # not by name: they are not planned at all
    assert f.capped(["email"], "security", "normal")  # exempt_categories emptied: capped now
    assert f.capped(["email"], "marketing", "normal") is True


def test_caps_are_validated_as_configuration():
    with pytest.raises(msgspec.ValidationError, match="limit"):
        msgspec.convert({"caps": [{"name": "d", "window": "day", "limit": 0}]}, FatigueConfig)
    with pytest.raises(msgspec.ValidationError, match="window"):
        msgspec.convert({"caps": [{"name": "d", "window": "month", "limit": 1}]}, FatigueConfig)
    with pytest.raises(msgspec.ValidationError, match="one name"):
        msgspec.convert({"caps": [{"name": "d", "window": "day", "limit": 1}] * 2}, FatigueConfig)
    with pytest.raises(msgspec.ValidationError, match="exempt_priorities"):
        msgspec.convert({"exempt_priorities": ["Critical"]}, FatigueConfig)
    with pytest.raises(msgspec.ValidationError, match="caps"):
        msgspec.convert({"caps": [{"name": f"c{i}", "window": "day", "limit": 1} for i in range(21)]}, FatigueConfig)
    assert Policy(PolicyConfig()).fatigue is None  # no caps: nothing counted


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 6), n=st.integers(0, 15), before=st.integers(0, 8),
       hour=st.integers(0, 23), zone_name=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York",
                                                            "Asia/Kolkata", "Australia/Lord_Howe"]))
def test_never_more_sends_in_a_window_than_its_limit(limit, n, before, hour, zone_name):
    tz = ZoneInfo(zone_name)
    cap = Cap(name="daily", window="day", limit=limit)
    now = datetime(2026, 3, 29, hour, 30, tzinfo=tz).timestamp()  # a DST change in Europe
    ledger = Ledger(fatigue(cap), 10)
    ledger.seed({"u1": [("email", "m", "normal", now - 60)] * before}, {"u1": tz}, now)
    state = UserState(user_id="u1", addresses={"email": "a@example.com"}, timezone=zone_name)
    plan = plan_round(items(n, category="m"), {"u1": state}, set(),
                      Context(ALL, Policy(PolicyConfig(fatigue=FatigueConfig(caps=(cap,)))), ledger=ledger), now=now)
    sent = len(plan.sends.get("email", []))
    assert sent == max(0, min(n, limit - before))
    assert len(plan.holds) == n - sent
    assert all(h.reason == "fatigue.day" and h.due_at > now for h in plan.holds)


def test_a_cap_that_digests_collects_the_send_into_the_windows_digest():
    digesting = Cap(name="news_daily", window="day", limit=1, category="news", over="digest")
    policy = Policy(PolicyConfig(fatigue=FatigueConfig(caps=(digesting,))))
    now = at("2026-03-10T15:00")
    ledger = Ledger(policy.fatigue, 100)
    ledger.seed({}, {"u1": BERLIN}, now)
    plan = plan_round(items(2, category="news"), {"u1": STATE}, set(), Context(ALL, policy, ledger=ledger), now=now)
    assert len(plan.sends["email"]) == 1
    [held] = plan.holds
    assert held.reason == "fatigue.day" and held.due_at == at("2026-03-11T00:00")
    assert (held.key.frequency, held.key.category, held.key.period_end) == ("daily", "news", int(at("2026-03-11T00:00")))
    # a released send (or a digest) is never digested again: held instead
    plan = plan_round(items(2, category="news"), {"u1": STATE}, set(),
                      Context(ALL, policy, digest=False, ledger=ledger), now=now)
    assert [h.reason for h in plan.holds] == ["fatigue.day"] and not hasattr(plan.holds[0], "key")
