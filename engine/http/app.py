"""The HTTP front door (aiohttp): the application built from the route modules
(each route with its access policy, engine/http/access.py), the middlewares
(errors as JSON and counted, path parameters checked, authorization, rate
limits), and serving it."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from aiohttp import web
from prometheus_client import Counter

from engine.http import (
    analytics,
    audit,
    bulk,
    center,
    devices,
    docs,
    erasure,
    events,
    experiments,
    export,
    graphql,
    health,
    inbox,
    links,
    messagebird,
    notifications,
    prefs,
    segments,
    ses,
    subscriptions,
    suggestions,
    templates,
    tokens,
    topics,
    tracing,
    tracking,
    unsubscribe,
    users,
    vonage,
)
from engine.http.access import authorize
from engine.http.common import ENGINE, Problem, busy, db_busy, unprintable
from engine.ratelimit import rate_limit_middleware
from engine.runtime import Engine
from infra.config import ConfigError, HttpConfig

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter("tidings_http_requests_total", "HTTP requests", ["route", "status"])

ROUTE_MODULES = (notifications, users, devices, health, prefs, bulk, templates, tracking, inbox, events, links, analytics,
                 tokens, audit, unsubscribe, export, center, erasure, vonage, messagebird, ses, subscriptions, topics,
                 segments, experiments, suggestions, docs, graphql)


@web.middleware
async def answer_errors(request: web.Request, handler):
    """Every answer counted (route, status); every error in the JSON error shape:
    aiohttp's own 404/405/413 too, and an unexpected exception as a 500 whose
    body says nothing of it (it is logged here)."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        response = await handler(request)
    except Problem as e:
        HTTP_REQUESTS.labels(route, str(e.status)).inc()
        raise
    except web.HTTPException as e:
        HTTP_REQUESTS.labels(route, str(e.status)).inc()
        if e.status < 400:
            raise
        problem = Problem(e.status, e.reason.lower(), [{"field": "$", "reason": e.reason}])
        for name in ("Allow", "Retry-After", "WWW-Authenticate"):
            if name in e.headers:
                problem.headers[name] = e.headers[name]
        raise problem from None
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:
        if db_busy(e):  # a statement or lock timeout ([database]): busy, not broken
            HTTP_REQUESTS.labels(route, "503").inc()
            log.warning("%s %s: %s", request.method, route, type(getattr(e, "cause", None) or e).__name__)
            raise busy() from None
        HTTP_REQUESTS.labels(route, "500").inc()
        log.exception("%s %s failed", request.method, route)
        raise Problem(500, "internal error", [{"field": "$", "reason": "the engine failed; it is logged"}]) from None
    HTTP_REQUESTS.labels(route, str(response.status)).inc()
    return response


@web.middleware
async def check_path(request: web.Request, handler):
    """Path parameters: no control characters, at most 256 characters (a NUL
    would otherwise reach PostgreSQL and fail there)."""
    for name, value in request.match_info.items():
        if unprintable(value):
            raise Problem(400, "bad path parameter", [{"field": name, "reason": "control characters or too long"}])
    return await handler(request)


def make_app(engine: Engine) -> web.Application:
    middlewares = [answer_errors, check_path, authorize]
    if engine.limiter is not None:
        middlewares.append(rate_limit_middleware(engine.limiter))
    traced = tracing.middleware(engine.cfg.telemetry)  # outermost: the span covers every answer
    if traced is not None:
        middlewares.insert(0, traced)
    app = web.Application(client_max_size=engine.cfg.http.max_body_bytes, middlewares=middlewares)
    if traced is not None:
        app.on_cleanup.append(tracing.flush)
    app[ENGINE] = engine
    for module in ROUTE_MODULES:
        module.add_routes(app)
    return app


def check_exposure(cfg: HttpConfig, host: str) -> None:
    """Authentication off is refused unless the listener is loopback only."""
    if cfg.auth:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ConfigError(f"http.auth = false with http.host = {host!r}: refused; authentication may be off only "
                          "on a loopback address")


async def serve(engine: Engine, host: str | None = None, port: int | None = None) -> web.AppRunner:
    check_exposure(engine.cfg.http, host or engine.cfg.http.host)
    runner = web.AppRunner(make_app(engine), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or engine.cfg.http.host, engine.cfg.http.port if port is None else port,
                       backlog=engine.cfg.http.backlog)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    return runner.addresses[0][1]
