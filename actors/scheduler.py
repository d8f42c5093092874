"""Scheduler: brings held notifications back when they are due.

Every ``scheduler.interval_s`` it claims due deferred rows and due digest
buckets (``FOR UPDATE SKIP LOCKED`` with a lease, so several Schedulers, or one
restarted, never hand out the same row twice while a lease runs) and sends them
to their owning UserShard in one call per shard. The shard decides, delivers,
and marks them done in the same transaction as their final tracking rows; a
claim whose shard failed comes back when its lease ends.
"""

from __future__ import annotations

import asyncio
import logging

from actors import schedule_store
from engine import db
from engine.config import Config, decode as decode_config
from policy import wire
from policy.sharding import shard_of

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, cfg: bytes, database_url: str, user_shards: list):
        self.cfg: Config = decode_config(cfg)
        self.url = database_url
        self.user_shards = user_shards
        self.pool = None
        self.task: asyncio.Task | None = None
        self.stats = {"rounds": 0, "deferred": 0, "digests": 0, "items": 0, "failed_calls": 0}

    async def start(self) -> None:
        if self.pool is None:
            self.pool = await db.create_pool(self.url, self.cfg.database.schema, min_size=1, max_size=2)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def _loop(self) -> None:
        while True:
            try:
                busy = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler round failed; trying again")
                busy = False
            if not busy:
                await asyncio.sleep(self.cfg.scheduler.interval_s)

    async def tick(self) -> bool:
        """One round; True if it found a full batch (so the next starts at once)."""
        sc = self.cfg.scheduler
        async with self.pool.acquire() as conn:
            dues = await schedule_store.claim_due(conn, sc.batch, sc.lease_s)
        if not dues:
            return False
        n = len(self.user_shards)
        groups: dict[int, list] = {}
        for d in dues:
            groups.setdefault(shard_of(d.user_id, n), []).append(d)
        replies = await asyncio.gather(
            *(self.user_shards[s].release.remote(wire.encode(g)) for s, g in groups.items()),
            return_exceptions=True)
        self.stats["rounds"] += 1
        for r in replies:
            if isinstance(r, BaseException):
                self.stats["failed_calls"] += 1
                log.warning("release failed (claims come back after their lease): %r", r)
                continue
            for k in ("deferred", "digests", "items"):
                self.stats[k] += r.get(k, 0)
        return len(dues) >= sc.batch

    async def info(self) -> dict:
        return dict(self.stats)
