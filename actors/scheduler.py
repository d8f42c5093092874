"""Scheduler: brings held notifications back when they are due.

Every ``scheduler.interval_s`` it claims due deferred rows and due digest
buckets (``FOR UPDATE SKIP LOCKED`` with a lease, so several Schedulers, or one
restarted, never hand out the same row twice while a lease runs) and sends them
to their owning UserShard in one call per shard. The shard decides, delivers,
and marks them done in the same transaction as their final tracking rows; a
claim whose shard failed comes back when its lease ends.

Every ``retention.interval_s`` (the first time one interval after start) it also
deletes rows past their keep time (stores/retention.py) on a connection of its
own, whose advisory lock lets one engine's Scheduler do it at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from ray.util import metrics

from actors import faults
from actors.handles import resolve
from actors.metrics import Meter, Ticker
from infra import db, telemetry
from infra.config import Config, decode as decode_config
from policy import wire
from policy.sharding import shard_of
from stores import retention, schedules as schedule_store

log = logging.getLogger(__name__)

BACKLOG_EVERY_S = 30.0  # how often the scheduled backlog is counted (a scan of the pending rows)


class Scheduler:
    def __init__(self, cfg: bytes, database_url: str, user_shards: list):
        self.cfg: Config = decode_config(cfg)
        telemetry.setup_actor(telemetry.observe(self.cfg), "scheduler")  # its log lines' format and level
        self.url = database_url
        self.user_shards = resolve(user_shards)  # names from engine/runtime.py
        self.pool = None
        self.task: asyncio.Task | None = None
        self.retention_task: asyncio.Task | None = None
        self.stats = {"rounds": 0, "deferred": 0, "digests": 0, "items": 0, "failed_calls": 0,
                      "retention_runs": 0, "retention_skipped": 0}
        self.deleted: Counter[str] = Counter()  # rows retention deleted, per kind
        self._deleted_metric = None
        self.last_round_at = 0.0
        self.meter = Meter()
        self.ticker = Ticker(self._sample)
        self._backlog: tuple | None = None  # the last backlog count, and when it was taken
        self._backlog_at = 0.0

    async def start(self) -> None:
        if self.pool is None:
            self.pool = await db.create_pool(self.url, self.cfg.database.schema, min_size=1, max_size=2,
                                             limits=self.cfg.database)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop())
        self.ticker.start()
        if self.retention_task is None and self.cfg.retention.interval_s > 0:
            self.retention_task = asyncio.get_running_loop().create_task(self._retention_loop())

    async def stop(self) -> None:
        self.ticker.stop()
        for task in (self.task, self.retention_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.task = self.retention_task = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def _loop(self) -> None:
        while True:
            self.last_round_at = time.time()  # /readyz: a loop that stopped turning is not ready
            try:
                busy = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if faults.transient(e):  # the database is away: one line per round, not a traceback
                    log.warning("scheduler round failed (%s); trying again", type(e).__name__)
                else:
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

    async def _sample(self) -> None:
        """The held rows, due and waiting (``tidings_scheduled_backlog``), and the
        oldest due one's lateness. Counted every ``BACKLOG_EVERY_S`` (a count over
        every pending row: millions on a night of quiet hours) and set again each
        tick in between (Ray drops a gauge not set for a few export intervals)."""
        if self.pool is None:
            return
        if self._backlog is None or time.monotonic() - self._backlog_at >= BACKLOG_EVERY_S:
            async with self.pool.acquire() as conn:
                self._backlog = await schedule_store.backlog(conn)
            self._backlog_at = time.monotonic()
        counts, overdue = self._backlog
        for (kind, state), n in counts.items():
            self.meter.set("tidings_scheduled_backlog", n, {"kind": kind, "state": state})
        self.meter.set("tidings_scheduled_overdue_seconds", overdue)

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.retention.interval_s)
            try:
                await self.retain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention run failed; trying again next interval")

    async def retain(self) -> dict[str, int] | None:
        """One retention run; the rows deleted per kind, None if another run held the lock."""
        conn = await db.connect(self.url, self.cfg.database, self.cfg.database.schema, app="tidings-retention")
        try:
            counts = await retention.run(conn, self.cfg.retention)
        except BaseException:
            conn.terminate()  # the advisory lock ends with the session
            raise
        await conn.close()
        if counts is None:
            self.stats["retention_skipped"] += 1
            return None
        self.stats["retention_runs"] += 1
        if self._deleted_metric is None:
            self._deleted_metric = metrics.Counter(
                "tidings_retention_deleted", description="Rows deleted by retention", tag_keys=("kind",))
        for kind, n in counts.items():
            if n:
                self.deleted[kind] += n
                self._deleted_metric.inc(n, tags={"kind": kind})
        if any(counts.values()):
            log.info("retention deleted %s", ", ".join(f"{k}: {n}" for k, n in counts.items() if n))
        return counts

    async def info(self) -> dict:
        running = self.task is not None and not self.task.done()
        return {**self.stats, "running": running, "last_round_at": self.last_round_at,
                "retention_deleted": dict(self.deleted)}
