"""What the CLI's commands share: the console, an engine served over HTTP for
as long as a command needs it, and waiting for Ctrl-C. Command modules import
this one; it imports none of them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape

from engine import auth, bounces, http
from engine.runtime import Engine
from infra.config import Config

console = Console()


@dataclass
class Serving:
    engine: Engine
    url: str  # the HTTP API's address
    stop: asyncio.Event  # set by SIGINT / SIGTERM


@contextlib.asynccontextmanager
async def serving(cfg: Config, port: int | None = None) -> AsyncIterator[Serving]:
    """The engine started and its HTTP API served; both stopped on the way out,
    after a failed start too (``Engine.stop`` stops what it started)."""
    engine = Engine(cfg)
    runner = bounce_server = None
    try:
        console.print("Starting: NATS, PostgreSQL (migrations), Ray, actors …")
        await engine.start()
        runner = await http.serve(engine, port=port)
        bounce_server = await bounces.serve(engine)
        url = f"http://{cfg.http.host}:{http.bound_port(runner)}"
        console.print(f"[green]Tidings is up[/green]: HTTP {url}  NATS {engine.nats_url}  "
                      f"Ray dashboard {engine.ray_info.get('dashboard') or '(off)'}  "
                      f"actor metrics :{engine.ray_info.get('metrics_port') or '?'}/metrics")
        stop = asyncio.Event()
        engine.on_lost = stop.set  # its actors ended while PostgreSQL was away: it stops (engine/deployment.py)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        yield Serving(engine, url, stop)
    finally:
        console.print("Stopping …")
        if bounce_server is not None:
            await bounce_server.close()
        if runner is not None:
            await runner.cleanup()
        await engine.stop()


def api_headers(cfg: Config, url: str) -> dict[str, str]:
    """``Authorization`` for the engine's HTTP API at ``url``: ``TIDINGS_API_KEY``,
    else the admin key a first start wrote under ``engine.home``; none when neither
    is there (the engine then answers 401, and the CLI says so). A key goes only
    over https or to a loopback address, never in clear text across a network."""
    key = auth.read_admin_key(cfg.engine.home)
    if not key:
        return {}
    if not auth.key_goes_to(url):
        console.print(f"[yellow]not sending the API key to {escape(url)}[/yellow]: use https or a loopback address")
        return {}
    return {"Authorization": f"Bearer {key}"}


async def until_stopped(coro, stop: asyncio.Event):
    """Run ``coro`` unless ``stop`` is set first (then cancel it and return None)."""
    work = asyncio.ensure_future(coro)
    halt = asyncio.ensure_future(stop.wait())
    await asyncio.wait({work, halt}, return_when=asyncio.FIRST_COMPLETED)
    halt.cancel()
    if work.done():
        return work.result()
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)
    return None
