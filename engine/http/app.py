"""The HTTP front door (aiohttp): the application built from the route modules,
a middleware that counts every answer, and serving it."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Counter

from engine.http import analytics, bulk, events, health, inbox, links, notifications, prefs, templates, tracking, users
from engine.http.common import ENGINE
from engine.runtime import Engine

HTTP_REQUESTS = Counter("tidings_http_requests_total", "HTTP requests", ["route", "status"])

ROUTE_MODULES = (notifications, users, health, prefs, bulk, templates, tracking, inbox, events, links, analytics)


@web.middleware
async def count_requests(request: web.Request, handler):
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        response = await handler(request)
    except web.HTTPException as e:
        HTTP_REQUESTS.labels(route, str(e.status)).inc()
        raise
    HTTP_REQUESTS.labels(route, str(response.status)).inc()
    return response


def make_app(engine: Engine) -> web.Application:
    app = web.Application(client_max_size=engine.cfg.http.max_body_bytes, middlewares=[count_requests])
    app[ENGINE] = engine
    for module in ROUTE_MODULES:
        module.add_routes(app)
    return app


async def serve(engine: Engine, host: str | None = None, port: int | None = None) -> web.AppRunner:
    runner = web.AppRunner(make_app(engine), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or engine.cfg.http.host, engine.cfg.http.port if port is None else port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    return runner.addresses[0][1]
