"""The audit log for administrators (engine/audit.py):

- ``GET /v1/audit/verify`` (``?user_id=``): walk every chain (or one) and check
  the newest signed checkpoint; 200 with ``{"ok", "chains", "rows", "checkpoint",
  "broken": [{"user_id", "row_id", "problem"}]}`` either way (a broken chain is
  the answer, not an error).
- ``POST /v1/audit/checkpoints``: sign every chain's last row now; 201.

Both need an ``admin`` key: they read and sign across every user."""

from __future__ import annotations

from aiohttp import web

from engine import audit as signed
from engine.http.access import Route, Scoped, register
from engine.http.common import ENGINE, Problem, reply, unprintable


async def verify(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    user_id = request.query.get("user_id")
    if user_id is not None and (not user_id or unprintable(user_id)):
        raise Problem(400, "bad query", [{"field": "user_id", "reason": "1 to 256 printable characters"}])
    key = signed.signing_key(engine.cfg.engine.home, create=False)
    async with engine.pool.acquire() as conn:
        report = await signed.verify(conn, [key.public_key()] if key is not None else [], user_id,
                                     signed.max_age(engine.cfg))
    return reply(report.as_dict())


async def checkpoint(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    key = signed.signing_key(engine.cfg.engine.home)
    async with engine.pool.acquire() as conn:
        try:
            done = await signed.checkpoint(conn, key)
        except signed.KeyMismatch as e:
            raise Problem(409, "another signing key", [{"field": "$", "reason": str(e)}]) from None
    return reply(done, status=201)


ROUTES = [
    Route("GET", "/v1/audit/verify", verify, Scoped("admin")),
    Route("POST", "/v1/audit/checkpoints", checkpoint, Scoped("admin")),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
