"""Channel choice, ``"channel_strategy": "best"`` (policy/choice.py and its use in
policy/plan.py): Thompson sampling seeded by the notification, population priors,
costs, exploration, and one channel per recipient whatever their preferences say."""

from __future__ import annotations

import dataclasses
from collections import Counter

from hypothesis import given, settings, strategies as st

from policy import choice
from policy.choice import ChoiceConfig
from policy.decide import zone
from policy.fatigue import Cap, Fatigue, FatigueConfig, Ledger
from policy.plan import Context, Item, plan_round
from policy.prefs import Preference, ordered
from policy.rules import Policy, PolicyConfig
from policy.templating import Compiled, MessageTemplate
from policy.types import CHANNELS, Content, NotificationRequest, TemplateRef, UserState
from policy.windows import Window

NOON = 1_763_467_200.0  # 2025-11-18T12:00Z: 13:00 in Berlin
NIGHT = NOON + 11 * 3600  # 00:00 in Berlin
CFG = ChoiceConfig(exploration=0.0, cost={})


def picks(stats, population=None, cfg=CFG, candidates=("email", "sms"), n=2000) -> Counter:
    return Counter(choice.choose(candidates, stats, population or {}, cfg, f"n{i}")[0] for i in range(n))


def test_the_same_notification_chooses_the_same_channel():
    stats = {"email": (10, 2), "sms": (10, 3)}
    assert len({repr(choice.choose(("email", "sms"), stats, {}, CFG, "n1")) for _ in range(5)}) == 1


def test_a_persons_history_wins_over_the_prior():
    got = picks({"email": (40, 1), "sms": (40, 30)})
    assert got["sms"] > 0.99 * 2000


def test_with_no_history_the_population_decides_and_exploration_remains():
    got = picks({}, population={"email": (10_000, 3000), "sms": (10_000, 500)})
    # the prior of a new person is the population's (0.3 against 0.05) at strength 4: mostly email
    assert 0.8 * 2000 < got["email"] < 2000


def test_cost_is_subtracted_from_the_sampled_rate():
    stats = {"email": (200, 40), "sms": (200, 50)}  # sms a little better
    assert picks(stats)["sms"] > picks(stats, cfg=ChoiceConfig(exploration=0.0, cost={"sms": 0.2}))["sms"]


def test_exploration_takes_a_candidate_at_random():
    got = picks({"email": (100, 90), "sms": (100, 0)}, cfg=ChoiceConfig(exploration=1.0, cost={}))
    assert abs(got["sms"] - 1000) < 150


def test_the_prior_blends_the_population_with_the_configured_rate():
    cfg = ChoiceConfig(prior_rate=0.1, prior_weight=10)
    assert choice.prior({}, "email", cfg) == 0.1
    assert choice.prior({"email": (90, 90)}, "email", cfg) == (90 + 1) / 100


# -- in the plan ----------------------------------------------------------------------


def req(channels, **kw) -> NotificationRequest:
    return NotificationRequest(user_id="u1", category="news", channels=list(channels), channel_strategy="best",
                               content=Content(subject="s", text="t"), **kw)


def user(*rows) -> UserState:
    return UserState(user_id="u1", addresses={c: "a@x.test" for c in ("email", "sms", "push", "voice")},
                     prefs=ordered(rows), timezone="Europe/Berlin")


def ctx(stats=None) -> Context:
    policy = Policy(PolicyConfig(choice=CFG))
    return Context(frozenset(CHANNELS), policy, channel_stats={"u1": (0.0, stats)} if stats else None)


def test_one_channel_is_sent_and_the_others_name_the_choice():
    plan = plan_round([Item("n1", "u1", req(["email", "sms", "push"]))], {"u1": user()}, set(),
                      ctx({"push": (30, 25)}), now=NOON)
    assert list(plan.sends) == ["push"]
    assert sorted((o.channel, o.reason) for o in plan.outcomes) == [("email", choice.REASON),
                                                                    ("sms", choice.REASON)]
    assert all(o.detail.startswith("chose push; scores email ") for o in plan.outcomes)  # type: ignore[union-attr]


def test_only_what_may_be_sent_is_a_candidate():
    off = user(Preference(channel="email", enabled=False))
    plan = plan_round([Item("n1", "u1", req(["email", "sms"]))], {"u1": off}, set(), ctx(), now=NOON)
    assert list(plan.sends) == ["sms"]
    assert [(o.channel, o.reason) for o in plan.outcomes] == [("email", "pref.channel_off")]


def test_a_channel_held_is_not_chosen_when_another_may_go_now():
    quiet_email = user(Preference(channel="email", quiet_hours=[Window(start="22:00", end="07:00")]))
    plan = plan_round([Item("n1", "u1", req(["email", "push"]))], {"u1": quiet_email}, set(), ctx(), now=NIGHT)
    assert list(plan.sends) == ["push"] and not plan.holds
    assert [(o.channel, o.reason) for o in plan.outcomes] == [("email", choice.REASON)]


def test_a_notification_decided_again_keeps_its_choice():
    # sms was sent (recorded, or sent and not recorded yet: the shard says so in ``chosen``):
    # email is not chosen now, whatever the counts say
    plan = plan_round([Item("n1", "u1", req(["email", "sms"]))], {"u1": user()}, {("n1", "sms")},
                      dataclasses.replace(ctx({"email": (50, 50)}), chosen=frozenset({"n1"})), now=NOON)
    assert not plan.sends and [(o.channel, o.reason) for o in plan.outcomes] == [("email", choice.REASON)]


def test_a_redelivery_after_a_failed_send_sends_the_channel_left():
    # the first try recorded email as not chosen, then the call for sms failed: sms is what is left
    plan = plan_round([Item("n1", "u1", req(["email", "sms"]))], {"u1": user()}, {("n1", "email")},
                      ctx({"email": (50, 50)}), now=NOON)
    assert list(plan.sends) == ["sms"] and not plan.outcomes


def test_a_channel_that_could_not_be_sent_is_not_a_candidate():
    # the template has no sms part: sms would be rejected, so email is the one that goes
    templated = NotificationRequest(user_id="u1", category="news", channels=["email", "sms"], channel_strategy="best",
                                    template=TemplateRef(id="t"))
    parts = {("t", None): {"email": {"en": Compiled(MessageTemplate(id="t", channel="email", locale="en",
                                                                     subject="s", text="t"))}}}
    c = dataclasses.replace(ctx({"sms": (50, 50)}), templates=parts)
    plan = plan_round([Item("n1", "u1", templated)], {"u1": user()}, set(), c, now=NOON)
    assert list(plan.sends) == ["email"]
    assert [(o.channel, o.status, o.reason) for o in plan.outcomes] == [("sms", "rejected", "template.missing")]


def test_a_channel_over_a_fatigue_cap_does_not_win_over_one_that_may_go_now():
    caps = FatigueConfig(caps=(Cap(name="push", window="day", limit=1, channels=("push",)),))
    ledger = Ledger(Fatigue(caps), 100)
    ledger.seed({"u1": [("push", "news", "normal", NOON - 60)]}, {"u1": zone("Europe/Berlin")}, NOON)
    c = dataclasses.replace(ctx({"push": (50, 50)}), ledger=ledger,
                            policy=Policy(PolicyConfig(choice=CFG, fatigue=caps)))
    plan = plan_round([Item("n1", "u1", req(["email", "push"]))], {"u1": user()}, set(), c, now=NOON)
    assert list(plan.sends) == ["email"] and not plan.holds


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(("email", "sms", "push", "voice", "webhook")), min_size=2, max_size=5, unique=True),
       st.lists(st.builds(Preference, channel=st.sampled_from(("*", "email", "sms", "push")),
                          enabled=st.sampled_from((None, True, False)),
                          frequency=st.sampled_from((None, "immediate", "daily", "never")),
                          quiet_hours=st.sampled_from((None, [Window(start="22:00", end="07:00")]))), max_size=3),
       st.sampled_from((NOON, NIGHT)), st.integers(0, 10_000))
def test_at_most_one_channel_goes_or_is_held(channels, rows, now, seed):
    plan = plan_round([Item(f"n{seed}", "u1", req(channels))], {"u1": user(*rows)}, set(), ctx(), now=now)
    went = [ch for ch, ts in plan.sends.items() for _ in ts] + [h.channel for h in plan.holds]
    assert len(went) <= 1
    disposed = sorted(went + [o.channel for o in plan.outcomes])
    assert disposed == sorted(channels)  # every candidate has exactly one outcome
