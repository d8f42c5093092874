"""Who may call each route, declared where the route is declared.

Every route module lists its routes as ``Route(method, path, handler, policy)``;
``register`` adds them to the application and records each one's policy, and
the ``authorize`` middleware refuses a request whose route has none (so a route
added without a policy fails closed, and tests/integration/test_access.py,
which walks the router, fails). Policies:

- ``Scoped(scope)``: an API key holding ``scope`` (or ``admin``). With
  ``user=True``, also an end-user token for the ``{user_id}`` in the path.
- ``UserOwned(scope)``: a key with ``scope``, or an end-user token; the handler
  checks that the resource belongs to the token's user (``owner_check``).
- ``Public(why)``: no credentials; the handler verifies what it needs (a
  provider's signature, a signed link token) or there is nothing to protect.
- ``Ops()``: /readyz and /metrics: loopback clients only, or a key with
  ``ops:read``, as ``http.ops_access`` says.
- ``Authenticated(why)``: any valid key or end-user token; the handler checks
  each operation against the policy of its REST twin (``refusal``): /graphql.
  With ``ws_init``, a WebSocket upgrade may come without credentials and
  authenticates in its first message instead.

Answers: 401 (no or bad credentials, with ``WWW-Authenticate: Bearer``), 403
(valid, but not allowed here). The principal is ``request[PRINCIPAL]``; the
rate limiter's key is ``request[RATE_KEY]``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from engine.auth import PRINCIPAL, Principal
from engine.http.common import ENGINE, Problem
from engine.ratelimit import RATE_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Scoped:
    scope: str
    user: bool = False  # an end-user token for the path's {user_id} passes too
    # an end-user token may come in ``?access_token=`` (the inbox WebSocket: a
    # browser cannot set headers there); never a key, and nowhere else
    query_token: bool = False


@dataclass(frozen=True)
class UserOwned:
    scope: str  # a key with it passes; an end-user token passes to the handler's owner check


@dataclass(frozen=True)
class Public:
    why: str


@dataclass(frozen=True)
class Ops:
    pass


@dataclass(frozen=True)
class Authenticated:
    """Any valid key or end-user token reaches the handler, which decides per
    operation with ``refusal`` and the policy of the REST route doing the same."""

    why: str
    # a WebSocket upgrade without credentials passes too: it authenticates in
    # its first message (a browser cannot set headers on a WebSocket)
    ws_init: bool = False


Policy = Scoped | UserOwned | Public | Ops | Authenticated


@dataclass(frozen=True)
class Media:
    """A body or answer that is not the JSON of a Struct: its media type and,
    where it has one, its JSON Schema (a form's fields, a page's text)."""

    type: str
    schema: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    """A query parameter (or, ``where="header"``, a request header): its name,
    its type (with msgspec ``Meta`` bounds), what it means."""

    name: str
    type: Any
    doc: str
    required: bool = False
    where: str = "query"


@dataclass(frozen=True)
class Link:
    """An OpenAPI link from a route's success answer to another operation: the
    target's method and path, and where each of its parameters comes from
    (``$response.body#/id``, ``$request.path.user_id``)."""

    name: str
    method: str
    path: str
    parameters: dict[str, str]


@dataclass(frozen=True)
class Route:
    """A route, who may call it, and what it takes and answers: the OpenAPI
    document (engine/http/openapi.py) is made from these fields, so the types
    here are the ones the handler decodes and encodes.

    ``body``: the type the JSON body decodes to, or a ``Media``. ``answers``:
    each success status and its type (a Struct, ``None`` for no body, or a
    ``Media``). ``errors``: the error statuses the handler itself answers, beyond
    those its policy, body and path bring (engine/http/openapi.py, ``errors_of``).
    ``params``: the type of a path parameter, where it is not a plain string."""

    method: str
    path: str
    handler: Handler
    policy: Policy
    body: Any = None
    answers: dict[int, Any] = field(default_factory=dict)
    query: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    example: Any = None  # a valid body, shown in the document (and sent by Schemathesis's examples phase)
    headers: dict[str, str] = field(default_factory=dict)  # headers of its success answers: name -> meaning
    links: tuple[Link, ...] = ()  # from its first success answer (Schemathesis's stateful phase follows them)


POLICIES = web.AppKey("policies", dict)  # (method, path) -> Policy
ROUTES = web.AppKey("routes", list)  # every Route registered, in order (the OpenAPI document's operations)


def register(app: web.Application, routes: list[Route]) -> None:
    """Add ``routes`` with their policies (a GET also answers HEAD)."""
    table = app.get(POLICIES)
    if table is None:
        table = app[POLICIES] = {}
        app[ROUTES] = []
    app[ROUTES].extend(routes)
    for r in routes:
        if r.method == "GET":
            app.router.add_get(r.path, r.handler)  # and HEAD
            table[("HEAD", r.path)] = r.policy
        else:
            app.router.add_route(r.method, r.path, r.handler)
        table[(r.method, r.path)] = r.policy


def bearer(request: web.Request, policy: Policy) -> tuple[str | None, bool]:
    """The credentials, and whether they came in the query: ``Authorization:
    Bearer …``; on a route whose policy says ``query_token``, also
    ``?access_token=`` (a browser cannot set headers on a WebSocket)."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None, False
    if isinstance(policy, Scoped) and policy.query_token:
        return request.query.get("access_token") or None, True
    return None, False


def unauthorized(reason: str) -> Problem:
    p = Problem(401, "unauthorized", [{"field": "Authorization", "reason": reason}])
    p.headers["WWW-Authenticate"] = 'Bearer realm="tidings"'
    return p


def forbidden(reason: str) -> Problem:
    return Problem(403, "forbidden", [{"field": "Authorization", "reason": reason}])


def refusal(principal: Principal, policy: Policy, user_id: str | None = None) -> str | None:
    """Why ``principal`` may not do what a route with ``policy`` does for
    ``user_id`` (the path's ``{user_id}``, or the owner a ``UserOwned``
    handler found; None: not known yet), or None when it may. The
    authorization middleware and GraphQL's fields (engine/http/graphql) both
    ask here."""
    if isinstance(policy, (Authenticated, Public, Ops)):
        return None if isinstance(policy, Authenticated) else "not a route for keys or tokens"
    if principal.kind == "key":
        return None if principal.allows(policy.scope) else f"this key lacks the scope {policy.scope!r}"
    if isinstance(policy, UserOwned) and user_id is None:
        return None  # the handler checks the owner once it knows it (owner_check)
    if isinstance(policy, UserOwned) or policy.user:
        return None if user_id == principal.id else "this token is for another user"
    return "an end-user token cannot call this route"


def is_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def is_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def owner_check(request: web.Request, user_id: str) -> None:
    """For ``UserOwned`` routes: an end-user token may reach only its own user's
    resources (the handler calls this once it knows the owner)."""
    p: Principal | None = request.get(PRINCIPAL)
    if p is not None and p.kind == "user" and p.id != user_id:
        raise forbidden("this token is for another user")


def actor(request: web.Request) -> str:
    """Who the audit log names: the authenticated principal, never a header."""
    p: Principal | None = request.get(PRINCIPAL)
    return p.label if p is not None else "anonymous(auth off)"


@web.middleware
async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route
    if route.resource is None:  # 404 / 405: nothing to authorize
        return await handler(request)
    policy = request.app[POLICIES].get((request.method, route.resource.canonical))
    if policy is None:
        raise forbidden("no access policy is declared for this route")
    engine = request.app[ENGINE]
    if isinstance(policy, Public):
        return await handler(request)
    if isinstance(policy, Ops):
        if engine.cfg.http.ops_access == "loopback":
            if not is_loopback(request):
                raise forbidden("only loopback clients (http.ops_access = \"loopback\")")
            return await handler(request)
        policy = Scoped("ops:read")
    if not engine.cfg.http.auth:  # only ever on a loopback-only listener (checked at start)
        return await handler(request)
    credentials, in_query = bearer(request, policy)
    if credentials is None:
        if isinstance(policy, Authenticated) and policy.ws_init and is_upgrade(request):
            return await handler(request)  # it authenticates in its first message
        raise unauthorized("missing bearer credentials")
    principal = await engine.auth.authenticate(credentials)
    if principal is None or (in_query and principal.kind != "user"):  # keys never travel in URLs
        raise unauthorized("invalid, expired or revoked credentials")
    request[PRINCIPAL] = principal
    request[RATE_KEY] = (principal.kind, principal.id)
    why = refusal(principal, policy, None if isinstance(policy, UserOwned) else request.match_info.get("user_id"))
    if why is not None:
        raise forbidden(why)
    return await handler(request)


__all__ = ["POLICIES", "ROUTES", "Authenticated", "Link", "Media", "Ops", "Param", "Public", "Route", "Scoped", "UserOwned",
           "actor", "authorize", "is_loopback", "is_upgrade", "owner_check", "refusal", "register"]
