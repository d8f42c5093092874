"""bench.arrivals.poisson_arrivals: the wait_time of paced Locust users."""

import random
import statistics
from types import SimpleNamespace

import pytest

from bench.arrivals import poisson_arrivals


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(rate: float, answer_s: float, n: int, seed: int = 1) -> tuple[list[float], float]:
    """Drive one user: wait, then a request answered in answer_s; returns the send times."""
    clock = Clock()
    wait = poisson_arrivals(rate, clock=clock, rng=random.Random(seed))
    user, sends = SimpleNamespace(), []
    for _ in range(n):
        sends.append(clock.now)
        clock.now += answer_s
        clock.now += wait(user)
    return sends, clock.now


def test_a_user_keeps_its_rate_while_answers_are_short_against_its_gaps():
    # answers up to a quarter of the mean gap (0.04 s): the rate holds. Longer ones cost
    # rate (at half the gap ~3%), since a user behind owes at most one gap (no catch-up)
    for answer_s in (0.0, 0.01):
        sends, _ = run(25.0, answer_s, 20000)
        rate = (len(sends) - 1) / (sends[-1] - sends[0])
        assert rate == pytest.approx(25.0, rel=0.03)


def test_gaps_are_exponential_not_fixed():
    sends, _ = run(25.0, 0.0, 20000)
    gaps = [b - a for a, b in zip(sends, sends[1:], strict=False)]
    mean, sd = statistics.fmean(gaps), statistics.pstdev(gaps)
    assert mean == pytest.approx(0.04, rel=0.03)
    assert sd == pytest.approx(mean, rel=0.05)  # an exponential's sd is its mean; a fixed pace's is 0


def test_a_stall_does_not_end_in_a_burst_of_missed_requests():
    clock = Clock()
    wait = poisson_arrivals(10.0, clock=clock, rng=random.Random(2))
    user = SimpleNamespace()
    wait(user)
    clock.now += 5.0  # an answer took 5 s: 50 requests' worth of schedule missed
    back_to_back = 0
    for _ in range(20):
        w = wait(user)
        back_to_back += w == 0.0
        clock.now += w
    assert back_to_back <= 3


def test_each_user_keeps_its_own_schedule_under_one_shared_wait_time():
    # Locust gives every user the same wait_time function: the schedule lives on the user
    clock = Clock()
    wait = poisson_arrivals(10.0, clock=clock, rng=random.Random(3))
    slow, fast = SimpleNamespace(), SimpleNamespace()
    wait(slow)
    slow_due = slow._next_due
    for _ in range(50):
        wait(fast)  # the other user's turns do not move this one's schedule
    assert slow._next_due == slow_due and fast._next_due != slow_due


def test_a_rate_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        poisson_arrivals(0)
