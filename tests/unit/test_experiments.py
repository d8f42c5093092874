"""A/B experiments, the pure part (policy/experiments.py): assignment by a stable
hash, variants applied to a request, routing, validation, and the statistics."""

from __future__ import annotations

import math
from collections import Counter

import msgspec
import pytest
from hypothesis import given, strategies as st

from policy import experiments as ex
from policy.experiments import Arm, ExperimentBody, Live, Variant, VariantTemplate
from policy.types import Content, NotificationRequest, TemplateRef

PINNED = ["a", "a", "c", "c", "c"]  # blake2b-64(experiment \0 user) mod 4: 0, 0, 3, 2, 2
CONTROL = Variant(name="control")
SHORT = Variant(name="short", content=Content(subject="Hi", text="short"))


def request(**extra) -> NotificationRequest:
    base = {"user_id": "u1", "category": "onboarding", "channels": ["email"], "content": {"subject": "Welcome", "text": "long text"}}
    return msgspec.convert({**base, **extra}, NotificationRequest)


def body(kind: str, *variants: dict) -> ExperimentBody:
    return msgspec.convert({"id": "e1", "category": "onboarding", "kind": kind, "variants": list(variants)},
                           ExperimentBody)


# -- assignment --------------------------------------------------------------------


@given(st.text(min_size=1, max_size=40), st.lists(st.integers(1, 50), min_size=2, max_size=10))
def test_a_person_always_gets_the_same_variant(user, weights):
    variants = [Variant(name=f"v{i}", weight=w) for i, w in enumerate(weights)]
    first = ex.assign("exp", variants, user)
    assert first in variants
    assert all(ex.assign("exp", variants, user) is first for _ in range(3))


def test_assignment_is_pinned():
    """The hash is part of the stored data's meaning (rows name variants by it): a change
    of hash would move people between variants mid-experiment. These must never change."""
    variants = [Variant(name="a", weight=1), Variant(name="b", weight=1), Variant(name="c", weight=2)]
    assert [ex.assign("welcome-copy", variants, u).name for u in ("alice", "bob", "carol", "dave", "erin")] == \
        PINNED


def test_the_split_follows_the_weights():
    variants = [Variant(name="a", weight=1), Variant(name="b", weight=3)]
    got = Counter(ex.assign("exp", variants, f"user-{i}").name for i in range(20_000))
    assert abs(got["b"] / 20_000 - 0.75) < 0.015  # 5 standard deviations is 0.015


def test_two_experiments_split_people_independently():
    variants = [Variant(name="a"), Variant(name="b")]
    pairs = Counter((ex.assign("one", variants, f"u{i}").name, ex.assign("two", variants, f"u{i}").name)
                    for i in range(8000))
    for n in pairs.values():  # each quarter about 2,000: no correlation between experiments
        assert abs(n - 2000) < 200


# -- applying a variant ------------------------------------------------------------


def test_the_control_leaves_the_request_as_it_is():
    req = request()
    assert ex.apply(req, CONTROL, 0.0) is req


def test_a_content_variant_replaces_the_content_and_drops_a_template():
    req = request(template={"id": "t", "data": {"n": 1}}, channel_content={"email": {"text": "x"}})
    got = ex.apply(req, SHORT, 0.0)
    assert got is not None and got.content == SHORT.content and got.template is None and got.channel_content == {}


def test_a_template_variant_keeps_the_request_data_and_fits_only_a_request_with_a_template():
    req = request(template={"id": "t", "data": {"n": 1}})
    v = Variant(name="b", template=VariantTemplate(id="t2", version=3))
    got = ex.apply(req, v, 0.0)
    assert got is not None and got.template == TemplateRef(id="t2", version=3, data={"n": 1})
    assert got.content is None and got.channel_content == {}  # the template's parts go, not the request's text
    assert ex.apply(request(), v, 0.0) is None  # no data for a template: not in the experiment
    assert ex.fits(got, {"email": {}}) and not ex.fits(got, {"sms": {}}) and not ex.fits(got, None)


def test_a_variant_that_could_not_be_sent_where_it_goes_is_not_applied():
    no_subject = Variant(name="b", content=Content(text="no subject"))
    assert ex.apply(request(), no_subject, 0.0) is None  # email needs a subject
    assert ex.apply(request(channels=["push"]), no_subject, 0.0) is not None
    only_email = request(content=None, channel_content={"email": {"subject": "s", "text": "t"}})
    assert ex.apply(only_email, Variant(name="b", channels=["push"]), 0.0) is None  # push would have no content


def test_a_timing_variant_sets_the_latest_from_acceptance_unless_the_request_has_a_time():
    v = Variant(name="b", deliver="optimal", deliver_within_s=86_400)
    got = ex.apply(request(accepted_at=1000.0), v, 5000.0)
    assert got is not None and (got.deliver, got.deliver_by) == ("optimal", 1000.0 + 86_400)
    assert ex.apply(request(), v, 5000.0).deliver_by == 5000.0 + 86_400  # type: ignore[union-attr]
    assert ex.apply(request(send_at=9e8), v, 0.0) is None


def test_a_channel_variant_replaces_the_channels_and_drops_them_from_the_fallbacks():
    got = ex.apply(request(fallback=["sms", "push"]), Variant(name="b", channels=["push"]), 0.0)
    assert got is not None and got.channels == ["push"] and got.fallback == ["sms"]


def test_routing():
    live = {"onboarding": Live("e1", "onboarding", (CONTROL, SHORT), "running")}
    assert ex.route("other", "normal", "u1", live) is None
    assert ex.route("onboarding", "critical", "u1", live) is None  # never a critical one
    e, v = ex.route("onboarding", "high", "u1", live) or (None, None)
    assert e is live["onboarding"] and v in (CONTROL, SHORT)
    stopped = {"onboarding": Live("e1", "onboarding", (CONTROL, SHORT), "stopped", "short")}
    assert all(ex.route("onboarding", "normal", f"u{i}", stopped)[1] is SHORT for i in range(50))  # type: ignore[index]


# -- validation --------------------------------------------------------------------


def test_what_each_kind_may_set():
    assert ex.errors(body("content", {"name": "a"}, {"name": "b", "content": {"text": "x"}})) == []
    assert [f for f, _ in ex.errors(body("content", {"name": "a"}, {"name": "b", "channels": ["sms"]}))] == [
        "$.variants[1].channels", "$.variants[1]"]
    assert [f for f, _ in ex.errors(body("channel", {"name": "a"}, {"name": "a", "channels": ["sms"]}))] == [
        "$.variants"]
    assert [f for f, _ in ex.errors(body("timing", {"name": "a"}, {"name": "b", "deliver": "optimal"}))] == [
        "$.variants[1].deliver_within_s"]
    assert [f for f, _ in ex.errors(body("timing", {"name": "a", "deliver_within_s": 7200},
                                         {"name": "b", "deliver": "now"}))] == ["$.variants[0].deliver_within_s"]
    assert [f for f, _ in ex.errors(body("channel", {"name": "a"}, {"name": "b", "channels": ["sms", "sms"]}))] == [
        "$.variants[1].channels"]


def test_variant_content_is_checked_as_a_requests_is():
    errors = ex.errors(body("content", {"name": "a"}, {"name": "b", "channel_content": {"push": {"text": "x"}}},
                            {"name": "c", "content": {"text": "x", "data": {"k": "nul\u0000"}}},
                            {"name": "d", "content": {"text": "x", "data": {"n": 2**70}}}))
    assert [f for f, _ in errors] == ["$.variants[1].content", "$.variants[2].content.data.k",
                                      "$.variants[3].content.data.n"]


def test_the_schema_bounds_an_experiment():
    with pytest.raises(msgspec.ValidationError, match="variants"):
        body("content", {"name": "a"})  # one variant
    with pytest.raises(msgspec.ValidationError, match="weight"):
        body("content", {"name": "a", "weight": 0}, {"name": "b", "content": {"text": "x"}})


# -- statistics --------------------------------------------------------------------


def test_wilson_interval_known_value():
    lo, hi = ex.wilson(50, 100, 1.959964)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)


@given(st.integers(0, 10_000), st.integers(1, 10_000), st.floats(0.5, 3.5))
def test_wilson_interval_holds_the_rate(k, n, z):
    k = min(k, n)
    lo, hi = ex.wilson(k, n, z)
    assert 0.0 <= lo <= k / n + 1e-12 and k / n - 1e-12 <= hi <= 1.0


def test_two_proportions_known_value():
    diff, (lo, hi), p = ex.two_proportions(200, 1000, 150, 1000, 1.959964)
    assert math.isclose(diff, 0.05)
    assert math.isclose(p, 0.003257, rel_tol=1e-3)  # z = 2.942 pooled; 2 × (1 − Φ(2.942)) from a table
    assert lo > 0 and math.isclose((lo + hi) / 2, 0.05)


def arms(*rates: tuple[int, int]) -> list[Arm]:
    return [Arm(name=f"v{i}", users=n, opened=k) for i, (k, n) in enumerate(rates)]


def test_no_winner_before_the_minimum_sample():
    got = ex.analyse(arms((10, 100), (90, 100)), "opened", 0.95, 500)
    assert got.winner is None and "v0 (400 more)" in got.why


def test_the_best_significantly_better_variant_wins():
    got = ex.analyse(arms((100, 1000), (150, 1000), (170, 1000)), "opened", 0.95, 500)
    assert got.winner == "v2"
    assert got.variants[0].control and got.variants[0].vs_control is None
    assert got.variants[2].rates["opened"] == 0.17 and got.variants[2].vs_control.significant  # type: ignore[union-attr]


def test_the_control_wins_when_every_variant_is_worse():
    assert ex.analyse(arms((200, 1000), (100, 1000)), "opened", 0.95, 500).winner == "v0"


def test_no_winner_without_a_significant_difference():
    got = ex.analyse(arms((100, 1000), (110, 1000)), "opened", 0.95, 500)
    assert got.winner is None and "no variant differs" in got.why


def test_more_variants_need_stronger_evidence():
    # p ≈ 0.035: enough for one comparison at 95%, not for two (Bonferroni: 0.025)
    two = ex.analyse(arms((100, 1000), (130, 1000)), "opened", 0.95, 500)
    three = ex.analyse(arms((100, 1000), (130, 1000), (100, 1000)), "opened", 0.95, 500)
    assert two.winner == "v1" and three.winner is None
