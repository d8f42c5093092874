"""The Ingestor's answer to a failed call (``Ingestor._acked``), without NATS or
Ray: an outage is tried again without end and never counts against the
messages; contention a few times, then it does; a failure of the message's naks;
an engine that stops during an outage naks, never dead-letters."""

from __future__ import annotations

import asyncpg
import pytest

from actors import faults
from infra import streams
from tests.unit.test_ingest_validation import BASE, CFG, FakeMsg, Harness


class Counted(FakeMsg):
    def __init__(self, seq: int, delivered: int = 1):
        super().__init__(streams.notify_subject(CFG.nats, "job_alerts"), BASE, seq)
        self.reply = f"$JS.ACK.{CFG.nats.stream}.c.{delivered}.{seq}.{seq}.1700000000000000000.0"
        self.naks = 0

    async def nak(self, delay=None):
        self.naks += 1


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(faults, "FIRST_S", 0.001)
    monkeypatch.setattr(faults, "MOST_S", 0.001)


def failing(*errors: BaseException):
    """A call that raises ``errors`` in turn, then succeeds; counts its calls."""
    calls = []

    async def call():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]

    return call, calls


async def test_an_outage_is_tried_again_until_it_passes_and_counts_nothing():
    h = Harness()
    h.ingestor.running = True
    msg = Counted(1)
    call, calls = failing(*[ConnectionRefusedError(111, "refused")] * 12)
    assert await h.ingestor._acked([msg], call, "test")
    assert len(calls) == 13 and msg.acked and msg.naks == 0 and h.ingestor.stats["retried"] == 12


async def test_contention_is_tried_a_few_times_then_counts_against_the_message():
    h = Harness()
    h.ingestor.running = True
    msg = Counted(2)
    call, calls = failing(*[asyncpg.exceptions.QueryCanceledError("statement timeout")] * 50)
    assert not await h.ingestor._acked([msg], call, "test")
    assert len(calls) == faults.CONTENTION_TRIES + 1 and msg.naks == 1 and not msg.acked


async def test_a_failure_of_the_message_naks_at_once_and_dead_letters_when_spent():
    h = Harness()
    h.ingestor.running = True
    fresh, spent = Counted(3), Counted(4, delivered=CFG.nats.dead_letter_after)
    call, calls = failing(ValueError("bad"))
    assert not await h.ingestor._acked([fresh, spent], call, "test")
    assert len(calls) == 1 and fresh.naks == 1 and not fresh.acked
    assert spent.acked and spent.naks == 0
    assert [p[2]["Tidings-Reason"] for p in h.published] == ["processing.failed"]


async def test_stopping_during_an_outage_naks_even_what_is_spent():
    h = Harness()  # not running: the engine is stopping
    spent = Counted(5, delivered=CFG.nats.dead_letter_after)
    call, _ = failing(ConnectionRefusedError(111, "refused"))
    assert not await h.ingestor._acked([spent], call, "test")
    assert spent.naks == 1 and not spent.acked and h.published == []
