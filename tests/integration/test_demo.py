"""The demo the README's first command runs, at a small size: every loopback
server in its own process, the mixed load over HTTP, and each server received
exactly what the engine recorded as sent on its channel."""

from __future__ import annotations

import argparse

import aiohttp
import pytest
from rich.console import Console

from bench.demo import Sinks, run
from engine import http
from engine.cli import analytics as cli_analytics
from engine.runtime import Engine
from tests.integration.helpers import admin_headers, drop_schema, engine_config

pytestmark = pytest.mark.integration


async def test_demo_delivers_on_every_channel_and_the_servers_agree(nats_url, database_url, ray_address, tmp_path):
    cfg = engine_config(nats_url, database_url, str(tmp_path), channels=("email", "webhook", "in_app"))
    sinks = Sinks(cfg)
    cfg = await sinks.start()
    assert {"sms", "voice", "push"} <= set(cfg.channels)
    engine = await Engine(cfg).start()
    runner = await http.serve(engine, port=0)
    url = f"http://127.0.0.1:{http.bound_port(runner)}"
    try:
        summary = await run(engine, url, sinks, count=800, users=200, console=Console(quiet=True), timeout_s=120)
        async with aiohttp.ClientSession(headers=admin_headers(cfg)) as s, \
                s.get(f"{url}/v1/analytics/channels") as r:
            assert r.status == 200
            analytics = await r.json()
        args = argparse.Namespace(url=url, hours=1.0, bucket="minute", channel="email", json=False)
        assert await cli_analytics.cmd_analytics(cfg, args) == 0  # the CLI's table renders
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
    by_channel: dict[str, int] = {}
    for row in analytics["rows"]:
        by_channel[row["channel"]] = by_channel.get(row["channel"], 0) + row["counts"]["sent"]
    assert by_channel == sent  # the analytics count what the summary counted
