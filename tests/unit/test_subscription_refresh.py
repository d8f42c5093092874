"""An event-subscription change answers without waiting out a slow EventSender.

The change is committed before the sender is told; the sender's own periodic refresh
applies it anyway, so the HTTP answer waits at most ``REFRESH_WAIT_S`` (a refresh that
took longer than Schemathesis's 30 s once failed the suite on a loaded machine).
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

import pytest

from engine.http import subscriptions
from engine.http.common import ENGINE


class _Remote:
    def __init__(self, run) -> None:
        self.run = run

    def remote(self):
        return asyncio.ensure_future(self.run())


def _request(refresh):
    engine = SimpleNamespace(actors=SimpleNamespace(events=SimpleNamespace(refresh=_Remote(refresh))))
    return SimpleNamespace(app={ENGINE: engine})


async def test_a_slow_refresh_does_not_hold_the_answer(monkeypatch, caplog):
    monkeypatch.setattr(subscriptions, "REFRESH_WAIT_S", 0.05)
    finished = asyncio.Event()

    async def slow() -> int:
        await asyncio.sleep(0.3)
        finished.set()
        return 1

    started = time.monotonic()
    await subscriptions._refresh(_request(slow))
    assert time.monotonic() - started < 0.25
    assert not finished.is_set()
    await asyncio.wait_for(finished.wait(), 2)  # not cancelled: the refresh goes on and applies the change


async def test_a_refresh_that_fails_late_is_reported_not_lost(monkeypatch, caplog):
    monkeypatch.setattr(subscriptions, "REFRESH_WAIT_S", 0.02)

    async def fails() -> int:
        await asyncio.sleep(0.1)
        raise ConnectionError("gone")

    with caplog.at_level(logging.WARNING, logger=subscriptions.__name__):
        await subscriptions._refresh(_request(fails))
        await asyncio.sleep(0.2)
    assert any("ConnectionError" in r.getMessage() for r in caplog.records)


async def test_a_quick_refresh_is_awaited():
    done = []

    async def quick() -> int:
        done.append(1)
        return 1

    await subscriptions._refresh(_request(quick))
    assert done == [1]


@pytest.mark.parametrize("error", [RuntimeError("down"), ValueError("odd")])
async def test_a_failing_refresh_is_logged_not_raised(error, caplog):
    async def fails() -> int:
        raise error

    with caplog.at_level(logging.WARNING, logger=subscriptions.__name__):
        await subscriptions._refresh(_request(fails))
    assert any(type(error).__name__ in r.getMessage() for r in caplog.records)


async def test_a_refresh_failing_with_a_timeout_of_its_own_is_a_failure(caplog):
    """A JetStream timeout inside the sender's refresh (Ray re-raises it as a
    TimeoutError) is reported as a failed refresh, not as one still running."""
    async def times_out() -> int:
        raise TimeoutError("jetstream")

    with caplog.at_level(logging.INFO, logger=subscriptions.__name__):
        await subscriptions._refresh(_request(times_out))
    messages = [r.getMessage() for r in caplog.records]
    assert any("not told" in m and "TimeoutError" in m for m in messages)
    assert not any("still applying" in m for m in messages)
