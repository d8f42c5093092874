"""A failing provider opens its breaker and recovers; a killed engine loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

import asyncpg
import msgspec
import pytest

from engine.runtime import Engine, kill_recorded
from infra import streams
from sandbox import WebhookSink
from tests.integration.helpers import drop_schema, engine_config, wait_rows

pytestmark = pytest.mark.integration


def hook_note(i: int) -> dict:
    return {"id": str(uuid.uuid4()), "user_id": f"r{i}", "category": "job_alerts", "channels": ["webhook"],
            "content": {"text": f"n{i}"}}


async def publish(engine_cfg, js, notes: list[dict]) -> None:
    for n in notes:
        await js.publish(streams.notify_subject(engine_cfg.nats, n["category"]), msgspec.json.encode(n))


async def test_breaker_opens_on_failing_provider_and_what_failed_is_delivered_after(nats_url, database_url, redis_url, ray_address,
                                                               tmp_path):
    hook = WebhookSink("test-secret", port=0)
    await hook.start()
    cfg = engine_config(nats_url, database_url, str(tmp_path), webhook_url=hook.url, channels=("webhook",),
                        redis_url=redis_url)
    import msgspec as m
    provider = m.structs.replace(cfg.channels["webhook"].providers[0], max_attempts=1, breaker_failures=3,
                                 breaker_recovery_s=1.0, concurrency=1)
    cfg = m.structs.replace(cfg, channels={"webhook": m.structs.replace(cfg.channels["webhook"], providers=[provider])})
    engine = await Engine(cfg).start()
    try:
        hook.fail_status = 503
        failing = [hook_note(i) for i in range(10)]
        await publish(cfg, engine.js, failing)
        ids = [n["id"] for n in failing]
        assert await wait_rows(engine.pool, ids, 10) == 10
        rows = await engine.pool.fetch("SELECT status, reason, attempts FROM delivery_tracking "
                                       "WHERE notification_id = ANY($1::uuid[])", ids)
        reasons = sorted(r["reason"] for r in rows)
        # held to be tried again, not failed: the provider may come back
        assert all(r["status"] == "deferred" for r in rows), rows
        # three real failures open the breaker; the rest never reach the provider
        assert reasons.count("retry.provider_error") == 3, reasons
        assert reasons.count("retry.circuit_open") == 7, reasons
        assert hook.failed == 3

        hook.fail_status = None
        await asyncio.sleep(1.2)  # the breaker's recovery time; the next call is the probe
        healthy = [hook_note(i) for i in range(10, 15)]
        await publish(cfg, engine.js, healthy)
        assert await wait_rows(engine.pool, [n["id"] for n in healthy], 5) == 5
        # the held ones come back (after 5 s or so) and go out, each once
        everything = ids + [n["id"] for n in healthy]
        for _ in range(300):
            statuses = await engine.pool.fetch("SELECT status FROM delivery_tracking "
                                               "WHERE notification_id = ANY($1::uuid[])", everything)
            if [r["status"] for r in statuses] == ["sent"] * 15:
                break
            await asyncio.sleep(0.1)
        assert sorted(r["status"] for r in statuses) == ["sent"] * 15, statuses
        assert all(hook.accepted[nid] == 1 for nid in everything), dict(hook.accepted)
        health = await engine.actors.channel_shards["webhook"][0].health.remote()
        assert health["providers"]["webhook-local"]["state"] == "closed"
    finally:
        await engine.stop()
        await hook.stop()
        await drop_schema(database_url, cfg.database.schema)


def engine_process(config_path: str, ray_address: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": ray_address, "TIDINGS_ENV": "development"}
    return subprocess.Popen([sys.executable, "-m", "engine.cli", "--config", config_path, "up"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_config(path, cfg, hook_url: str) -> None:
    n, d = cfg.nats, cfg.database
    path.write_text(f"""
[engine]
home = "{cfg.engine.home}"
user_shards = 2
ingest_batch = 250
[nats]
url = "{n.url}"
prefix = "{n.prefix}"
stream = "{n.stream}"
consumer = "{n.consumer}"
ack_wait_s = 5
[database]
url = "{d.url}"
schema = "{d.schema}"
[redis]
url = "{cfg.redis.url}"
[http]
port = 0
[channels.email]
enabled = false
[channels.webhook.providers.settings]
""")
    # the provider list is replaced whole: give the webhook provider the sink's URL
    path.write_text(path.read_text().replace("[channels.webhook.providers.settings]\n", "") + f"""
[[channels.webhook.providers]]
name = "webhook-local"
type = "webhook"
concurrency = 32
[channels.webhook.providers.settings]
url = "{hook_url}"
secret = "test-secret"
""")


async def count_rows(url: str, schema: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        row = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT (notification_id, channel)) AS d "
                                  "FROM delivery_tracking")
        return row["n"], row["d"]
    except asyncpg.UndefinedTableError:
        return 0, 0
    finally:
        await conn.close()


async def test_sigkill_mid_run_loses_nothing(nats_url, database_url, redis_url, ray_address, tmp_path):
    """5,000 messages; the engine is SIGKILLed part-way, started again; every
    message ends with exactly one terminal row."""
    import nats

    hook = WebhookSink("test-secret", port=0)
    await hook.start()
    # the session's Redis: an engine killed with SIGKILL cannot stop an embedded one
    cfg = engine_config(nats_url, database_url, str(tmp_path), webhook_url=hook.url, channels=("webhook",),
                        redis_url=redis_url)
    config_path = tmp_path / "engine.toml"
    write_config(config_path, cfg, hook.url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await streams.ensure_streams(js, cfg.nats)
    notes = [hook_note(i) for i in range(5000)]
    await publish(cfg, js, notes)

    first = engine_process(str(config_path), ray_address)
    try:
        deadline = time.monotonic() + 120
        while (await count_rows(database_url, cfg.database.schema))[0] < 500:
            assert first.poll() is None, "engine exited early"
            assert time.monotonic() < deadline, "engine made no progress"
            await asyncio.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait()
        # its actors too, as a crash of the whole engine (they are detached: on a shared
        # Ray they would outlive it, and the restarted engine would end them later)
        assert await kill_recorded(database_url, cfg) > 0
        killed_at, _ = await count_rows(database_url, cfg.database.schema)
        assert killed_at < 5000, "the kill came too late to test anything"

        second = engine_process(str(config_path), ray_address)
        try:
            deadline = time.monotonic() + 180
            while (await count_rows(database_url, cfg.database.schema))[0] < 5000:
                assert second.poll() is None, "restarted engine exited"
                assert time.monotonic() < deadline, "not every message was recorded"
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # anything extra would show up now
            total, distinct = await count_rows(database_url, cfg.database.schema)
            assert total == distinct == 5000
            conn = await asyncpg.connect(database_url, server_settings={"search_path": cfg.database.schema})
            try:
                got = {r[0] for r in await conn.fetch("SELECT notification_id::text FROM delivery_tracking")}
                statuses = {r[0] for r in await conn.fetch("SELECT DISTINCT status FROM delivery_tracking")}
            finally:
                await conn.close()
            assert got == {n["id"] for n in notes}
            assert statuses == {"sent"}
            # at-least-once toward the provider: a kill between the provider call and
            # the commit means that one is sent again, and the receiver sees the same
            # delivery id (Tidings-Delivery-Id) and can drop it
            assert hook.received - hook.duplicates == 5000
        finally:
            second.send_signal(signal.SIGTERM)
            try:
                second.wait(30)
            except subprocess.TimeoutExpired:
                second.kill()
    finally:
        if first.poll() is None:
            first.kill()
        await nc.drain()
        await hook.stop()
        await drop_schema(database_url, cfg.database.schema)


async def test_a_message_that_keeps_failing_is_dead_lettered_not_looped(nats_url, database_url, ray_address,
                                                                        tmp_path):
    """A provider that cannot even be built fails every delivery; after
    dead_letter_after deliveries the message goes to the DLQ and is acked."""
    cfg = engine_config(nats_url, database_url, str(tmp_path), webhook_url="http://127.0.0.1:9/hook",
                        channels=("webhook",), overrides={"nats": {"dead_letter_after": 2}})
    import msgspec as m
    broken = m.structs.replace(cfg.channels["webhook"].providers[0], settings={"url": "http://127.0.0.1:9/hook"})
    cfg = m.structs.replace(cfg, channels={"webhook": m.structs.replace(cfg.channels["webhook"], providers=[broken])})
    engine = await Engine(cfg).start()
    try:
        dlq = await engine.js.pull_subscribe(streams.dlq_subject(cfg.nats), stream=streams.dlq_stream(cfg.nats))
        note = hook_note(1)
        ack = await engine.js.publish(streams.notify_subject(cfg.nats, "job_alerts"), msgspec.json.encode(note))
        msgs = await dlq.fetch(1, timeout=30)
        assert msgs[0].headers["Tidings-Reason"] == "processing.failed"
        assert msgs[0].headers["Tidings-Stream-Seq"] == str(ack.seq)
        assert msgspec.json.decode(msgs[0].data)["id"] == note["id"]
        for _ in range(50):
            info = await engine.js.consumer_info(cfg.nats.stream, cfg.nats.consumer)
            if info.num_ack_pending == 0 and info.num_pending == 0:
                break
            await asyncio.sleep(0.1)
        assert info.num_ack_pending == 0 and info.num_pending == 0
    finally:
        await engine.stop()
        await drop_schema(database_url, cfg.database.schema)
