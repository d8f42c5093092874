"""Engagement events this process records, sent on to the UserShards that own their
people, so a send-time profile held in a shard follows them (policy/timing.py).

Batched, never per event across the actor boundary: events are buffered once
committed and sent every ``FLUSH_S`` while any are waiting, one call per UserShard,
each call bounded by ``CALL_TIMEOUT_S``. Each event carries its time as stored and
when it was passed on (``recorded``), so a shard does not count an event its own read
of PostgreSQL already saw. Best effort: a call that fails or times out (a shard
restarting) is dropped and counted (``dropped``, logged), since the shard reads the
person's profile from PostgreSQL again within ``preferences.timing.refresh_s``, these
events with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

from policy import wire
from policy.sharding import shard_of
from policy.wire import Engaged
from stores.engagement import Engagement

log = logging.getLogger(__name__)

FLUSH_S = 0.5  # how long an event waits for company
CALL_TIMEOUT_S = 5.0  # a shard that does not answer in this long: its part is dropped
READING = frozenset({"opened", "clicked"})  # what a send-time profile counts (a conversion is not a read)
MAX_PENDING = 100_000  # events buffered at most; more are dropped (counted) until a flush


class Feed:
    def __init__(self, shards: Callable[[], list]):
        self._shards = shards  # the UserShards now (none while the engine has no actors)
        self._pending: list[Engaged] = []
        self._task: asyncio.Task | None = None
        self.sent = self.dropped = 0

    def add(self, events: Iterable[Engagement], new: Mapping[tuple, float]) -> None:
        """Buffer those of ``events`` that ``stores.engagement.record`` stored (``new``:
        key → time as stored), once their transaction committed, and make sure a flush
        is coming."""
        now = time.time()
        first = getattr(new, "first", set())  # stores.engagement.Stored: a send's first read
        counted: set[tuple] = set()
        for e in events:
            key = (e.notification_id, e.channel, e.type)
            at = new.get(key)
            if at is None or e.type not in READING:
                continue
            if len(self._pending) >= MAX_PENDING:
                self.dropped += 1
                continue
            # a send is read once for channel choice, however many opens and clicks it gets
            once = key in first and (e.notification_id, e.channel) not in counted
            counted.add((e.notification_id, e.channel))
            self._pending.append(Engaged(e.user_id, at, now, e.channel if once else ""))
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        # until nothing waits: events added during a flush go in the next one
        while self._pending:
            await asyncio.sleep(FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        try:
            shards = self._shards()
        except Exception:  # noqa: BLE001 - no actors (stopping): dropped like a failed call
            shards = []
        if not batch or not shards:
            self.dropped += len(batch)
            return
        parts: dict[int, list[Engaged]] = defaultdict(list)
        for e in batch:
            parts[shard_of(e.user_id, len(shards))].append(e)
        results = await asyncio.gather(*(self._call(shards[i], part) for i, part in parts.items()),
                                       return_exceptions=True)
        for part, result in zip(parts.values(), results, strict=True):
            if isinstance(result, BaseException):
                self.dropped += len(part)
                log.warning("%d engagement events not passed on to a UserShard (%s); its profiles catch up "
                            "at their next read", len(part), type(result).__name__)
            else:
                self.sent += len(part)

    @staticmethod
    async def _call(shard, part: list[Engaged]) -> None:
        await asyncio.wait_for(shard.engaged.remote(wire.encode(part)), CALL_TIMEOUT_S)

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
