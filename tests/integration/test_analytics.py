"""``GET /v1/analytics/channels`` against a real PostgreSQL: tracking rows and
engagement events written as the engine writes them, counted per channel and
provider (and per bucket), with the rates, latency and attempts they give."""

from __future__ import annotations

import datetime as dt
import time
import types
import uuid

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from engine import migrations
from engine.http import analytics as http_analytics
from engine.http.common import ENGINE
from infra import db
from infra.config import AnalyticsConfig
from stores import analytics
from tests.integration.helpers import drop_schema

pytestmark = pytest.mark.integration

ROW = """
INSERT INTO delivery_tracking (notification_id, user_id, channel, category, status, reason, provider, attempts,
                               accepted_at, completed_at, created_at)
VALUES ($1, 'u1', $2, 'messages', $3, 'x', $4, $5, to_timestamp($6), to_timestamp($6 + $7), to_timestamp($6 + $7))
"""


@pytest.fixture(scope="module")
async def env(database_url):
    schema = "test_analytics_" + uuid.uuid4().hex[:12]
    await migrations.migrate_url(database_url, schema)
    pool = await db.create_pool(database_url, schema)
    app = web.Application()
    limits = AnalyticsConfig(max_window_days=40, max_buckets=500)
    app[ENGINE] = types.SimpleNamespace(pool=pool, cfg=types.SimpleNamespace(analytics=limits))
    http_analytics.add_routes(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield types.SimpleNamespace(client=client, pool=pool)
    finally:
        await client.close()
        await pool.close()
        await drop_schema(database_url, schema)


async def row(env, channel: str, status: str, provider: str | None, at: float, took_s: float = 0.1,
              attempts: int = 1, engaged: tuple[str, ...] = ()) -> uuid.UUID:
    nid = uuid.uuid4()
    await env.pool.execute(ROW, nid, channel, status, provider, attempts, at, took_s)
    for kind in engaged:
        await env.pool.execute("INSERT INTO engagement_events (notification_id, user_id, channel, type, at, source) "
                               "VALUES ($1, 'u1', $2, $3, to_timestamp($4), 'api')", nid, channel, kind, at + 60)
    return nid


async def get(env, **query) -> tuple[int, dict]:
    resp = await env.client.get("/v1/analytics/channels", params={k: str(v) for k, v in query.items()})
    return resp.status, await resp.json()


async def test_counts_rates_latency_and_attempts_per_channel_and_provider(env):
    base = time.time() - 3 * 86400  # a window of its own, away from the other test's rows
    for took in (0.1, 0.2, 0.3, 0.4):
        await row(env, "push", "sent", "fcm", base, took)
    await row(env, "push", "delivered", "fcm", base, 0.5, attempts=2, engaged=("opened", "clicked"))
    await row(env, "push", "delivered", "fcm", base, 0.5, engaged=("opened",))
    await row(env, "push", "failed", "fcm", base, 1.0, attempts=3)
    await row(env, "push", "suppressed", None, base, 0.0, attempts=0)
    await row(env, "email", "bounced", "smtp", base)
    await row(env, "email", "sent", "smtp", base - 7200)  # before the window
    status, body = await get(env, **{"from": base - 60, "to": base + 60})
    assert status == 200, body
    rows = {(r["channel"], r["provider"]): r for r in body["rows"]}
    assert set(rows) == {("email", "smtp"), ("push", None), ("push", "fcm")}
    fcm = rows[("push", "fcm")]
    assert fcm["total"] == 7
    assert {k: fcm["counts"][k] for k in ("sent", "delivered", "failed", "accepted", "opened", "clicked")} == \
        {"sent": 4, "delivered": 2, "failed": 1, "accepted": 6, "opened": 2, "clicked": 1}
    assert fcm["rates"] == {"delivery_rate": round(2 / 6, 4), "open_rate": round(2 / 6, 4),
                            "click_rate": round(1 / 6, 4), "failure_rate": round(1 / 7, 4)}
    assert fcm["latency_ms"]["p50"] == pytest.approx(350, abs=1)  # interpolated: 100, 200, 300 | 400, 500, 500 ms
    assert fcm["avg_attempts"] == pytest.approx(10 / 7, abs=1e-3)
    none = rows[("push", None)]
    assert none["counts"]["suppressed"] == 1 and none["latency_ms"] is None and none["avg_attempts"] is None
    assert none["rates"]["open_rate"] is None
    assert rows[("email", "smtp")]["counts"]["bounced"] == 1 and rows[("email", "smtp")]["total"] == 1
    status, only = await get(env, **{"from": base - 60, "to": base + 60, "channel": "email"})
    assert [r["channel"] for r in only["rows"]] == ["email"]


async def test_buckets_and_iso_times(env):
    day = dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp()
    await row(env, "sms", "sent", "twilio", day + 600)
    await row(env, "sms", "sent", "twilio", day + 3600 + 5)
    await row(env, "sms", "sent", "twilio", day + 3600 + 9)
    status, body = await get(env, **{"from": "2026-03-01T00:00:00", "to": "2026-03-01T03:00:00Z", "bucket": "hour"})
    assert status == 200, body
    assert [(r["bucket"] - day, r["total"]) for r in body["rows"]] == [(0, 1), (3600, 2)]
    status, day_body = await get(env, **{"from": day, "to": day + 86400, "bucket": "day"})
    assert [r["total"] for r in day_body["rows"]] == [3]


async def test_buckets_are_cut_in_utc_whatever_the_server_time_zone(env):
    day = dt.datetime(2026, 4, 1, tzinfo=dt.UTC).timestamp()
    await row(env, "voice", "sent", "twilio", day + 3 * 3600)  # 03:00 UTC: 23:00 the day before in New York
    async with env.pool.acquire() as conn:
        await conn.execute("SET TIME ZONE 'America/New_York'")
        try:
            (r,) = await analytics.channels(conn, day, day + 86400, "day", "voice")
        finally:
            await conn.execute("RESET TIME ZONE")
    assert r["bucket"] == day and r["total"] == 1


@pytest.mark.parametrize("query, field", [
    ({"from": "yesterday"}, "from"),
    ({"from": 100, "to": 50}, "to"),
    ({"bucket": "week"}, "bucket"),
    ({"from": "nan"}, "from"),
    ({"to": "inf"}, "to"),
    ({"from": "-1e300"}, "from"),
])
async def test_bad_queries_are_400_naming_the_parameter(env, query, field):
    status, body = await get(env, **query)
    assert status == 400 and body["errors"][0]["field"] == field


@pytest.mark.parametrize("query, field", [
    ({"from": 0, "to": 86400 * 41}, "from"),  # longer than max_window_days, with or without buckets
    ({"from": 0, "to": 86400 * 41, "bucket": "day"}, "from"),
    ({"from": 0, "to": 86400 * 30, "bucket": "minute"}, "bucket"),  # 43,200 buckets > max_buckets
    ({"from": 0, "to": 3600 * 501, "bucket": "hour"}, "bucket"),
])
async def test_windows_past_the_configured_caps_are_422_naming_the_field(env, query, field):
    status, body = await get(env, **query)
    assert status == 422 and body["errors"][0]["field"] == field
    assert "analytics.max_" in body["errors"][0]["reason"]


async def test_windows_at_the_caps_are_answered(env):
    assert (await get(env, **{"from": 0, "to": 86400 * 40}))[0] == 200
    assert (await get(env, **{"from": 0, "to": 3600 * 500, "bucket": "hour"}))[0] == 200


async def test_the_cli_refuses_a_window_past_the_caps_before_asking(capsys):
    import argparse

    from engine.cli import analytics as cli_analytics
    from infra.config import Config
    cfg = Config(analytics=AnalyticsConfig(max_window_days=2))
    args = argparse.Namespace(url="http://127.0.0.1:9", hours=72.0, bucket=None, channel=None, json=False)
    assert await cli_analytics.cmd_analytics(cfg, args) == 2  # port 9: had it asked, it would have failed otherwise
    assert "--hours" in capsys.readouterr().out
