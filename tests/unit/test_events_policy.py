"""policy/events.py: which subscription takes which event, the subject an
event goes to, the lane that keeps a notification's events in order, and the
waits between tries."""

from __future__ import annotations

import msgspec
from hypothesis import given, strategies as st

from policy import events
from policy.events import EVENT_CHANNELS, STATUSES, Filters

EVENT = st.builds(
    lambda ch, status, cat, nid: events.event(id="e", notification_id=nid, user_id="u", channel=ch,
                                              category=cat, status=status, at=1.0),
    st.sampled_from(EVENT_CHANNELS), st.sampled_from(STATUSES), st.sampled_from(("a", "b", "c")), st.uuids().map(str))
FILTERS = st.builds(
    lambda chs, sts, cats: Filters(channels=tuple(chs), statuses=tuple(sts), categories=tuple(cats)),
    st.lists(st.sampled_from(EVENT_CHANNELS[:-1]), max_size=3, unique=True),
    st.lists(st.sampled_from(STATUSES), max_size=3, unique=True),
    st.lists(st.sampled_from(("a", "b", "c")), max_size=2, unique=True))


@given(EVENT, FILTERS)
def test_a_subscription_takes_what_each_of_its_filters_allows(e, f):
    expected = ((not f.channels or e.channel in f.channels or e.channel == "any")
                and (not f.statuses or e.status in f.statuses)
                and (not f.categories or e.category in f.categories))
    assert f.wants(e) is expected


@given(EVENT, FILTERS)
def test_the_consumer_filter_never_hides_an_event_the_subscription_wants(e, f):
    pattern = events.filter_subject("p", f).split(".")
    subject = events.subject("p", e).split(".")
    matches = (pattern[-1] == ">" and subject[:len(pattern) - 1] == pattern[:-1]) or (
        len(pattern) == len(subject) and all(a in ("*", b) for a, b in zip(pattern, subject, strict=True)))
    if f.wants(e):
        assert matches


@given(st.uuids().map(str), st.integers(1, 64))
def test_a_notification_always_gets_the_same_lane(nid, lanes):
    assert events.lane(nid, lanes) == events.lane(nid, lanes) < lanes


def test_the_waits_run_out_into_a_dead_letter():
    waits = [1.0, 5.0]
    assert [events.backoff(waits, n) for n in (1, 2, 3)] == [1.0, 5.0, None]


def test_a_rejected_request_has_channel_any_and_an_event_round_trips():
    e = events.event(id="x", notification_id="n", user_id="u", channel="*", category="c", status="rejected",
                     at=2.5, reason="payload.invalid")
    assert e.channel == "any" and e.type == "notification.rejected"
    assert events.DECODER.decode(events.ENCODER.encode(e)) == e
    assert msgspec.json.decode(events.ENCODER.encode(e))["reason"] == "payload.invalid"


def test_only_a_4xx_that_is_not_a_not_now_refuses_an_event_for_good():
    assert [s for s in range(100, 600) if events.refused_for_good(s)] == \
        [s for s in range(400, 500) if s not in (401, 403, 404, 408, 409, 423, 425, 429)]
