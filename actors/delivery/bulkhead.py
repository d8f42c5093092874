"""A bulkhead that lets urgent calls go first.

At most ``limit`` calls to a provider run at once. When it is full, callers
wait in two queues: high and critical notifications in one, everything else in
the other. A freed place goes to the oldest urgent waiter first, so a critical
notification never waits behind a bulk send that is queued for the same provider.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import asynccontextmanager

from policy.types import URGENT


class Bulkhead:
    def __init__(self, limit: int):
        self.limit = limit
        self.free = limit
        self._urgent: deque[asyncio.Future] = deque()
        self._normal: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return len(self._urgent) + len(self._normal)

    async def acquire(self, urgent: bool = False) -> None:
        # an urgent caller passes queued normal ones; nobody passes a queued urgent one
        ahead = self._urgent if urgent else (self._urgent or self._normal)
        if self.free > 0 and not ahead:
            self.free -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._normal
        queue.append(fut)
        try:
            await fut  # release() hands its place over by resolving this
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the place arrived as we were cancelled: pass it on
            else:
                queue.remove(fut)
            raise

    def release(self) -> None:
        for queue in (self._urgent, self._normal):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)
                    return
        self.free += 1

    @asynccontextmanager
    async def hold(self, urgent: bool = False):
        await self.acquire(urgent)
        try:
            yield
        finally:
            self.release()

    # Used as a plain ``async with`` it is an ordinary (non-urgent) semaphore.
    async def __aenter__(self) -> None:
        await self.acquire(False)

    async def __aexit__(self, *exc) -> None:
        self.release()


def place(bulkhead, priority: str):
    """``async with place(slot.bulkhead, task.priority)``: a Bulkhead honours the
    priority; an ``asyncio.Semaphore`` (older callers, tests) is used as it is."""
    if isinstance(bulkhead, Bulkhead):
        return bulkhead.hold(priority in URGENT)
    return bulkhead
