"""Who may resolve each GraphQL field: the same decision, by the same code, as
the REST route doing the same thing (engine/http/access.py ``refusal`` with that
route's declared policy), so a scope or a user-token rule changed there holds
here too.

Over HTTP the authorization middleware has authenticated the caller already
(``request[PRINCIPAL]``). A WebSocket authenticates in its ``connection_init``
payload, ``{"authorization": "Bearer …"}`` (a browser cannot set headers on a
WebSocket), or by the header when a client can send one; a connection without
valid credentials is closed 4403 (graphql-transport-ws's refusal), one over the
rate limit 4429. A refusal of a field is a GraphQL error with ``extensions``
``{"code": 401 or 403, "errors": [{"field", "reason"}]}``, as REST would answer."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from strawberry.types import Info

from engine.auth import PRINCIPAL, Principal
from engine.http.access import POLICIES, forbidden, refusal, unauthorized
from engine.http.common import ENGINE, Problem
from engine.ratelimit import LimiterUnavailable
from engine.runtime import Engine


def context_of(request: web.Request, response: Any) -> dict[str, Any]:
    """The context of one HTTP request, or of one WebSocket for all its operations."""
    return {"request": request, "response": response, "engine": request.app[ENGINE],
            "principal": request.get(PRINCIPAL)}


def engine_of(info: Info) -> Engine:
    return info.context["engine"]


def principal_of(info: Info) -> Principal | None:
    return info.context.get("principal")


def allow(info: Info, method: str, path: str, user_id: str | None = None) -> None:
    """Raise the 401/403 the REST route ``method path`` would answer this
    caller for ``user_id`` (the path's ``{user_id}``), if it would."""
    engine = engine_of(info)
    if not engine.cfg.http.auth:  # only ever on a loopback-only listener (checked at start)
        return
    principal = principal_of(info)
    if principal is None:
        raise unauthorized("missing bearer credentials")
    policy = info.context["request"].app[POLICIES][(method, path)]
    why = refusal(principal, policy, user_id)
    if why is not None:
        raise forbidden(why)


class Refused(Exception):
    """A WebSocket's ``connection_init`` refused: close with ``code``."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


async def connect(context: dict[str, Any]) -> None:
    """Authenticate a WebSocket from its ``connection_init`` payload (or the
    header the middleware read) and count it against the caller's rate limit;
    ``Refused`` otherwise. Sets ``context["principal"]``."""
    engine: Engine = context["engine"]
    if not engine.cfg.http.auth:
        return
    params = context.get("connection_params") or {}
    raw = params.get("authorization", params.get("Authorization"))
    if raw is not None:
        if not isinstance(raw, str) or raw[:7].lower() != "bearer ":
            raise Refused(4403, "authorization: expected \"Bearer <key or token>\"")
        principal = await engine.auth.authenticate(raw[7:].strip())
        if principal is None:
            raise Refused(4403, "invalid, expired or revoked credentials")
        context["principal"] = principal
    principal = context.get("principal")
    if principal is None:
        raise Refused(4403, "missing credentials: send {\"authorization\": \"Bearer …\"} in connection_init")
    await count(engine, principal)


async def count(engine: Engine, principal: Principal) -> None:
    """One request against the caller's rate limit (engine/ratelimit.py), as
    the middleware counts an HTTP request; ``Refused`` 4429 over it."""
    limiter = engine.limiter
    if limiter is None or not limiter.enabled:
        return
    try:
        verdict = await limiter.check(principal.kind, principal.id)
    except LimiterUnavailable:
        raise Refused(4429, "rate limits unavailable; retry") from None
    if not verdict.allowed:
        raise Refused(4429, f"rate limited; retry after {max(1, round(verdict.retry_after_s))} s")


def problem_of(e: Problem) -> tuple[str, dict[str, Any]]:
    """A REST error answer as a GraphQL error's message and extensions."""
    body = orjson.loads(e.body) if isinstance(e.body, bytes) else {}
    return body.get("error", "error"), {"code": e.status, "errors": body.get("errors", [])}


__all__ = ["Refused", "allow", "connect", "context_of", "count", "engine_of", "principal_of", "problem_of"]
