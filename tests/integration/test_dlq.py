"""`tidings dlq`: dead letters are listed, shown and replayed through the CLI;
a replay keeps the notification's id, happens once however often it is asked
for, and is recorded with who replayed it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import msgspec
import pytest

from engine.runtime import Engine
from infra import streams
from policy.types import derive_id
from sandbox import WebhookSink
from tests.integration.helpers import drop_schema, engine_config, wait_rows
from tests.integration.test_resilience import write_config

pytestmark = pytest.mark.integration


def tidings(config_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TIDINGS_ENV": "development"}
    return subprocess.run([sys.executable, "-m", "engine.cli", "--config", str(config_path), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def until_dead_letters(engine: Engine, n: int) -> None:
    for _ in range(300):
        info = await engine.js.stream_info(streams.dlq_stream(engine.cfg.nats))
        if info.state.messages >= n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {n} dead letters")


async def test_dead_letters_are_listed_shown_and_replayed_once(nats_url, database_url, redis_url, ray_address,
                                                               tmp_path):
    hook = WebhookSink("test-secret", port=0)
    await hook.start()
    cfg = engine_config(nats_url, database_url, str(tmp_path), webhook_url=hook.url, channels=("webhook",),
                        redis_url=redis_url)
    # first an engine whose webhook provider cannot be built: every delivery fails, and dead-letters at once
    webhook = cfg.channels["webhook"]
    broken = msgspec.structs.replace(webhook.providers[0], settings={"url": "http://127.0.0.1:9/hook"})
    failing = msgspec.structs.replace(
        cfg, nats=msgspec.structs.replace(cfg.nats, dead_letter_after=1),
        channels={"webhook": msgspec.structs.replace(webhook, providers=[broken])})
    note = {"user_id": "dlq-user", "category": "job_alerts", "channels": ["webhook"], "content": {"text": "hi"}}
    engine = await Engine(failing).start()
    try:
        ack = await engine.js.publish(streams.notify_subject(cfg.nats, "job_alerts"), msgspec.json.encode(note))
        await engine.js.publish(streams.notify_subject(cfg.nats, "job_alerts"), b"{not json")
        await until_dead_letters(engine, 2)
    finally:
        await engine.stop()

    config_path = tmp_path / "tidings.toml"
    write_config(config_path, cfg, hook.url)
    engine = await Engine(cfg).start()  # the same stream and schema, a provider that works
    try:
        listed = tidings(config_path, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        letters = {x["reason"]: x for x in lines(listed.stdout)}
        assert set(letters) == {"processing.failed", "payload.malformed"}
        failed = letters["processing.failed"]
        assert failed["origin_seq"] == ack.seq and failed["replayed_by"] is None

        shown = tidings(config_path, "dlq", "show", str(failed["seq"]), "--json")
        assert json.loads(json.loads(shown.stdout)["payload"]) == note

        replayed = tidings(config_path, "dlq", "replay", "--reason", "processing.failed", "--json")
        assert replayed.returncode == 0, replayed.stderr
        assert json.loads(replayed.stdout.splitlines()[-1])["replayed"] == 1
        nid = derive_id(f"{cfg.nats.stream}:{ack.seq}")  # the id it had the first time
        assert await wait_rows(engine.pool, [nid], 1) == 1
        row = await engine.pool.fetchrow("SELECT status FROM delivery_tracking WHERE notification_id = $1::uuid "
                                         "AND channel = 'webhook'", nid)
        assert row["status"] == "sent"

        again = tidings(config_path, "dlq", "replay", str(failed["seq"]), "--json")
        assert json.loads(again.stdout.splitlines()[-1]) == {"replayed": 0, "already_replayed": 1, "refused": 0,
                                                             "missing": 0}
        await asyncio.sleep(1.0)  # had it gone out again, the sink would have it by now
        assert hook.received == 1
        audit = await engine.pool.fetch("SELECT reason, replayed_by FROM dead_letter_replays")
        assert [(r["reason"], r["replayed_by"].startswith("cli:")) for r in audit] == [("processing.failed", True)]
        after = {x["reason"]: x for x in lines(tidings(config_path, "dlq", "list", "--json").stdout)}
        assert after["processing.failed"]["replayed_by"].startswith("cli:")

        missing = tidings(config_path, "dlq", "show", "999999")
        assert missing.returncode != 0 and "no dead letter 999999" in missing.stdout + missing.stderr
        assert "Traceback" not in missing.stderr
    finally:
        await engine.stop()
        await hook.stop()
        await drop_schema(database_url, cfg.database.schema)
