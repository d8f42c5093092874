"""The locust harness (bench/locustfile.py through bench.locust_run) against a
real engine for a few seconds: every request kind is made, none fails, and the
submitted notifications reach the tracking table. Keeps the harness from rotting;
asserts nothing about speed."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench import locust_run
from engine import auth, http
from engine.runtime import Engine
from sandbox import WebhookSink
from tests.integration.helpers import drop_schema, engine_config

pytestmark = pytest.mark.integration

NAMES = {"/v1/notifications", "/v1/notifications [batch 50]", "/v1/users/[id]", "/v1/users/[id] PUT"}


async def wait_any_rows(pool, timeout_s: float = 60) -> int:
    """Poll until some tracking row exists; returns the count seen."""
    deadline = time.monotonic() + timeout_s
    n = 0
    while time.monotonic() < deadline:
        n = await pool.fetchval("SELECT count(*) FROM delivery_tracking")
        if n > 0:
            return n
        await asyncio.sleep(0.2)
    return n


async def test_locust_harness_smoke(nats_url, database_url, ray_address, tmp_path):
    hook = WebhookSink("test-secret", port=0)
    await hook.start()
    # two closed-loop users make 200+ requests/s on a fast machine: the per-key limit
    # (200/s, burst 400) answered 429 after ~2 s in one CI run. The limiter stays in
    # the path, with room for the harness; it is not what this test is about.
    cfg = engine_config(nats_url, database_url, str(tmp_path / "home"), webhook_url=hook.url,
                        channels=("webhook",), overrides={"ratelimit": {"key_per_s": 100_000, "key_burst": 100_000}})
    eng = runner = None
    try:
        eng = await Engine(cfg).start()
        runner = await http.serve(eng, port=0)
        host = f"http://127.0.0.1:{http.bound_port(runner)}"
        summary = await asyncio.to_thread(
            locust_run.run, host, users=2, spawn_rate=2, run_time="4s", csv_prefix=tmp_path / "locust",
            population=200, channels="webhook", api_key=auth.read_admin_key(cfg.engine.home, environ={}))
        failures_csv = tmp_path / "locust_failures.csv"
        detail = failures_csv.read_text() if failures_csv.exists() else summary["log"]
        assert summary["requests"] > 0, summary
        assert summary["failures"] == 0, detail
        assert NAMES <= set(summary["by_name"]), summary["by_name"]
        assert all(s["requests"] > 0 for s in summary["by_name"].values())
        assert await wait_any_rows(eng.pool) > 0
    finally:
        if runner is not None:
            await runner.cleanup()
        if eng is not None:
            await eng.stop()
        await hook.stop()
        await drop_schema(database_url, cfg.database.schema)
