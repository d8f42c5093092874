"""An Ingestor or Scheduler that Ray restarts comes back working (the engine's
supervisor starts its loop again), /readyz says when one is not, and a second
engine on the same schema and stream refuses to start."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import ray

from engine.runtime import Engine
from infra import streams
from infra.config import ConfigError
from sandbox import WebhookSink
from tests.integration.helpers import engine_config, serving, wait_rows

pytestmark = pytest.mark.integration


async def ready(client, engine) -> tuple[int, dict]:
    async with client.get(f"{engine.base_url}/readyz") as r:
        return r.status, await r.json()


async def test_a_restarted_ingestor_resumes_and_readiness_follows(nats_url, database_url, redis_url, ray_address,
                                                                   tmp_path, client, monkeypatch):
    monkeypatch.setattr("engine.runtime.SUPERVISE_S", 0.5)
    hook = WebhookSink("test-secret", port=0)
    await hook.start()
    cfg = engine_config(nats_url, database_url, str(tmp_path), webhook_url=hook.url, channels=("webhook",),
                        redis_url=redis_url)
    try:
        async with serving(cfg, database_url) as engine:
            status, body = await ready(client, engine)
            assert status == 200, body
            assert set(body["checks"]) >= {"nats", "postgres", "ray", "ingestors", "scheduler"}
            assert set(body["ingest_lag"]) == set(streams.LANES)
            for victim in (engine.actors.ingestors[0], engine.actors.scheduler):
                ray.kill(victim, no_restart=False)  # Ray restarts it, idle
                deadline = time.monotonic() + 60
                info: dict = {}
                while time.monotonic() < deadline:
                    status, body = await ready(client, engine)
                    try:
                        info = await asyncio.wait_for(victim.info.remote(), 30)
                    except ray.exceptions.RayError:  # still restarting
                        info = {}
                    if status == 200 and info.get("running"):
                        break
                    await asyncio.sleep(0.3)
                assert status == 200 and info.get("running"), body
            note = {"id": str(uuid.uuid4()), "user_id": "s1", "category": "job_alerts", "channels": ["webhook"],
                    "content": {"text": "after the restart"}}
            async with client.post(f"{engine.base_url}/v1/notifications", json=note) as r:
                assert r.status == 202
            assert await wait_rows(engine.pool, [note["id"]], 1) == 1

            second = Engine(cfg)
            with pytest.raises(ConfigError, match="another engine is running"):
                await second.start()
    finally:
        await hook.stop()
