"""The plain pipeline: the engine's work in one asyncio process, with no actors,
as the latency issue's yardstick for what this machine allows (issue 18): a
JetStream pull in batches, a preference lookup, one signed POST per notification
to the loopback webhook sink (in its own process, as in ``bench e2e``), a COPY of
the tracking rows through the Recorder's staging path, and the ack after the
commit. It publishes no ``accepted`` or status events (the tracking table's
outbox trigger still runs) and keeps no journal: a reference, not an engine.

    python -m bench.plain --n 30000 --rate 650 --paced-n 5000 [--json F]

A backlog of ``--n`` is published first and drained (notifications/s); then
``--paced-n`` are published at ``--rate``, each at its own time, by a child
process, and each one's publish → POST started and publish → committed is
reported (p50/p95/p99 ms), with this process's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
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

from actors.recorder import MOVE_STAGE, STAGE_COLUMNS, _init_connection, row
from bench.e2e import until_due
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


def body(i: int) -> bytes:
    return ENCODER.encode({"id": str(uuid.uuid4()), "user_id": f"p{i % USERS}", "category": "job_alerts",
                           "channels": ["webhook"], "accepted_at": time.time(),
                           "content": {"subject": f"Job {i}", "text": "A new job matches your search."}})


def percentiles(values: list[float]) -> dict:
    v = sorted(values)
    if not v:
        return {}
    at = lambda q: round(v[min(len(v) - 1, int(q * len(v)))] * 1000, 2)  # noqa: E731
    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": round(v[-1] * 1000, 2)}


class Pipeline:
    def __init__(self, sub, pool, session: aiohttp.ClientSession, url: str, batch: int, inflight: int):
        self.sub, self.pool, self.session, self.url = sub, pool, session, url
        self.batch, self.slots = batch, asyncio.Semaphore(inflight)
        self.done = 0
        self.sent: list[float] = []  # publish → POST started, seconds
        self.committed: list[float] = []  # publish → committed
        self.tasks: set[asyncio.Task] = set()
        self.error: BaseException | None = None

    async def run(self, n: int) -> None:
        """Consume until ``n`` are committed and acked."""
        while self.done < n:
            if self.error is not None:
                raise RuntimeError(f"a batch failed: {self.error!r}")
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

    def _finished(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.slots.release()
        if not task.cancelled() and task.exception() is not None:
            self.error = task.exception()

    async def _batch(self, msgs: list) -> None:
        reqs = [DECODER.decode(m.data) for m in msgs]
        outcomes = await asyncio.gather(*(self._deliver(r) for r in reqs))
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table("_tracking_stage", records=[row(o) for o in outcomes],
                                             columns=STAGE_COLUMNS)
            await conn.execute(MOVE_STAGE)
        now = time.time()
        self.committed.extend(now - r.accepted_at for r in reqs)
        for m in msgs:
            await m.ack()
        self.done += len(msgs)

    async def _deliver(self, req: NotificationRequest) -> Outcome:
        if not PREFS.get(req.user_id, {}).get("webhook", True):
            return Outcome(req.id, req.user_id, "webhook", req.category, "suppressed", "pref.channel_off",
                           req.accepted_at, time.time())
        started = time.time()
        self.sent.append(started - req.accepted_at)
        payload = ENCODER.encode({"id": req.id, "user_id": req.user_id, "category": req.category,
                                  "channel": "webhook", "content": req.content})
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(SECRET, payload, int(started)),
                   ID_HEADER: f"{req.id}:webhook"}
        async with self.session.post(self.url, data=payload, headers=headers) as r:
            await r.read()
            ok = r.status == 200
        ended = time.time()
        return Outcome(req.id, req.user_id, "webhook", req.category, "sent" if ok else "failed", "ok" if ok
                       else f"http.{r.status}", req.accepted_at, ended, provider="http-sink",
                       attempts=[Attempt("http-sink", ok, started, (ended - started) * 1000)])


def _publish_paced(url: str, subject: str, n: int, rate: float) -> None:
    """A child process: publish ``n`` at ``rate``, each at its own time."""
    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        pending = []
        started = time.perf_counter()
        for i in range(n):
            await until_due(started + i / rate)
            pending.append(await js.publish_async(subject, body(i)))
        await asyncio.gather(*pending)
        await nc.drain()
    uvloop.run(go())


async def run(args) -> dict:
    sink = SinkProcess("webhook", secret=SECRET).start()
    schema = f"plain_{uuid.uuid4().hex[:8]}"
    stream = f"PLAIN{uuid.uuid4().hex[:8]}"
    subject = f"{stream}.notify.job_alerts"
    await migrations.migrate_url(args.database_url, schema)
    pool = await db.create_pool(args.database_url, schema, min_size=1, max_size=args.inflight,
                                init=_init_connection, session_free=True)
    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    out: dict = {"n": args.n, "batch": args.batch, "inflight": args.inflight}
    try:
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        sub = await js.pull_subscribe(f"{stream}.>", durable="plain", stream=stream)
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector) as session:
            pending = [await js.publish_async(subject, body(i)) for i in range(args.n)]
            await asyncio.gather(*pending)
            pipe = Pipeline(sub, pool, session, sink.url, args.batch, args.inflight)
            started, cpu = time.perf_counter(), time.process_time()
            await pipe.run(args.n)
            wall = time.perf_counter() - started
            out["backlog_per_s"] = round(args.n / wall)
            out["backlog_cores"] = round((time.process_time() - cpu) / wall, 2)
            if args.paced_n:
                pipe = Pipeline(sub, pool, session, sink.url, args.batch, args.inflight)
                child = multiprocessing.get_context("spawn").Process(
                    target=_publish_paced, args=(args.nats_url, subject, args.paced_n, args.rate))
                started, cpu = time.perf_counter(), time.process_time()
                child.start()
                await pipe.run(args.paced_n)
                wall = time.perf_counter() - started
                await asyncio.to_thread(child.join)
                out["paced"] = {"rate": args.rate, "n": args.paced_n, "cores": round((time.process_time() - cpu) / wall, 2),
                                "committed": percentiles(pipe.committed), "post_started": percentiles(pipe.sent)}
        out["sink"] = sink.stop()
    finally:
        sink.stop()  # a second stop does nothing
        try:
            await js.delete_stream(stream)
        except Exception:  # noqa: BLE001 - clean-up of a stream that may not exist
            pass
        await nc.drain()
        await pool.close()
        conn = await asyncpg.connect(args.database_url)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
    return out


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.plain", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=30_000, help="the backlog to drain")
    p.add_argument("--rate", type=float, default=650.0, help="notifications/s of the paced run")
    p.add_argument("--paced-n", type=int, default=5000, help="0: no paced run")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--inflight", type=int, default=4)
    p.add_argument("--nats-url", default=os.environ.get("TIDINGS_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--database-url", default=os.environ.get("TIDINGS_DATABASE_URL", ""))
    p.add_argument("--json", help="write the result here as well")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if not args.database_url:
        print("error: set TIDINGS_DATABASE_URL or --database-url", file=sys.stderr)
        return 2
    out = uvloop.run(run(args))
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
