"""TokenBucket and DailyLimit, on a hand-driven clock."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from fakes import FakeClock
from hypothesis import given, settings, strategies as st

from actors.delivery import DailyLimit, TokenBucket


def test_burst_then_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2.0, burst=3.0, clock=clock)
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take() == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == pytest.approx(0.5)
    clock.advance(10.0)  # refills to burst, not beyond
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take() > 0.0


def test_try_take_wait_values_and_takes_nothing_when_short():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=4.0, burst=2.0, clock=clock)
    assert bucket.try_take(2) == 0.0
    assert bucket.try_take() == pytest.approx(0.25)
    assert bucket.try_take(2) == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.try_take(2) == pytest.approx(0.25)  # the failed try took nothing
    assert bucket.try_take(1) == 0.0
    assert bucket.try_take(3) == math.inf  # more than the bucket can ever hold


def test_unlimited_bucket_always_gives():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=0, burst=1, clock=clock)
    assert all(bucket.try_take() == 0.0 for _ in range(10_000))
    assert bucket.unlimited


async def test_acquire_waits_via_injected_sleep():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1.0, burst=1.0, clock=clock)
    assert await bucket.acquire(clock.sleep, max_wait_s=0.0)
    assert await bucket.acquire(clock.sleep, max_wait_s=1.0)
    assert clock.sleeps == [pytest.approx(1.0)]
    assert bucket.try_take() == pytest.approx(1.0)  # the acquired token was taken


async def test_acquire_gives_up_beyond_max_wait_without_sleeping_or_taking():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1.0, burst=1.0, clock=clock)
    bucket.try_take()
    assert not await bucket.acquire(clock.sleep, max_wait_s=0.5)
    assert clock.sleeps == []
    clock.advance(0.5)
    assert await bucket.acquire(clock.sleep, max_wait_s=0.5)
    assert clock.sleeps == [pytest.approx(0.5)]


async def test_acquire_counts_total_wait_against_max_wait():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1.0, burst=1.0, clock=clock)
    bucket.try_take()

    async def sleep_and_lose_the_race(seconds: float) -> None:
        await clock.sleep(seconds)
        bucket.try_take()  # someone else takes the token we waited for

    assert not await bucket.acquire(sleep_and_lose_the_race, max_wait_s=1.5)
    assert sum(clock.sleeps) <= 1.5


async def test_waits_and_refusals_are_kept_for_the_metrics_until_drained():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2.0, burst=1.0, clock=clock)
    assert await bucket.acquire(clock.sleep, max_wait_s=1.0)  # the burst: no wait, nothing kept
    assert await bucket.acquire(clock.sleep, max_wait_s=1.0)  # waits half a second
    assert not await bucket.acquire(clock.sleep, max_wait_s=0.1)  # would wait half a second: refused
    assert bucket.drain_waits() == ([pytest.approx(0.5)], 1)
    assert bucket.drain_waits() == ([], 0)


def test_pause_until_blocks_then_resumes_without_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2.0, burst=5.0, clock=clock)
    bucket.pause_until(clock() + 3.0)
    assert bucket.paused_until == clock() + 3.0
    assert bucket.try_take() == pytest.approx(3.0)
    clock.advance(1.0)
    assert bucket.try_take() == pytest.approx(2.0)
    clock.advance(2.0)
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == pytest.approx(0.5)  # no burst right after the pause


def test_pause_keeps_the_later_time_and_ignores_the_past():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1.0, burst=1.0, clock=clock)
    bucket.pause_until(clock() + 5.0)
    bucket.pause_until(clock() + 2.0)
    bucket.pause_until(clock() - 1.0)
    assert bucket.try_take() == pytest.approx(5.0)


def test_repeated_pauses_never_add_tokens():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1.0, burst=3.0, clock=clock)
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    for _ in range(5):
        bucket.pause_until(clock() + 0.01)
        clock.advance(0.01)
    assert bucket.try_take() == pytest.approx(1.0)


def test_pause_applies_to_unlimited_bucket():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=0, burst=1, clock=clock)
    bucket.pause_until(clock() + 2.0)
    assert bucket.try_take() == pytest.approx(2.0)
    clock.advance(2.0)
    assert bucket.try_take() == 0.0


def _epoch(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_daily_limit_resets_at_utc_midnight():
    clock = FakeClock(wall_start=_epoch(2024, 3, 9, 23, 59, 58))
    daily = DailyLimit(2, clock.wall)
    assert daily.take() and daily.take()
    assert not daily.take()
    assert daily.exhausted() and daily.used == 2
    clock.advance(1.5)  # 23:59:59.5, same UTC day
    assert not daily.take()
    clock.advance(0.5)  # 00:00:00 next day
    assert not daily.exhausted()
    assert daily.take()
    assert daily.used == 1


def test_daily_limit_zero_is_unlimited():
    daily = DailyLimit(0, FakeClock().wall)
    assert all(daily.take() for _ in range(1000))
    assert not daily.exhausted()


steps = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=3.0)),
        st.tuples(st.just("take"), st.integers(min_value=1, max_value=10)),
        st.tuples(st.just("pause"), st.floats(min_value=0.0, max_value=3.0)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.1, max_value=20.0),
    burst=st.floats(min_value=1.0, max_value=10.0),
    steps=steps,
)
def test_never_more_than_burst_plus_rate_times_window(rate, burst, steps):
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock)
    taken: list[tuple[float, float]] = []
    for op, value in steps:
        if op == "advance":
            clock.advance(value)
        elif op == "pause":
            bucket.pause_until(clock() + value)
        elif bucket.try_take(value) == 0.0:
            taken.append((clock(), value))
    # every window that starts and ends at a take is the tightest one
    for i, (start, _) in enumerate(taken):
        total = 0.0
        for end, n in taken[i:]:
            total += n
            assert total <= burst + rate * (end - start) + 1e-6
