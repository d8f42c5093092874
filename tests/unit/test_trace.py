"""Stage stamps to segments (policy/trace.py), and which notifications are traced."""

from __future__ import annotations

import uuid

from hypothesis import given, strategies as st

from policy.trace import SEGMENTS, sampled, segments
from policy.types import Attempt


def test_every_segment_is_the_time_between_its_stamps():
    stamps = {"fetched": 10.010, "shard_in": 10.012, "decided": 10.015, "channel_in": 10.016,
              "channel_out": 10.050, "shard_back": 10.052, "record_in": 10.060}
    attempts = [Attempt("hook", False, 10.020, 5.0), Attempt("hook", True, 10.030, 10.0)]
    got = segments(stamps, 10.000, attempts, committed=10.070)
    want = {"fetch": 0.010, "ingest": 0.002, "decide": 0.003, "to_channel": 0.001, "channel_wait": 0.004,
            "provider": 0.020, "batch_rest": 0.010, "back": 0.002, "to_recorder": 0.008, "commit": 0.010}
    assert set(got) == set(want) == set(SEGMENTS) - {"ack"}
    assert all(abs(got[k] - want[k]) < 1e-9 for k in want)
    # they add up to publish -> committed
    assert abs(sum(got.values()) - 0.070) < 1e-9


def test_missing_stamps_leave_their_segments_out_and_clock_skew_is_never_negative():
    got = segments({"record_in": 5.0}, 0.0, [], committed=4.9)
    assert got == {"commit": 0.0}


@given(st.floats(0, 1))
def test_sampling_is_by_id_so_every_actor_agrees(rate):
    ids = [str(uuid.UUID(int=i * 7919)) for i in range(2000)]
    first = [sampled(i, rate) for i in ids]
    assert first == [sampled(i, rate) for i in ids]
    if rate == 0:
        assert not any(first)
    if rate == 1:
        assert all(first)
