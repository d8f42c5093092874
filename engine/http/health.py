"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.http.access import Ops, Public, Route, register
from engine.http.common import ENGINE, reply
from infra import streams


async def healthz(request: web.Request) -> web.Response:
    return reply({"status": "ok"})


async def _answers(calls, timeout: float = 5.0) -> list | None:
    try:
        return await asyncio.wait_for(asyncio.gather(*calls), timeout)
    except Exception:  # noqa: BLE001 - any failure means not ready
        return None


async def readyz(request: web.Request) -> web.Response:
    """Ready: NATS connected, PostgreSQL answers, the UserShards answer, every
    Ingestor's loop runs and the Scheduler's loop turned recently. Also shows
    the ingest lag (messages waiting in each lane's consumer), not a check."""
    engine = request.app[ENGINE]
    checks = {"nats": engine.nc is not None and engine.nc.is_connected}
    checks["postgres"] = await _answers([engine.pool.fetchval("SELECT 1")], 2) is not None
    checks["ray"] = await _answers([a.info.remote() for a in engine.actors.user_shards]) is not None
    ingestors = await _answers([i.info.remote() for i in engine.actors.ingestors])
    checks["ingestors"] = ingestors is not None and all(i.get("running") for i in ingestors)
    scheduler = await _answers([engine.actors.scheduler.info.remote()])
    stale_after = max(30.0, 5 * engine.cfg.scheduler.interval_s)
    checks["scheduler"] = scheduler is not None and scheduler[0].get("running", False) \
        and time.time() - scheduler[0].get("last_round_at", 0.0) < stale_after
    lag = {}
    if checks["nats"]:
        for lane in streams.LANES:
            info = await _answers([engine.js.consumer_info(engine.cfg.nats.stream,
                                                           streams.consumer_name(engine.cfg.nats, lane))], 2)
            lag[lane] = info[0].num_pending if info else None
    ok = all(checks.values())
    return reply({"status": "ready" if ok else "not ready", "checks": checks, "ingest_lag": lag},
                 status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


ROUTES = [
    Route("GET", "/healthz", healthz, Public("liveness only; says nothing")),
    Route("GET", "/readyz", readyz, Ops()),
    Route("GET", "/metrics", metrics, Ops()),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
