"""Backoff delays: exact without jitter, bounded with full jitter."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, strategies as st

from actors.delivery import Backoff


def test_default_sequence_without_jitter():
    backoff = Backoff(jitter="none")
    rng = random.Random(0)
    delays = [backoff.delay(n, rng) for n in range(1, 10)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


def test_huge_attempt_numbers_are_capped_not_overflowing():
    assert Backoff(jitter="none").delay(10_000, random.Random(0)) == 5.0


def test_full_jitter_is_reproducible_with_a_seeded_rng():
    backoff = Backoff()
    a = [backoff.delay(n, random.Random(7)) for n in range(1, 6)]
    b = [backoff.delay(n, random.Random(7)) for n in range(1, 6)]
    assert a == b


def test_rejects_unknown_jitter():
    with pytest.raises(ValueError):
        Backoff(jitter="equal")  # type: ignore[arg-type]


@given(
    base=st.floats(min_value=0.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=60.0),
    mult=st.floats(min_value=1.0, max_value=10.0),
    attempt=st.integers(min_value=1, max_value=5000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_full_jitter_within_bounds(base, cap, mult, attempt, seed):
    backoff = Backoff(base_s=base, max_s=cap, multiplier=mult, jitter="full")
    try:
        bound = min(cap, base * mult ** (attempt - 1))
    except OverflowError:
        bound = cap
    delay = backoff.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= bound
