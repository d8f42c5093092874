"""The Ingestor's fetch loop and ``engine.coalesce_s``: when the last fetch was
small and a batch is in flight, the next fetch waits for one to finish (or the
time limit); otherwise it fetches at once. The subscription is a stand-in that
hands out prepared answers; the loop, its slots and its batches are the real ones."""

from __future__ import annotations

import asyncio
from collections import Counter, deque

import msgspec
import pytest

from actors.ingestor import Ingestor
from infra.config import Config


class Sub:
    """Answers ``fetch`` with the prepared lists in turn; then blocks."""

    def __init__(self, *answers: list):
        self.answers = deque(answers)
        self.fetches = 0
        self.sizes: list[int] = []  # the batch each fetch asked for

    async def fetch(self, batch: int, timeout: float) -> list:
        self.fetches += 1
        self.sizes.append(batch)
        if not self.answers:
            await asyncio.Event().wait()
        answer = self.answers.popleft()
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Meter:
    """Counts what the loop reports (the real one needs a Ray worker)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def inc(self, name: str, value: float, tags: dict | None = None) -> None:
        self.counts[name] += value


def ingestor(coalesce_s: float, batch: int = 100, slots: int = 4,
             **engine: float) -> tuple[Ingestor, dict[int, asyncio.Event]]:
    """An Ingestor with only what the fetch loop uses; each batch's processing
    waits on its own event (by batch number), so a test decides when it ends."""
    ing = Ingestor.__new__(Ingestor)
    cfg = Config()
    ing.cfg = msgspec.structs.replace(cfg, engine=msgspec.structs.replace(
        cfg.engine, coalesce_s=coalesce_s, ingest_batch=batch, inflight_batches=slots, **engine))
    ing.running, ing.inflight = True, set()
    ing.yield_until = ing.busy_said = 0.0
    ing.meter = Meter()
    ing.slots = asyncio.Semaphore(slots)
    ing.stats = {"fetched": 0, "batches": 0, "yielded": 0, "priority_busy_heard": 0}
    gates: dict[int, asyncio.Event] = {}

    async def process(msgs: list) -> None:
        n = ing.stats["batches"] = ing.stats["batches"] + 1
        gates[n] = asyncio.Event()
        await gates[n].wait()

    ing._process = process
    return ing, gates


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def run(ing: Ingestor, sub: Sub, lane: str = "bulk") -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(ing._fetch_loop(lane, sub))
    await settle()
    return task


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_small_fetch_with_a_batch_in_flight_waits_for_it():
    ing, gates = ingestor(coalesce_s=5.0)
    sub = Sub(["a"], ["b", "c"], ["d"])
    task = await run(ing, sub)
    # the first fetch found the engine idle and went at once; the next waits for batch 1
    assert sub.fetches == 1 and ing.stats["batches"] == 1
    gates[1].set()
    await settle()
    assert sub.fetches == 2 and ing.stats["batches"] == 2  # batch 1 done: what came meanwhile goes
    await stop(task)


async def test_the_wait_ends_at_coalesce_s_when_no_batch_finishes():
    ing, _ = ingestor(coalesce_s=0.05)
    sub = Sub(["a"], ["b"], ["c"])
    task = await run(ing, sub)
    assert sub.fetches == 1 and ing.stats["batches"] == 1
    await asyncio.sleep(0.2)
    assert ing.stats["batches"] >= 2, "the wait is bounded"
    await stop(task)


async def test_an_idle_engine_and_a_backlog_fetch_at_once():
    ing, gates = ingestor(coalesce_s=5.0, batch=100)
    full = [str(i) for i in range(10)]  # a tenth of the batch: messages were waiting
    sub = Sub(full, full, ["a"], ["b"])
    task = await run(ing, sub)
    # two backlog fetches and then a small one went at once; the fourth waits for a batch
    assert ing.stats["batches"] == 3 and sub.fetches == 3
    gates[1].set()
    await settle()
    assert ing.stats["batches"] == 4 and sub.fetches == 4
    await stop(task)


@pytest.mark.parametrize("lane", ["priority", "broadcast"])
async def test_the_priority_and_broadcast_lanes_never_wait(lane):
    ing, _ = ingestor(coalesce_s=5.0)
    sub = Sub(["a"], ["b"], ["c"])
    task = await run(ing, sub, lane)
    assert ing.stats["batches"] == 3
    await stop(task)


async def test_off_never_waits_and_an_empty_fetch_starts_no_batch():
    ing, gates = ingestor(coalesce_s=0.0, slots=2)
    sub = Sub(["a"], [], ["b"], ["c"])
    task = await run(ing, sub)
    assert ing.stats["batches"] == 2, "the empty answer took no slot and made no batch"
    assert sub.fetches == 3  # the next waits for a slot: two batches hold both
    gates[1].set()
    await settle()
    assert ing.stats["batches"] == 3
    await stop(task)


async def test_a_fetch_that_waited_for_a_slot_does_not_wait_again():
    ing, gates = ingestor(coalesce_s=5.0, slots=1)
    sub = Sub(["a"], ["b"], ["c"])
    task = await run(ing, sub)
    assert ing.stats["batches"] == 1 and sub.fetches == 1  # the one slot is taken
    gates[1].set()
    await settle()
    # the slot came free because batch 1 ended: that was the wait; fetch at once
    assert sub.fetches == 2 and ing.stats["batches"] == 2
    await stop(task)


async def test_a_fetch_that_timed_out_starts_no_batch_and_ends_the_backlog():
    ing, gates = ingestor(coalesce_s=5.0, batch=100, slots=2)
    full = [str(i) for i in range(10)]
    sub = Sub(full, TimeoutError(), ["a"], ["b"])
    task = await run(ing, sub)
    # the timeout made no batch, and the backlog is over: the next fetch waits for
    # batch 1 instead of going at once
    assert ing.stats["batches"] == 1 and sub.fetches == 2
    gates[1].set()
    await settle()
    assert ing.stats["batches"] == 2 and sub.fetches == 3
    await stop(task)
