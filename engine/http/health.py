"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.http.access import Ops, Public, Route, register
from engine.http.common import ENGINE, reply


async def healthz(request: web.Request) -> web.Response:
    return reply({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    checks = {}
    checks["nats"] = engine.nc is not None and engine.nc.is_connected
    try:
        await asyncio.wait_for(engine.pool.fetchval("SELECT 1"), 2)
        checks["postgres"] = True
    except Exception:  # noqa: BLE001 - any failure means not ready
        checks["postgres"] = False
    try:
        await asyncio.wait_for(asyncio.gather(*(a.info.remote() for a in engine.actors.user_shards)), 5)
        checks["ray"] = True
    except Exception:  # noqa: BLE001 - any failure means not ready
        checks["ray"] = False
    ok = all(checks.values())
    return reply({"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


ROUTES = [
    Route("GET", "/healthz", healthz, Public("liveness only; says nothing")),
    Route("GET", "/readyz", readyz, Ops()),
    Route("GET", "/metrics", metrics, Ops()),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
