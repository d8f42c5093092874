"""``Ingestor.start`` runs one start at a time: the engine's supervisor calls it every
few seconds, and a start waits for the UserShards (up to WARM_S); a second start
meanwhile must not open a second connection and a second set of fetch loops."""

from __future__ import annotations

import asyncio

from actors.ingestor import Ingestor


def ingestor() -> tuple[Ingestor, list[int]]:
    ing = Ingestor.__new__(Ingestor)
    ing.running, ing.starting = False, asyncio.Lock()
    calls: list[int] = []

    async def slow_start() -> None:
        calls.append(1)
        await asyncio.sleep(0.05)  # the warm-up
        ing.running = True

    ing._start = slow_start
    return ing, calls


async def test_overlapping_starts_start_once():
    ing, calls = ingestor()
    await asyncio.gather(ing.start(), ing.start(), ing.start())
    assert calls == [1] and ing.running


async def test_a_start_after_a_stop_starts_again():
    ing, calls = ingestor()
    await ing.start()
    ing.running = False  # what stop() leaves
    await ing.start()
    assert calls == [1, 1]
