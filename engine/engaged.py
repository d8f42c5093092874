"""Engagement events this process records, sent on to the UserShards that own their
people, so a send-time profile held in a shard follows them (policy/timing.py).

Batched, never per event across the actor boundary: events are buffered and sent at
most every ``FLUSH_S``, one call per UserShard. Best effort: a call that fails (a
shard restarting) is dropped and counted, since the shard reads the person's profile
from PostgreSQL again within ``preferences.timing.refresh_s``, these events with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable

import msgspec

from policy.sharding import shard_of
from stores.engagement import Engagement

log = logging.getLogger(__name__)

FLUSH_S = 0.5  # how long an event waits for company
MAX_PENDING = 100_000  # events buffered at most (a flush that cannot keep up drops the oldest)


class Feed:
    def __init__(self, shards: Callable[[], list]):
        self._shards = shards  # the UserShards now (none while the engine has no actors)
        self._pending: list[tuple[str, float]] = []
        self._task: asyncio.Task | None = None
        self.sent = self.dropped = 0

    def add(self, events: Iterable[Engagement], new: Collection[tuple] | None = None) -> None:
        """Buffer ``events`` (those ``stores.engagement.record`` found new, when ``new``
        is given) and make sure a flush is coming."""
        for e in events:
            if new is None or (e.notification_id, e.channel, e.type) in new:
                self._pending.append((e.user_id, e.at))
        if len(self._pending) > MAX_PENDING:
            self.dropped += len(self._pending) - MAX_PENDING
            del self._pending[:len(self._pending) - MAX_PENDING]
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_S)
        await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        shards = self._shards()
        if not batch or not shards:
            self.dropped += len(batch)
            return
        parts: dict[int, list[tuple[str, float]]] = defaultdict(list)
        for user_id, at in batch:
            parts[shard_of(user_id, len(shards))].append((user_id, at))
        results = await asyncio.gather(*(shards[i].engaged.remote(msgspec.msgpack.encode(part))
                                         for i, part in parts.items()), return_exceptions=True)
        for part, result in zip(parts.values(), results, strict=True):
            if isinstance(result, BaseException):
                self.dropped += len(part)
                log.debug("engagement events not passed on to a UserShard (%s)", type(result).__name__)
            else:
                self.sent += len(part)

    async def close(self) -> None:
        """Stop; what is buffered is dropped (the shards read PostgreSQL again anyway)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.dropped += len(self._pending)
        self._pending = []
