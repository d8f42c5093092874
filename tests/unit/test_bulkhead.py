"""The bulkhead: at most `limit` at once; a freed place goes to urgent waiters first."""

import asyncio

import pytest

from actors.delivery.bulkhead import Bulkhead


async def test_urgent_waiters_go_before_queued_normal_ones():
    b = Bulkhead(1)
    order = []
    await b.acquire()

    async def call(name, urgent):
        async with b.hold(urgent):
            order.append(name)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(call(f"bulk{i}", False)) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(call("critical", True)))
    await asyncio.sleep(0)
    assert b.waiting == 4
    b.release()
    await asyncio.gather(*tasks)
    assert order == ["critical", "bulk0", "bulk1", "bulk2"]
    assert b.free == 1


async def test_never_more_than_limit_and_cancelled_waiters_leave_no_hole():
    b = Bulkhead(2)
    running = peak = 0

    async def call(urgent):
        nonlocal running, peak
        async with b.hold(urgent):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.001)
            running -= 1

    tasks = [asyncio.create_task(call(i % 3 == 0)) for i in range(30)]
    tasks[5].cancel()
    tasks[6].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, asyncio.CancelledError) for r in results) <= 2
    assert peak == 2 and b.free == 2 and b.waiting == 0


async def test_plain_async_with_is_a_normal_place():
    b = Bulkhead(1)
    async with b:
        assert b.free == 0
    assert b.free == 1
    with pytest.raises(RuntimeError):
        async with b:
            raise RuntimeError("boom")
    assert b.free == 1
