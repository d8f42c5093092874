"""Stage ceilings: each stage of the pipeline alone, with the same payloads the
end-to-end benchmark uses, so end to end can be read as a ratio of the slowest.

    python -m bench.ceilings --n 20000

* ``http_sink``: a bare aiohttp client posting signed webhook bodies to the loopback
  sink (in its own process), ``--concurrency`` requests in flight.
* ``jetstream``: publish N messages with nats-py's publish_async and N with
  ``infra.streams.Publisher`` (rate and CPU per message each), then pull-consume
  and ack them, from Python.
* ``copy``: asyncpg COPY of N tracking rows through the Recorder's staging path.
* ``ray``: batches of DeliveryTasks (MessagePack, as the engine sends them) to an
  async actor that decodes and answers one Outcome per task.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid

import aiohttp
import asyncpg
import msgspec
import nats
import uvloop

from engine import migrations
from infra import db, streams
from providers.webhook.signing import ID_HEADER, SIGNATURE_HEADER, sign
from sandbox import SinkProcess

SECRET = "bench-secret"
BODY = {"user_id": "b1", "category": "job_alerts", "channel": "webhook", "priority": "normal",
        "content": {"subject": "Job 1", "text": "A new job matches your search.", "html": None, "data": {}},
        "metadata": {}, "accepted_at": 0.0}


async def http_sink(n: int, concurrency: int) -> float:
    sink = SinkProcess("webhook", secret=SECRET).start()
    url = sink.url
    enc = msgspec.json.Encoder()
    gate = asyncio.Semaphore(concurrency)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
            async def one(i: int) -> None:
                nid = str(uuid.uuid4())
                body = enc.encode({"id": nid, **BODY})
                headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(SECRET, body, int(time.time())),
                           ID_HEADER: f"{nid}:webhook"}
                async with gate, s.post(url, data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200
            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return n / (time.perf_counter() - started)
    finally:
        sink.stop()


async def smtp_sink(n: int, connections: int) -> float:
    """A bare aiosmtplib client (``connections`` persistent connections) sending the
    same ready-made message to the loopback SMTP sink."""
    import aiosmtplib

    sink = SinkProcess("smtp").start()
    raw = (b"From: bench@tidings.local\r\nTo: b1@bench.test\r\nSubject: Job 1\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nA new job matches your search.\r\n")
    try:
        clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port, local_hostname="bench.test")
                   for _ in range(connections)]
        await asyncio.gather(*(c.connect() for c in clients))
        per = n // connections

        async def pump(c) -> None:
            for _ in range(per):
                await c.sendmail("bench@tidings.local", ["b1@bench.test"], raw)

        started = time.perf_counter()
        await asyncio.gather(*(pump(c) for c in clients))
        elapsed = time.perf_counter() - started
        await asyncio.gather(*(c.quit() for c in clients), return_exceptions=True)
        return per * connections / elapsed
    finally:
        sink.stop()


async def jetstream(url: str, n: int, batch: int) -> dict:
    nc = await nats.connect(url)
    js = nc.jetstream()
    name = f"CEIL{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=name, subjects=[f"{name}.>"])
    body = msgspec.json.encode({"id": str(uuid.uuid4()), **BODY})
    publisher = streams.Publisher(nc)
    out: dict = {}
    try:
        # both ways, a batch at a time with a Nats-Msg-Id each (as the status events' relay
        # publishes): wall rate and this process's CPU per message
        for way in ("publish_async", "publisher"):
            started, cpu = time.perf_counter(), time.process_time()
            for i in range(0, n, batch):
                headers = [{"Nats-Msg-Id": str(uuid.uuid4())} for _ in range(min(batch, n - i))]
                if way == "publisher":
                    await publisher.publish([(f"{name}.x", body, h) for h in headers], 30)
                else:
                    await asyncio.gather(*[await js.publish_async(f"{name}.x", body, headers=h) for h in headers])
            out[f"{way}_per_s"] = round(n / (time.perf_counter() - started))
            out[f"{way}_cpu_us"] = round((time.process_time() - cpu) / n * 1e6, 1)
        sub = await js.pull_subscribe(f"{name}.>", durable="c", stream=name)
        got = 0
        started = time.perf_counter()
        while got < 2 * n:
            msgs = await sub.fetch(batch, timeout=5)
            for m in msgs:
                _ = m.metadata
                await m.ack()
            got += len(msgs)
        consume = 2 * n / (time.perf_counter() - started)
        return {**out, "publish_per_s": out["publish_async_per_s"], "consume_ack_per_s": round(consume)}
    finally:
        await js.delete_stream(name)
        await nc.drain()


async def copy(url: str, n: int) -> float:
    from actors.recorder import MOVE_STAGE, STAGE_COLUMNS, _init_connection, row
    from policy.types import Attempt, Outcome

    schema = f"ceil_{uuid.uuid4().hex[:8]}"
    await migrations.migrate_url(url, schema)
    pool = await db.create_pool(url, schema, min_size=1, max_size=2, init=_init_connection)
    now = time.time()
    # the rows the Recorder writes for sent webhooks, made by its own row()
    rows = [row(Outcome(str(uuid.uuid4()), f"b{i}", "webhook", "job_alerts", "sent", "ok", now, now,
                        provider="http-sink", attempts=[Attempt("http-sink", True, now, 1.2)]))
            for i in range(n)]
    try:
        started = time.perf_counter()
        for i in range(0, n, 5000):
            async with pool.acquire() as conn, conn.transaction():
                await conn.copy_records_to_table("_tracking_stage", records=rows[i:i + 5000], columns=STAGE_COLUMNS)
                await conn.execute(MOVE_STAGE)
        return n / (time.perf_counter() - started)
    finally:
        await pool.close()
        conn = await asyncpg.connect(url)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


class Echo:
    """An async actor that does what a ChannelShard does minus the provider call."""

    async def deliver(self, payload: bytes) -> bytes:
        from policy import wire
        from policy.types import DeliveryTask, Outcome

        tasks = wire.decode(payload, list[DeliveryTask])
        return wire.encode([Outcome(t.notification_id, t.user_id, t.channel, t.category, "sent", "ok",
                                    t.accepted_at, t.accepted_at) for t in tasks])


async def ray_batches(n: int, batch: int) -> float:
    import ray

    from policy import wire
    from policy.types import Content, DeliveryTask

    if not ray.is_initialized():
        from engine.raybox import RUNTIME_ENV, keeping_sigterm
        with keeping_sigterm():
            ray.init(include_dashboard=False, runtime_env=RUNTIME_ENV, logging_level="WARNING")
    actor = ray.remote(Echo).options(num_cpus=0).remote()
    content = Content(subject="Job 1", text="A new job matches your search.")
    tasks = [DeliveryTask(str(uuid.uuid4()), f"b{i}", "webhook", "job_alerts", "", content, "normal", 0.0, {})
             for i in range(batch)]
    payload = wire.encode(tasks)
    await actor.deliver.remote(payload)  # warm: the worker process is up
    started = time.perf_counter()
    calls = max(1, n // batch)
    for i in range(0, calls, 4):  # four batches in flight, as the UserShards keep them
        await asyncio.gather(*(actor.deliver.remote(payload) for _ in range(min(4, calls - i))))
    elapsed = time.perf_counter() - started
    ray.kill(actor)
    return calls * batch / elapsed


async def run(args) -> dict:
    out = {"n": args.n}
    out["http_sink_per_s"] = round(await http_sink(args.n, args.concurrency))
    out["smtp_sink_per_s"] = round(await smtp_sink(min(args.n, 5000), 16))
    out.update(await jetstream(args.nats_url, args.n, args.batch))
    out["copy_rows_per_s"] = round(await copy(args.database_url, args.n))
    out["ray_batch_items_per_s"] = round(await ray_batches(args.n * 5, args.batch))
    return out


def main(argv=None) -> int:
    import os
    p = argparse.ArgumentParser(prog="python -m bench.ceilings")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--nats-url", default=os.environ.get("TIDINGS_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--database-url", default=os.environ.get("TIDINGS_DATABASE_URL", ""))
    args = p.parse_args(argv)
    print(json.dumps(uvloop.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
