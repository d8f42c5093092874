"""A dry run's tally (policy/dryrun.py): shards' tallies merged are the tally of
everything at once, and each sample holds only users decided that way."""

from __future__ import annotations

from hypothesis import given, strategies as st

from policy import wire
from policy.dryrun import SAMPLE, Tally

decision = st.tuples(st.sampled_from(["email", "sms"]), st.sampled_from(["send", "suppress", "defer"]),
                     st.sampled_from(["ok", "pref.category_off", "quiet_hours"]),
                     st.text("abcdef", min_size=1, max_size=3))


def tally_of(decisions) -> Tally:
    t = Tally()
    for channel, action, reason, user in decisions:
        t.add(channel, action, reason, user)
    return t


@given(st.lists(st.lists(decision, max_size=30), max_size=5))
def test_merged_shards_count_as_one(shards):
    merged = Tally()
    for part in shards:
        merged.merge(wire.decode(wire.encode(tally_of(part)), Tally))  # as the shards answer
    whole = tally_of([d for part in shards for d in part])
    assert {k: c.count for k, c in merged.counts.items()} == {k: c.count for k, c in whole.counts.items()}
    for key, c in merged.counts.items():
        users = {u for ch, a, r, u in (d for part in shards for d in part) if f"{ch}\0{a}\0{r}" == key}
        assert len(c.sample) == len(set(c.sample)) <= SAMPLE and set(c.sample) <= users
        assert len(c.sample) == min(SAMPLE, len(users))  # as many as there are, up to SAMPLE


def test_rows_are_ordered_by_channel_then_action_then_most():
    t = tally_of([("sms", "send", "ok", "a"), ("email", "suppress", "x", "a"), ("email", "suppress", "y", "a"),
                  ("email", "suppress", "y", "b"), ("email", "send", "ok", "c")])
    assert [(c.channel, c.action, c.reason, c.count) for c in t.rows()] == [
        ("email", "send", "ok", 1), ("email", "suppress", "y", 2), ("email", "suppress", "x", 1),
        ("sms", "send", "ok", 1)]
