"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from engine.http.access import Media, Ops, Public, Route, register
from engine.http.common import ENGINE, reply
from infra import streams
from infra.aio import gather_within
from policy.api import ErrorAnswer

log = logging.getLogger(__name__)

READY = Gauge("tidings_ready", "Each readiness check of /readyz, sampled by this process: 1 passes, 0 fails",
              ["check"])
READY_SAMPLE_S = 15.0  # how often the checks are made for tidings_ready (Prometheus scrapes about as often)


class Liveness(msgspec.Struct):
    """The process answers."""

    status: Literal["ok"]


class ReadyChecks(msgspec.Struct):
    """Each dependency's check: NATS connected, PostgreSQL answers, the UserShards answer (``ray``), every
    Ingestor's loop runs, the Scheduler's loop turned recently, the status events' relay turned recently
    (true when ``events.enabled`` is off), this instance holds its place in the deployment (``deployment``:
    its PostgreSQL session with the members lock is open; engine/deployment.py)."""

    nats: bool
    postgres: bool
    ray: bool
    ingestors: bool
    scheduler: bool
    events: bool = True
    deployment: bool = True


class Readiness(msgspec.Struct):
    """Ready when every check passes (200), else not (503). ``ingest_lag``: messages waiting in each lane's
    consumer (null where it could not be read; empty while NATS is not connected), shown, not checked;
    ``leader``: this instance pulls the deployment's preference writes over NATS (one instance does)."""

    status: Literal["ready", "not ready"]
    checks: ReadyChecks
    ingest_lag: dict[str, int | None]
    # this instance is the deployment's leader (it pulls the preference writes over NATS); shown, not checked
    leader: bool = False


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers (it checks nothing else)."""
    return reply(Liveness(status="ok"))


async def _answers(calls, timeout: float = 5.0) -> list | None:
    try:
        return await gather_within(timeout, *calls)
    except Exception:  # noqa: BLE001 - any failure means not ready
        return None


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 when every dependency answers, 503 (the same shape) when one does not.

    Ready: NATS connected, PostgreSQL answers, the UserShards answer, every
    Ingestor's loop runs, the Scheduler's loop and the status events' relay
    turned recently, this instance holds its place in the deployment. Also shows
    the ingest lag (messages waiting in each lane's consumer), not a check."""
    ready = await readiness(request.app[ENGINE])
    return reply(ready, status=200 if ready.status == "ready" else 503)


async def readiness(engine) -> Readiness:
    """The checks of ``readyz``, and the lag it shows."""
    nats = engine.nc is not None and engine.nc.is_connected
    postgres = await _answers([engine.pool.fetchval("SELECT 1")], 2) is not None
    ray = await _answers([a.info.remote() for a in engine.actors.user_shards]) is not None
    ingestors = await _answers([i.info.remote() for i in engine.actors.ingestors])
    scheduler = await _answers([engine.actors.scheduler.info.remote()])
    stale_after = max(30.0, 5 * engine.cfg.scheduler.interval_s)
    sender = engine.actors.events
    relay = await _answers([sender.info.remote()]) if sender is not None else [{"running": True}]
    relay_stale_after = max(30.0, 5 * engine.cfg.events.relay_idle_s)
    checks = ReadyChecks(
        nats=nats, postgres=postgres, ray=ray,
        ingestors=ingestors is not None and all(bool(i.get("running")) for i in ingestors),
        scheduler=scheduler is not None and bool(scheduler[0].get("running", False))
        and time.time() - scheduler[0].get("last_round_at", 0.0) < stale_after,
        events=relay is not None and bool(relay[0].get("running", False))
        and (sender is None or time.time() - relay[0].get("last_round_at", 0.0) < relay_stale_after),
        deployment=engine.claim is not None and engine.claim.holds())
    lag: dict[str, int | None] = {}
    if nats:
        for lane in streams.LANES:
            info = await _answers([engine.js.consumer_info(engine.cfg.nats.stream,
                                                           streams.consumer_name(engine.cfg.nats, lane))], 2)
            lag[lane] = info[0].num_pending if info else None
    ok = all(msgspec.structs.astuple(checks))
    return Readiness(status="ready" if ok else "not ready", checks=checks, ingest_lag=lag,
                     leader=engine.prefs_listener is not None)


async def sample_readiness(app: web.Application):
    """``tidings_ready{check}`` every ``READY_SAMPLE_S`` while the app runs (an
    aiohttp cleanup context), so an alert does not depend on who calls /readyz."""

    async def loop() -> None:
        names = [f.name for f in msgspec.structs.fields(ReadyChecks)]
        while True:
            try:
                checks = msgspec.structs.asdict((await readiness(app[ENGINE])).checks)
            except Exception:
                log.debug("readiness sample failed", exc_info=True)
                checks = {}
            for name in names:
                READY.labels(name).set(1 if checks.get(name) else 0)
            await asyncio.sleep(READY_SAMPLE_S)

    task = asyncio.get_running_loop().create_task(loop())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics of this process, in the text exposition format."""
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


ROUTES = [
    Route("GET", "/healthz", healthz, Public("liveness only; says nothing"), answers={200: Liveness}),
    Route("GET", "/readyz", readyz, Ops(), answers={200: Readiness, 503: (Readiness, ErrorAnswer)}),
    Route("GET", "/metrics", metrics, Ops(),
          answers={200: Media(CONTENT_TYPE_LATEST.split(";")[0].strip(), {"type": "string"})}),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
    app.cleanup_ctx.append(sample_readiness)
