"""Recorder: batches outcomes into PostgreSQL and answers each caller once its
rows are committed (that answer is what lets the Ingestor ack NATS messages).

Rows are COPYed into a per-connection staging table, then moved with one
``INSERT … ON CONFLICT (notification_id, channel) DO NOTHING``: COPY's speed,
and a redelivered notification cannot make a second tracking row. One caller's
rows always commit together, so a notification's channels are never half recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import msgspec

from actors import faults, spans, worker
from actors.link import LinkServed
from actors.metrics import Meter, committed as measured, decode_bounds
from actors.stalls import StallWatch, Watched
from actors.tracing import TRACED_KEPT, stage_histogram
from infra import db, telemetry
from infra.config import DatabaseConfig, RecorderConfig
from policy import trace, wire
from policy.types import URGENT, Outcome
from stores import tracking

log = logging.getLogger(__name__)

# a staging row's columns and their types, in delivery_tracking's order (``row`` makes one)
STAGED = (("notification_id", "uuid"), ("user_id", "text"), ("channel", "text"), ("category", "text"),
          ("priority", "text"), ("status", "text"), ("reason", "text"), ("provider", "text"),
          ("provider_message_id", "text"), ("attempts", "integer"), ("timeline", "text"), ("errors", "text"),
          ("accepted_at", "float8"), ("completed_at", "float8"), ("parent_id", "uuid"))
STAGE_COLUMNS = tuple(name for name, _ in STAGED)
CREATE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS _tracking_stage ({", ".join(f"{n} {t}" for n, t in STAGED)}) ON COMMIT DELETE ROWS
"""
# staged rows into the table: the JSON texts as jsonb, the epoch seconds as timestamps
_AS_STORED = {"timeline": "timeline::jsonb", "errors": "errors::jsonb", "accepted_at": "to_timestamp(accepted_at)",
              "completed_at": "to_timestamp(completed_at)"}
_INSERT = f"""
INSERT INTO delivery_tracking ({", ".join(STAGE_COLUMNS)})
SELECT {", ".join(_AS_STORED.get(c, c) for c in STAGE_COLUMNS)}
FROM {{source}}
ON CONFLICT (notification_id, channel) DO NOTHING
"""
MOVE_STAGE = _INSERT.format(source="_tracking_stage")
# A flush of few rows in one statement (its own transaction, one round trip):
# BEGIN, COPY, INSERT and COMMIT were four, a third of the commit segment at low load
SMALL_FLUSH = 64
INSERT_SMALL = _INSERT.format(source="unnest({}) AS s({})".format(
    ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(STAGED, 1)), ", ".join(STAGE_COLUMNS)))


def row(o: Outcome) -> tuple:
    """One staging row (texts made printable by ``tracking.columns``)."""
    reason, provider, message_id, timeline, errors = tracking.columns(o)
    return (o.notification_id, o.user_id, o.channel, o.category, o.priority, o.status, reason,
            provider, message_id, len(o.attempts), timeline, errors, o.accepted_at or None, o.completed_at,
            o.parent_id)


async def _init_connection(conn) -> None:
    await conn.execute(CREATE_STAGE)


def _settle(p: _Pending, error: BaseException | None, committed: float = 0.0) -> None:
    """Answer one caller: committed (when), or the error (then nothing of it is acked).
    Its spans are made after the answer, on the next turn of the loop: measuring
    never holds a caller back."""
    if p.spanned:
        ended = committed or time.time()
        spanned, p.spanned = p.spanned, None  # once: a batch that failed together is written again caller by caller
        asyncio.get_running_loop().call_soon(_spans, spanned, p.arrived, error, ended)
    if p.future.done():
        return
    if error is None:
        p.future.set_result(committed)
    else:
        p.future.set_exception(error)


def _spans(spanned: list[Outcome], arrived: float, error: BaseException | None, ended: float) -> None:
    """A span per traced outcome from its arrival to the commit (or the failure),
    child of the span that sent it (``Outcome.traceparent``)."""
    for o in spanned:
        span = spans.start("recorder.commit", o.traceparent, at=arrived, attributes={
            "tidings.notification_id": o.notification_id, "tidings.channel": o.channel, "tidings.status": o.status})
        if span is not None:
            spans.end(span, ended, error)


class _Pending:
    __slots__ = ("rows", "future", "traced", "outcomes", "spanned", "arrived")

    def __init__(self, rows: list[tuple], future: asyncio.Future, traced: list[Outcome], outcomes: list[Outcome],
                 spanned: list[Outcome] | None = None, arrived: float = 0.0):
        self.rows, self.future, self.traced, self.outcomes = rows, future, traced, outcomes
        self.spanned, self.arrived = spanned, arrived  # outcomes whose trace is sampled, and when they came


class Recorder(Watched, LinkServed):
    LINKED = frozenset({"record"})  # the UserShards' outcomes (actors/link.py)

    def __init__(self, database_url: str, schema: str, cfg: bytes, pool_max: int = 4, limits: bytes | None = None,
                 gc_young: int = 0, labels: bytes | None = None, observe: bytes | None = None, niceness: int = 0):
        telemetry.setup_actor(observe, "recorder")
        worker.yield_cpu(niceness)  # ray.bulk_niceness: it commits after the provider call
        self.url, self.schema = database_url, schema
        self.cfg = msgspec.msgpack.decode(cfg, type=RecorderConfig)
        self.limits = msgspec.msgpack.decode(limits, type=DatabaseConfig) if limits else None  # None: the defaults
        self.pool_max = pool_max
        self.pool = None
        self.pending: list[_Pending] = []
        self.pending_rows = 0
        self.wake: asyncio.Event | None = None
        self.full: asyncio.Event | None = None
        self.flushed: asyncio.Event | None = None  # a flush ended (set by each; cleared by whoever waits on it)
        self.bounds = decode_bounds(labels)  # label values (actors/metrics.py): engine/runtime.py passes them
        self.meter = Meter()
        self.rows_written = 0
        self.flushes = 0
        self.small_flushes = 0  # of them, one statement (SMALL_FLUSH)
        self.flushing = 0  # flushes running now
        self._start_lock = asyncio.Lock()
        self._stage_metric = None
        self.traced: deque[dict[str, float]] = deque(maxlen=TRACED_KEPT)
        self.traced_urgent: deque[dict[str, float]] = deque(maxlen=TRACED_KEPT)  # high and critical, also apart
        self.watch = StallWatch(gc_young)

    async def _ready(self) -> None:
        if self.pool is not None:
            return
        async with self._start_lock:
            if self.pool is not None:
                return
            self.wake, self.full, self.flushed = asyncio.Event(), asyncio.Event(), asyncio.Event()
            self.slots = asyncio.Semaphore(self.pool_max)
            # session_free: a flush leaves nothing in the session (the stage empties at commit)
            pool = await db.create_pool(self.url, self.schema, min_size=1, max_size=self.pool_max,
                                        init=_init_connection, limits=self.limits, session_free=True)
            asyncio.get_running_loop().create_task(self._flusher())
            self.pool = pool  # last: it is what marks the actor ready
            self.watch.start()  # set up: what it holds now is frozen (actors/stalls.py)

    async def record(self, payload: bytes) -> float:
        """Record a batch of Outcomes; returns once they are committed, with the
        time of the commit (the start of the ``ack`` segment, ``policy.trace``)."""
        await self._ready()
        outcomes = wire.decode(payload, list[Outcome])
        if not outcomes:
            return time.time()
        fut = asyncio.get_running_loop().create_future()
        traced = [o for o in outcomes if o.stages is not None]
        if traced:
            arrived = time.time()
            for o in traced:
                o.stages["record_in"] = arrived
        spanned = [o for o in outcomes if o.traceparent is not None] if telemetry.tracer() is not None else None
        self.pending.append(_Pending([row(o) for o in outcomes], fut, traced, outcomes, spanned or None, time.time()))
        self.pending_rows += len(outcomes)
        self.wake.set()
        if self.pending_rows >= self.cfg.flush_rows:
            self.full.set()
        return await fut

    async def _flusher(self) -> None:
        while True:
            try:
                await self._flush_next()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any one mistake, or every caller would hang
                log.exception("recorder flusher")
                await asyncio.sleep(0.1)

    async def _flush_next(self) -> None:
        """Batches that follow the load: with no flush running, rows go at once
        (an idle engine makes no one wait); while another flush runs, they wait for
        company until a running flush ends, ``flush_rows`` wait or the oldest waited
        ``linger_ms``, whichever is first, so under a backlog the flushes stay
        large; and while every connection is busy they gather anyway. Waiting for
        the linger alone made a row that came during a 2 ms flush wait the whole
        20 ms at low load: the commit segment's p99 (bench/RESULTS.md)."""
        linger = self.cfg.linger_ms / 1000
        await self.wake.wait()
        await self.slots.acquire()
        if self.flushing and self.pending_rows < self.cfg.flush_rows and linger > 0:
            self.flushed.clear()
            waits = [asyncio.ensure_future(self.full.wait()), asyncio.ensure_future(self.flushed.wait())]
            try:
                await asyncio.wait(waits, timeout=linger, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        batch, self.pending, self.pending_rows = self.pending, [], 0
        self.wake.clear()
        self.full.clear()
        asyncio.get_running_loop().create_task(self._flush(batch))

    async def _flush(self, batch: list[_Pending]) -> None:
        self.flushing += 1
        try:
            await self._write_all(batch)
        finally:
            self.flushing -= 1
            self.slots.release()
            self.flushed.set()

    async def _write_all(self, batch: list[_Pending]) -> None:
        """All callers in one transaction; if that fails, each caller on its own,
        so rows one caller got wrong do not fail (and re-send) everybody else's.
        When the database itself failed (``faults.transient``), all are answered
        with the error at once: each tries again after its backoff."""
        try:
            await self._write([r for p in batch for r in p.rows])
        except Exception as e:
            if faults.transient(e):  # a traceback per flush would flood the log while the database is away
                log.warning("tracking flush of %d rows failed: %s", sum(len(p.rows) for p in batch),
                            type(e).__name__)
            elif len(batch) > 1:
                for p in batch:
                    await self._write_all([p])
                return
            else:
                log.exception("tracking flush of %d rows failed", len(batch[0].rows))
            for p in batch:
                _settle(p, e)
            return
        committed = time.time()
        for p in batch:
            _settle(p, None, committed)
        # after every caller is answered: measuring never holds one back
        asyncio.get_running_loop().call_soon(measured, self.meter, self.bounds, [p.outcomes for p in batch], committed)
        traced = [o for p in batch for o in p.traced]
        if traced:  # after every caller is answered: measuring never holds one back
            asyncio.get_running_loop().call_soon(self._traced, traced, committed)

    def _traced(self, outcomes: list[Outcome], committed: float) -> None:
        try:
            if self._stage_metric is None:
                self._stage_metric = stage_histogram()
            seen: set[str] = set()
            for o in outcomes:
                seconds = trace.segments(o.stages or {}, o.accepted_at, o.attempts, committed)
                if o.notification_id in seen:  # a notification's second channel: its common part counted once
                    for name in trace.BEFORE_FANOUT:
                        seconds.pop(name, None)
                seen.add(o.notification_id)
                for stage, s in seconds.items():
                    self._stage_metric.observe(s, tags={"stage": stage})
                self.traced.append(seconds)
                if o.priority in URGENT:
                    self.traced_urgent.append(seconds)
        except Exception:  # a measurement must never fail a record
            log.exception("stage tracing failed")

    async def stage_samples(self, urgent: bool = False) -> list[dict[str, float]]:
        """The segments of the traced outcomes committed (``policy.trace``), latest
        last; ``urgent``: of the high and critical ones only."""
        return list(self.traced_urgent if urgent else self.traced)

    async def _write(self, rows: list[tuple]) -> None:
        started = time.perf_counter()
        if 0 < len(rows) <= SMALL_FLUSH:
            async with self.pool.acquire() as conn:
                await conn.execute(INSERT_SMALL, *(list(column) for column in zip(*rows, strict=True)))
            self.small_flushes += 1
        else:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.copy_records_to_table("_tracking_stage", records=rows, columns=STAGE_COLUMNS)
                await conn.execute(MOVE_STAGE)
        self.rows_written += len(rows)
        self.flushes += 1
        log.debug("flushed %d rows in %.1f ms", len(rows), (time.perf_counter() - started) * 1000)

    async def warm(self) -> None:
        """Set up now (the pool, the flusher) rather than on the first record."""
        await self._ready()

    async def stats(self) -> dict:
        return {"rows_written": self.rows_written, "flushes": self.flushes, "small_flushes": self.small_flushes,
                "pending": self.pending_rows}

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        await telemetry.stop_flush()  # the spans of the last batches, before the kill (bounded)
