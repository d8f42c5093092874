"""Locks by key, for writers that must not interleave on the same user but
need not wait for writers of other users.

A UserShard writes a user to PostgreSQL, then puts the committed state in
memory; a second write of the same user in between (or a reload that read
before the first committed) would leave memory older than the database. One
lock per shard did that job but queued every profile and preference write of
the shard behind each other: under load, a write waited for dozens of others'
round trips (``PUT /v1/users`` p95 near a second). Here each user is its own
lock; a writer of several users takes theirs in sorted order, so two writers
of overlapping sets cannot deadlock. A key's lock is dropped once nobody holds
or waits for it, so memory follows the writes in flight, not the users seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager


class KeyedLock:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}  # key -> holders and waiters

    @asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        ordered = sorted(set(keys))
        for k in ordered:
            self._users[k] = self._users.get(k, 0) + 1
            if k not in self._locks:
                self._locks[k] = asyncio.Lock()
        taken: list[asyncio.Lock] = []
        try:
            for k in ordered:
                lock = self._locks[k]
                await lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in taken:
                lock.release()
            for k in ordered:
                left = self._users[k] - 1
                if left:
                    self._users[k] = left
                else:
                    del self._users[k], self._locks[k]

    def __len__(self) -> int:
        """Keys held or waited for now."""
        return len(self._locks)
