"""A tiny HTTP process for tests/integration/test_ratelimit.py: the rate-limit
middleware against a shared Redis, every request with the same rate key.

    python tests/integration/ratelimit_app.py REDIS_URL BURST PER_S

Prints the port it listens on (loopback, a free one), then serves until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import redis.asyncio as aioredis
from aiohttp import web

from engine.ratelimit import RATE_KEY, Limiter, rate_limit_middleware
from infra.config import RateLimitConfig


@web.middleware
async def fixed_key(request: web.Request, handler):
    request[RATE_KEY] = ("key", "shared-test-key")
    return await handler(request)


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def main(redis_url: str, burst: float, per_s: float) -> None:
    client = aioredis.Redis.from_url(redis_url)
    # a generous timeout: this test is about sharing the limit, not about a slow Redis
    limiter = Limiter(client, RateLimitConfig(key_per_s=per_s, key_burst=burst, redis_down="closed", timeout_s=2.0))
    app = web.Application(middlewares=[fixed_key, rate_limit_middleware(limiter)])
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])))
