"""CircuitBreaker state machine, on a hand-driven clock."""

from __future__ import annotations

import pytest
from fakes import FakeClock

from actors.delivery import CircuitBreaker


def _breaker(clock: FakeClock, **kw) -> CircuitBreaker:
    kw.setdefault("failure_threshold", 3)
    kw.setdefault("recovery_s", 30.0)
    return CircuitBreaker(clock=clock, **kw)


def _open(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.record_failure()
    assert breaker.state == "open"


def test_opens_after_threshold_consecutive_failures():
    clock = FakeClock()
    breaker = _breaker(clock)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.metrics() == {"state": "open", "failures": 3, "opened_at": clock()}


def test_success_resets_the_count():
    breaker = _breaker(FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.metrics() == {"state": "closed", "failures": 2, "opened_at": None}


def test_stays_open_until_recovery_elapsed():
    clock = FakeClock()
    breaker = _breaker(clock)
    _open(breaker)
    clock.advance(29.9)
    assert not breaker.allow()
    assert breaker.state == "open"
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.state == "half_open"


@pytest.mark.parametrize("probes", [1, 2])
def test_half_open_allows_exactly_the_probes(probes):
    clock = FakeClock()
    breaker = _breaker(clock, half_open_probes=probes)
    _open(breaker)
    clock.advance(30.0)
    assert [breaker.allow() for _ in range(probes + 3)] == [True] * probes + [False] * 3
    assert breaker.state == "half_open"


def test_probe_success_closes():
    clock = FakeClock()
    breaker = _breaker(clock)
    _open(breaker)
    clock.advance(30.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.metrics() == {"state": "closed", "failures": 0, "opened_at": None}
    assert all(breaker.allow() for _ in range(5))


def test_probe_failure_reopens_with_a_new_timer():
    clock = FakeClock()
    breaker = _breaker(clock)
    _open(breaker)
    clock.advance(30.0)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.metrics()["opened_at"] == clock()
    clock.advance(29.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow() and breaker.state == "half_open"


def test_release_returns_an_unused_probe():
    clock = FakeClock()
    breaker = _breaker(clock)
    _open(breaker)
    clock.advance(30.0)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert breaker.allow()
    breaker.release()
    breaker.release()  # never more than half_open_probes
    assert breaker.allow() and not breaker.allow()


def test_late_results_while_open_are_ignored():
    clock = FakeClock()
    breaker = _breaker(clock)
    _open(breaker)
    opened_at = clock()
    clock.advance(10.0)
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.metrics()["opened_at"] == opened_at


def test_rejects_nonsense_settings():
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(half_open_probes=0)
