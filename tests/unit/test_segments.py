"""The segment filter language (policy/segments.py): every mistake named by its
path, any tree the decoder accepts either checked or refused (never an error of
another kind), and each field and combination meaning what the docs say."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from policy import segments
from policy.audience import Audience, Where
from policy.prefs import Preference
from policy.rules import Policy, PolicyConfig
from policy.segments import Engagement, Invalid, check, predicate
from policy.types import BroadcastRequest, UserState
from policy.validate import message_errors

NOW = 1_800_000_000.0
DAY = 86_400.0
POLICY = Policy(PolicyConfig())


def where(obj) -> Where:
    return msgspec.convert(obj, Where)


def errors(obj) -> list[tuple[str, str]]:
    try:
        check(where(obj), "$")
    except Invalid as e:
        return e.errors
    return []


ADA = UserState(user_id="ada", addresses={"email": "a@x.test", "sms": "+1"}, suppressed={"sms": "bounce"},
                locale="en-GB", timezone="Europe/London", template="calm", consent=frozenset({"sms:marketing"}),
                prefs=(Preference(channel="email", category="marketing", enabled=False),))


def holds(obj, state: UserState = ADA, engagement: Engagement | None = None) -> bool:
    w = where(obj)
    check(w)
    return predicate(w, POLICY)(state, engagement, NOW)


@pytest.mark.parametrize(("obj", "path"), [
    ({}, "$"),
    ({"all": [], "any": []}, "$"),
    ({"all": []}, "$.all"),
    ({"field": "shoe"}, "$.field"),
    ({"field": "locale", "op": "has", "value": "en"}, "$.op"),
    ({"field": "locale", "op": "in", "value": []}, "$.value"),
    ({"field": "locale", "op": "eq", "value": 3}, "$.value"),
    ({"field": "template", "op": "exists", "value": "yes"}, "$.value"),
    ({"field": "preference", "op": "enabled", "value": "email"}, "$.value"),
    ({"field": "consent", "op": "has", "value": "pigeon:post"}, "$.value"),
    ({"field": "last_opened", "op": "within_days", "value": True}, "$.value"),
    ({"field": "last_opened", "op": "within_days", "value": 0}, "$.value"),
    ({"any": [{"field": "locale", "op": "eq", "value": "en"}, {"not": {"field": "x"}}]}, "$.any[1].not.field"),
    ({"not": {"field": "locale", "op": "eq", "value": "en"}, "op": "eq"}, "$.op"),
])
def test_each_mistake_is_named_by_its_path(obj, path):
    assert path in [p for p, _ in errors(obj)]


def test_depth_and_size_are_bounded():
    deep: dict = {"field": "locale", "op": "eq", "value": "en"}
    for _ in range(segments.MAX_DEPTH):
        deep = {"not": deep}
    assert any("deeper" in r for _, r in errors(deep))
    wide = {"any": [{"field": "locale", "op": "eq", "value": "en"}] * (segments.MAX_NODES + 1)}
    assert any("nodes" in r for _, r in errors(wide))


@pytest.mark.parametrize(("obj", "expected"), [
    ({"field": "locale", "op": "eq", "value": "en-GB"}, True),
    ({"field": "locale", "op": "prefix", "value": "en"}, True),
    ({"field": "locale", "op": "in", "value": ["fr", "de"]}, False),
    ({"field": "timezone", "op": "ne", "value": "Europe/London"}, False),
    ({"field": "template", "op": "exists", "value": True}, True),
    ({"field": "address", "op": "has", "value": "email"}, True),
    ({"field": "address", "op": "has", "value": "sms"}, False),  # suppressed
    ({"field": "address", "op": "has", "value": "push"}, False),
    ({"field": "consent", "op": "has", "value": "sms:marketing"}, True),
    ({"field": "consent", "op": "has", "value": "sms"}, False),
    ({"field": "preference", "op": "enabled", "value": "email:marketing"}, False),
    ({"field": "preference", "op": "enabled", "value": "email:billing"}, True),
    ({"not": {"field": "preference", "op": "enabled", "value": "email:marketing"}}, True),
    ({"all": [{"field": "locale", "op": "eq", "value": "en-GB"}, {"field": "address", "op": "has", "value": "sms"}]},
     False),
    ({"any": [{"field": "locale", "op": "eq", "value": "fr"}, {"field": "address", "op": "has", "value": "email"}]},
     True),
])
def test_fields_mean_what_the_docs_say(obj, expected):
    assert holds(obj) is expected


def test_engagement_windows_and_existence():
    seen = Engagement(opened=NOW - 3 * DAY, clicked=None)
    assert holds({"field": "last_opened", "op": "within_days", "value": 7}, engagement=seen)
    assert not holds({"field": "last_opened", "op": "within_days", "value": 2}, engagement=seen)
    assert not holds({"field": "last_clicked", "op": "exists", "value": True}, engagement=seen)
    assert holds({"field": "last_engaged", "op": "within_days", "value": 3}, engagement=seen)
    assert holds({"field": "last_engaged", "op": "exists", "value": False}, engagement=None)
    assert segments.needs_engagement(where({"all": [{"field": "locale", "op": "eq", "value": "en"},
                                                    {"not": {"field": "last_opened", "op": "exists", "value": True}}]}))
    assert not segments.needs_engagement(where({"field": "locale", "op": "eq", "value": "en"}))


def test_a_broadcast_audience_is_checked_with_the_message():
    b = msgspec.convert({"category": "news", "channels": ["email"], "content": {"subject": "s", "text": "t"},
                         "audience": {"topic": "company-42", "where": {"field": "locale", "op": "eq", "value": 1}}},
                        BroadcastRequest)
    assert ("$.audience.where.value", "expected a string of 1 to 200 printable characters") in message_errors(b)
    assert segments.audience_errors(Audience(), "$.audience") == [("$.audience", 'give topic, segment or where '
                                                                                 '(or "all")')]
    # a producer on NATS names a segment with its filter (the HTTP API fills it in from the saved one)
    assert [p for p, _ in segments.audience_errors(Audience(segment="europe"), "$.audience")] == ["$.audience.where"]
    assert segments.audience_errors(Audience(segment="europe", where=where({"field": "locale", "op": "eq",
                                                                            "value": "fr"})), "$.audience") == []


FIELD_NAMES = st.sampled_from([*segments.FIELDS, "nope"])
OPS = st.sampled_from(["eq", "ne", "in", "prefix", "exists", "has", "enabled", "within_days", "??"])
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.text(max_size=8),
                   st.sampled_from(["email", "sms:marketing", "email:news", "Europe/"]),
                   st.lists(st.text(max_size=4), max_size=3))
CONDITION = st.fixed_dictionaries({"field": FIELD_NAMES, "op": OPS, "value": VALUES})
TREE = st.recursive(CONDITION, lambda inner: st.one_of(
    st.fixed_dictionaries({"all": st.lists(inner, max_size=3)}),
    st.fixed_dictionaries({"any": st.lists(inner, max_size=3)}),
    st.fixed_dictionaries({"not": inner})), max_leaves=12)
STATES = st.builds(lambda loc, tz, email, opened: (
    UserState(user_id="u", locale=loc, timezone=tz, addresses={"email": "e@x.test"} if email else {}),
    None if opened is None else Engagement(opened=NOW - opened * DAY)),
    st.sampled_from(["en", "fr", "en-GB"]), st.sampled_from(["UTC", "Europe/Paris"]), st.booleans(),
    st.one_of(st.none(), st.integers(0, 100)))


@settings(max_examples=300, deadline=None)
@given(TREE, STATES)
def test_any_tree_is_checked_or_refused_and_a_checked_one_always_answers(obj, state_engagement):
    w = where(obj)
    try:
        check(w)
    except Invalid as e:
        assert e.errors and all(p.startswith("$") and r for p, r in e.errors)
        return
    state, engagement = state_engagement
    assert predicate(w, POLICY)(state, engagement, NOW) in (True, False)
    negated = predicate(where({"not": obj}), POLICY)(state, engagement, NOW)
    assert negated is not predicate(w, POLICY)(state, engagement, NOW)
