"""The plain pipeline: the engine's work in one asyncio process, with no actors,
as the latency issue's yardstick for what this machine allows (issue 18): a
JetStream pull in batches, a preference lookup (an in-memory dict; a tenth of the
users opted out, suppressed without a POST), one signed POST per notification to
the loopback webhook sink (in its own process, as in ``bench e2e``), a COPY of the
tracking rows (BEGIN, COPY, the Recorder's insert from its staging table, COMMIT,
whatever the batch's size: the Recorder itself sends a small flush as one
statement), and the ack after the commit. It publishes no ``accepted`` or status
events (the tracking table's outbox trigger still runs) and keeps no journal: a
reference, not an engine.

    python -m bench.plain --n 30000 --rate 650 --paced-n 5000 [--json F]

A backlog of ``--n`` is published and drained, then ``--paced-n`` are published at
``--rate``, each at its own time, by a child process. Both are measured as
``bench e2e`` measures the engine, with its SQL on the run's own tracking table:
from the JetStream publish to the end of the POST (``sent``) and to the tracking
row (``created_at``, the transaction's start), the backlog's rate over the time
from the first publish to the last row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import sys
import time
import uuid

import aiohttp
import asyncpg
import msgspec
import nats
import uvloop
from nats.js.api import AckPolicy, ConsumerConfig

from actors.recorder import MOVE_STAGE, STAGE_COLUMNS, _init_connection, row
from bench.e2e import STATS_SQL, latency, until_due
from engine import migrations
from infra import db
from policy.types import Attempt, NotificationRequest, Outcome
from providers.webhook.signing import ID_HEADER, SIGNATURE_HEADER, sign
from sandbox import SinkProcess

SECRET = "plain-secret"
USERS = 1000
PREFS = {f"p{i}": {"webhook": i % 10 != 0} for i in range(USERS)}  # a tenth opted out: suppressed, no POST
DECODER = msgspec.json.Decoder(NotificationRequest)
ENCODER = msgspec.json.Encoder()
ACK_WAIT_S = 120.0  # longer than any phase here: a message is never redelivered mid-run


def body(i: int) -> bytes:
    return ENCODER.encode({"id": str(uuid.uuid4()), "user_id": f"p{i % USERS}", "category": "job_alerts",
                           "channels": ["webhook"],
                           "content": {"subject": f"Job {i}", "text": "A new job matches your search."}})


class Pipeline:
    def __init__(self, sub, pool, session: aiohttp.ClientSession, url: str, batch: int, inflight: int):
        self.sub, self.pool, self.session, self.url = sub, pool, session, url
        self.batch, self.slots = batch, asyncio.Semaphore(inflight)
        self.done: set[str] = set()  # ids committed and acked (a redelivery counts once)
        self.tasks: set[asyncio.Task] = set()
        self.error: BaseException | None = None

    async def run(self, n: int, deadline: float, child=None) -> None:
        """Consume until ``n`` different notifications are committed and acked;
        RuntimeError past ``deadline`` (monotonic), when a batch failed, or when
        the publishing ``child`` failed."""
        try:
            while len(self.done) < n:
                if self.error is not None:
                    raise RuntimeError(f"a batch failed: {self.error!r}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out with {len(self.done)} of {n} done")
                if child is not None and child.exitcode not in (None, 0):
                    raise RuntimeError(f"the publisher failed (exit {child.exitcode})")
                await self.slots.acquire()
                try:
                    msgs = await self.sub.fetch(self.batch, timeout=0.05)
                except (TimeoutError, nats.errors.TimeoutError):
                    msgs = []
                if not msgs:
                    self.slots.release()
                    continue
                task = asyncio.get_running_loop().create_task(self._batch(msgs))
                self.tasks.add(task)
                task.add_done_callback(self._finished)
            await asyncio.gather(*self.tasks)
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def _finished(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.slots.release()
        if not task.cancelled() and task.exception() is not None:
            self.error = task.exception()

    async def _batch(self, msgs: list) -> None:
        reqs = []
        for m in msgs:
            req = DECODER.decode(m.data)
            stored = m.metadata.timestamp.timestamp()  # as the Ingestor sets it
            req.accepted_at = stored if req.accepted_at is None else min(req.accepted_at, stored)
            reqs.append(req)
        outcomes = await asyncio.gather(*(self._deliver(r) for r in reqs))
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table("_tracking_stage", records=[row(o) for o in outcomes],
                                             columns=STAGE_COLUMNS)
            await conn.execute(MOVE_STAGE)
        for m in msgs:
            await m.ack()
        self.done.update(r.id for r in reqs if r.id)

    async def _deliver(self, req: NotificationRequest) -> Outcome:
        nid = req.id or ""
        if not PREFS.get(req.user_id, {}).get("webhook", True):
            return Outcome(nid, req.user_id, "webhook", req.category, "suppressed", "pref.channel_off",
                           req.accepted_at or 0.0, time.time())
        started = time.time()
        payload = ENCODER.encode({"id": nid, "user_id": req.user_id, "category": req.category,
                                  "channel": "webhook", "content": req.content})
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(SECRET, payload, int(started)),
                   ID_HEADER: f"{nid}:webhook"}
        async with self.session.post(self.url, data=payload, headers=headers) as r:
            await r.read()
            ok = r.status == 200
        ended = time.time()
        return Outcome(nid, req.user_id, "webhook", req.category, "sent" if ok else "failed",
                       "ok" if ok else f"http.{r.status}", req.accepted_at or 0.0, ended, provider="http-sink",
                       attempts=[Attempt("http-sink", ok, started, (ended - started) * 1000)])


def _publish_paced(url: str, subject: str, n: int, rate: float, ready) -> None:
    """A child process: connect, say so (``ready``), then publish ``n`` at ``rate``,
    each at its own time."""
    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        pending = []
        ready.set()
        started = time.perf_counter()
        for i in range(n):
            await until_due(started + i / rate)
            pending.append(await js.publish_async(subject, body(i)))
        await asyncio.gather(*pending)
        await nc.drain()
    uvloop.run(go())


def figures(stats, n: int) -> dict:
    """The e2e harness's figures from its ``STATS_SQL`` row."""
    wall = float(stats["wall_s"] or 0)
    return {"rows": stats["rows"], "sent_rows": stats["sent_rows"], "per_s": round(n / wall) if wall else 0,
            **latency(stats)}


async def _phase_done(pool) -> dict:
    stats = await pool.fetchrow(STATS_SQL)
    await pool.execute("TRUNCATE delivery_tracking, status_events")  # the next phase's figures are its own
    return stats


async def run(args) -> dict:
    schema = f"plain_{uuid.uuid4().hex[:8]}"
    stream = f"PLAIN{uuid.uuid4().hex[:8]}"
    subject = f"{stream}.notify.job_alerts"
    out: dict = {"n": args.n, "batch": args.batch, "inflight": args.inflight}
    async with contextlib.AsyncExitStack() as stack:
        sink = SinkProcess("webhook", secret=SECRET).start()
        stack.callback(sink.stop)  # a second stop does nothing
        await migrations.migrate_url(args.database_url, schema)
        stack.push_async_callback(_drop_schema, args.database_url, schema)
        pool = await db.create_pool(args.database_url, schema, min_size=1, max_size=args.inflight,
                                    init=_init_connection, session_free=True)
        stack.push_async_callback(pool.close)
        nc = await nats.connect(args.nats_url)
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        stack.push_async_callback(_delete_stream, js, stream)
        # as many unacked as the batches in flight hold (the server's default is 1,000)
        sub = await js.pull_subscribe(f"{stream}.>", durable="plain", stream=stream, config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S, max_ack_pending=args.batch * args.inflight))
        session = await stack.enter_async_context(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)))

        pending = [await js.publish_async(subject, body(i)) for i in range(args.n)]
        await asyncio.gather(*pending)
        cpu = time.process_time()
        started = time.perf_counter()
        await Pipeline(sub, pool, session, sink.url, args.batch, args.inflight).run(
            args.n, time.monotonic() + args.timeout)
        cores = (time.process_time() - cpu) / (time.perf_counter() - started)
        out["backlog"] = {**figures(await _phase_done(pool), args.n), "cores": round(cores, 2)}
        if args.paced_n:
            ctx = multiprocessing.get_context("spawn")
            ready = ctx.Event()
            child = ctx.Process(target=_publish_paced, args=(args.nats_url, subject, args.paced_n, args.rate, ready))
            child.start()
            stack.callback(_end_child, child)
            if not await asyncio.to_thread(ready.wait, 60):
                raise RuntimeError("the publisher did not start")
            cpu, started = time.process_time(), time.perf_counter()
            await Pipeline(sub, pool, session, sink.url, args.batch, args.inflight).run(
                args.paced_n, time.monotonic() + args.timeout, child)
            cores = (time.process_time() - cpu) / (time.perf_counter() - started)
            await asyncio.to_thread(child.join, 30)
            out["paced"] = {"rate": args.rate, **figures(await _phase_done(pool), args.paced_n),
                            "cores": round(cores, 2), "publisher_exit": child.exitcode}
        out["sink"] = sink.stop()
    return out


def _end_child(child) -> None:
    if child.is_alive():
        child.terminate()
    child.join(5)


async def _delete_stream(js, stream: str) -> None:
    with contextlib.suppress(Exception):  # clean-up of a stream that may be gone
        await js.delete_stream(stream)


async def _drop_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.plain", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=30_000, help="the backlog to drain")
    p.add_argument("--rate", type=float, default=650.0, help="notifications/s of the paced run")
    p.add_argument("--paced-n", type=int, default=5000, help="0: no paced run")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--inflight", type=int, default=4)
    p.add_argument("--timeout", type=float, default=300.0, help="the longest each phase may take, seconds")
    p.add_argument("--nats-url", default=os.environ.get("TIDINGS_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--database-url", default=os.environ.get("TIDINGS_DATABASE_URL", ""))
    p.add_argument("--json", help="write the result here as well")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if not args.database_url:
        print("error: set TIDINGS_DATABASE_URL or --database-url", file=sys.stderr)
        return 2
    try:
        out = uvloop.run(run(args))
    except (RuntimeError, OSError, asyncpg.PostgresError, nats.errors.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
