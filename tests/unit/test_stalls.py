"""The stall watch (actors/stalls.py) and the tail breakdown of the bench (bench/stages.py)."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from actors.stalls import StallWatch, in_actor, tune_gc
from bench.stages import share, tail, windows


async def test_a_blocked_loop_and_a_collection_are_both_seen():
    watch = StallWatch(anywhere=True)
    watch.start()
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.12)  # holds the loop: the next tick is late by about this much
        gc.collect(1)
        await asyncio.sleep(0.05)
        samples = watch.samples()
        assert max(samples["lag"]) >= 0.09
        assert samples["gc"]["1"], "the collection of generation 1 was timed"
    finally:
        watch.stop()
    assert watch._on_gc not in gc.callbacks


async def test_outside_a_ray_actor_nothing_is_started_or_changed():
    """A test (or a driver) that builds an actor class in its own process keeps its collector."""
    assert not in_actor()
    before = gc.get_threshold(), gc.get_freeze_count(), len(gc.callbacks)
    watch = StallWatch(50_000)
    watch.start()
    assert watch._task is None
    assert (gc.get_threshold(), gc.get_freeze_count(), len(gc.callbacks)) == before


def test_tune_gc_freezes_and_raises_the_young_threshold_and_zero_leaves_the_defaults():
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        tune_gc(0)
        assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
        kept = [[] for _ in range(10)]  # tracked objects alive at the freeze
        tune_gc(50_000)
        assert gc.get_threshold() == (50_000, before[1], before[2])
        assert gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_tail_is_what_the_slowest_spent_their_time_on():
    fast = [{"fetch": 0.002, "to_channel": 0.003, "commit": 0.005}] * 99
    slow = [{"fetch": 0.002, "to_channel": 0.200, "commit": 0.005}]
    shares = tail(fast + slow)
    assert shares == {"fetch": 2.0, "to_channel": 200.0, "commit": 5.0}
    assert tail([]) == {}


def test_windows_tell_a_few_stalls_from_a_run_slow_all_along():
    steady = [[i * 0.25, 500, 5.0, 12.0, 14.0] for i in range(40)]
    stalled = [*steady[:20], [5.0, 500, 300.0, 410.0, 420.0], *steady[21:]]
    w = windows(stalled, 0.25)
    assert w["n"] == 40 and w["median_p99_ms"] == 12.0  # a typical moment is fast
    assert (w["worst_p99_ms"], w["worst_at_s"], w["over_target"]) == (410.0, 5.0, 1)
    slow = windows([[i * 0.25, 500, 40.0, 90.0, 95.0] for i in range(40)], 0.25)
    assert slow["median_p99_ms"] == 90.0 and slow["over_target"] == 40
    assert windows([], 0.25) == {} and windows([[0.0, 0, None, None, None]], 0.25) == {}


def test_the_charts_draw_a_paced_rate_as_a_share_of_the_backlog_rate_measured():
    # --rate-base 2290 --paced 0.1 with a backlog at 3,558/s: 229/s is 6.4% of what the
    # engine drained, not the 10% asked of the rate base (the charts said 10% before)
    result = {"e2e_per_s": 3558}
    assert share({"rate": 229, "fraction": 0.1, "utilisation": 0.1}, result) == pytest.approx(0.0644, abs=1e-4)
    assert share({"rate": 229, "utilisation": 0.1}, {"e2e_per_s": 0}) == 0.1  # no backlog rate: as kept
