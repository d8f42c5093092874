"""The demo the README's first command runs, at a small size: every loopback
server in its own process, the mixed load over HTTP, and each server received
exactly what the engine recorded as sent on its channel."""

from __future__ import annotations

import pytest
from rich.console import Console

from engine import http
from engine.demo import Sinks, run
from engine.runtime import Engine
from tests.integration.helpers import drop_schema, engine_config

pytestmark = pytest.mark.integration


async def test_demo_delivers_on_every_channel_and_the_servers_agree(nats_url, database_url, ray_address, tmp_path):
    cfg = engine_config(nats_url, database_url, str(tmp_path), channels=("email", "webhook", "in_app"))
    sinks = Sinks(cfg)
    cfg = await sinks.start()
    assert {"sms", "voice", "push"} <= set(cfg.channels)
    engine = await Engine(cfg).start()
    runner = await http.serve(engine, port=0)
    try:
        summary = await run(engine, f"http://127.0.0.1:{http.bound_port(runner)}", sinks, count=800, users=200,
                            console=Console(quiet=True), timeout_s=120)
    finally:
        await runner.cleanup()
        await engine.stop()
        await sinks.stop()
        await drop_schema(database_url, cfg.database.schema)
    assert summary["rows"] >= summary["expected_rows"]
    sent: dict[str, int] = {}
    for r in summary["outcomes"]:
        sent[r["channel"]] = sent.get(r["channel"], 0) + (r["n"] if r["status"] == "sent" else 0)
    # SMS appears only as a fallback (push without the app), and few of those users gave consent
    assert set(sent) == {"email", "webhook", "push", "in_app", "sms", "voice"}, sent
    assert all(sent[ch] > 0 for ch in ("email", "webhook", "push", "in_app", "voice")), sent
    got = summary["sinks"]
    assert got["smtp"]["count"] == sent["email"]
    assert got["webhook"]["received"] == sent["webhook"] and got["webhook"]["bad_signatures"] == 0
    assert got["twilio"]["messages"] == sent["sms"] and got["twilio"]["calls"] == sent["voice"]
    assert got["fcm"]["requests"] == sent["push"]
