"""The bulk lane yields to the priority lane (``engine.priority_yield_s``,
docs/design.md): while the priority lane has work, a bulk Ingestor keeps at most
``priority_yield_inflight`` batches of at most ``priority_yield_batch`` messages in
flight; the priority lane says it is busy over core NATS, a few times per yield.
The subscription and the NATS connection are stand-ins; the fetch loop, its slots
and its batches are the real ones (tests/unit/test_ingest_coalesce.py)."""

from __future__ import annotations

import time

from actors import ingestor as ingestor_module
from infra import streams
from tests.unit.test_ingest_coalesce import Sub, ingestor, run, settle, stop

FULL = [str(i) for i in range(50)]  # half a batch of 100: a backlog


class Nats:
    def __init__(self, fail: bool = False):
        self.published: list[str] = []
        self.fail = fail

    async def publish(self, subject: str, payload: bytes) -> None:
        if self.fail:
            raise ConnectionError("gone")
        self.published.append(subject)


def yielding(ing, seconds: float = 60.0) -> None:
    ing.yield_until = time.monotonic() + seconds


async def test_a_backlog_fills_every_slot_when_the_priority_lane_is_quiet():
    ing, _ = ingestor(coalesce_s=0.02, batch=100, slots=3)
    sub = Sub(FULL, FULL, FULL, FULL)
    task = await run(ing, sub)
    assert ing.stats["batches"] == 3 and sub.sizes == [100, 100, 100]
    assert ing.stats["yielded"] == 0
    await stop(task)


async def test_while_the_priority_lane_is_busy_one_small_batch_at_a_time():
    ing, gates = ingestor(coalesce_s=0.02, batch=100, slots=3, priority_yield_inflight=1, priority_yield_batch=20)
    yielding(ing)
    sub = Sub(FULL, FULL, FULL)
    task = await run(ing, sub)
    assert ing.stats["batches"] == 1, "the second fetch waits for the first batch, though slots are free"
    assert sub.sizes == [20]
    gates[1].set()
    await settle()
    assert ing.stats["batches"] == 2 and sub.sizes == [20, 20]
    assert ing.stats["yielded"] == 2 and ing.meter.counts["tidings_bulk_yields_total"] == 2
    await stop(task)


async def test_priority_yield_inflight_batches_may_run_at_once():
    ing, _ = ingestor(coalesce_s=0.02, batch=100, slots=4, priority_yield_inflight=2, priority_yield_batch=30)
    yielding(ing)
    sub = Sub(FULL, FULL, FULL)
    task = await run(ing, sub)
    assert ing.stats["batches"] == 2 and sub.sizes == [30, 30]
    await stop(task)


async def test_the_yield_ends_priority_yield_s_after_the_lane_last_said_busy():
    ing, _ = ingestor(coalesce_s=0.02, batch=100, slots=3, priority_yield_batch=20)
    yielding(ing, 0.5)  # no batch ends: only the time lets the next fetch go
    sub = Sub(FULL, FULL, FULL)
    task = await run(ing, sub)
    assert ing.stats["batches"] == 1
    await ingestor_module.asyncio.sleep(1.0)
    await settle()
    assert ing.stats["batches"] == 3
    assert sub.sizes[0] == 20 and sub.sizes[-1] == 100, "back to whole batches once the yield is over"
    await stop(task)


async def test_the_priority_and_broadcast_lanes_do_not_yield():
    for lane in ("priority", "broadcast"):
        ing, _ = ingestor(coalesce_s=0.02, batch=100, slots=3, priority_yield_batch=20)
        ing.nc = Nats()
        yielding(ing)
        sub = Sub(FULL, FULL, FULL)
        task = await run(ing, sub, lane)
        assert ing.stats["batches"] == 3 and sub.sizes == [100, 100, 100], lane
        await stop(task)


async def test_the_priority_lane_says_busy_a_few_times_per_yield_not_per_fetch():
    ing, _ = ingestor(coalesce_s=0.02, batch=100, slots=4, priority_yield_s=60.0)
    ing.nc = Nats()
    sub = Sub(["a"], ["b"], ["c"])
    task = await run(ing, sub, "priority")
    assert ing.stats["batches"] == 3
    assert ing.nc.published == [streams.priority_busy_subject(ing.cfg.nats)], "once per 15 s, not per fetch"
    await stop(task)


async def test_a_priority_lane_that_cannot_say_busy_goes_on():
    ing, _ = ingestor(coalesce_s=0.02, batch=100, slots=4)
    ing.nc = Nats(fail=True)
    sub = Sub(["a"], ["b"])
    task = await run(ing, sub, "priority")
    assert ing.stats["batches"] == 2
    await stop(task)


async def test_off_the_priority_lane_says_nothing():
    ing, _ = ingestor(coalesce_s=0.02, batch=100, slots=4, priority_yield_s=0.0)
    ing.nc = Nats()
    sub = Sub(["a"], ["b"])
    task = await run(ing, sub, "priority")
    assert ing.stats["batches"] == 2 and ing.nc.published == []
    await stop(task)


async def test_hearing_the_priority_lane_starts_a_yield_of_priority_yield_s():
    ing, _ = ingestor(coalesce_s=0.02, priority_yield_s=30.0)
    assert not ing._yielding()
    await ing._priority_busy(None)
    assert ing._yielding() and ing.stats["priority_busy_heard"] == 1
    assert 29 < ing.yield_until - time.monotonic() <= 30


async def test_an_idle_bulk_lane_is_not_counted_as_yielding():
    ing, _ = ingestor(coalesce_s=0.02, batch=100, slots=3, priority_yield_batch=20)
    yielding(ing)
    sub = Sub([], [], ["a"])
    task = await run(ing, sub)
    assert sub.fetches == 3 and sub.sizes == [20, 20, 20]  # the fourth waits: a batch is in flight
    assert ing.stats["yielded"] == 1, "two empty answers are not yields; the one that took a message is"
    await stop(task)
