"""GraphQL at ``/graphql`` (strawberry on aiohttp): the same users,
preferences, notifications, templates and analytics as the REST routes, read
and changed by the same functions, allowed by the same policies; limits on
depth, size and cost; subscriptions over graphql-transport-ws. See view.py
(the endpoint), schema.py (the fields), auth.py (who may), limits.py (how
much), errors.py (what a client sees of a failure)."""

from __future__ import annotations

from aiohttp import web

from engine.http.access import Authenticated, Route, register
from engine.http.common import ENGINE
from engine.http.graphql.view import GraphQLAnswer, GraphQLRequest, View

WHY = "each field is allowed as the REST route doing the same is (its scope, or an end-user token for its own user)"
EXAMPLE = {"query": "query($u: String!) { effectivePreferences(userId: $u) { version effective { channel category "
                    "enabled why { field level } } } }", "variables": {"u": "u-1042"}}


def add_routes(app: web.Application) -> None:
    view = View(app[ENGINE].cfg.http.allowed_origins)

    async def graphql(request: web.Request) -> web.StreamResponse:
        """Run a GraphQL query or mutation.

        The body is ``{"query", "variables", "operationName"}``; the answer is the
        GraphQL result (200, errors included: each error's ``extensions.code`` is
        the status REST would answer). Documents deeper than 6, longer than 2000
        tokens, with more than 15 aliases or costing more than 1000 are refused
        before they run."""
        return await view(request)

    async def graphql_ws(request: web.Request) -> web.StreamResponse:
        """GraphQL subscriptions over a WebSocket (graphql-transport-ws).

        Authenticates in ``connection_init``'s payload ``{"authorization":
        "Bearer …"}`` (or this request's header); refused with close code 4403,
        4429 over the rate limit. Subscriptions: ``notificationStatus(id)``,
        ``inbox(userId, after)``; queries and mutations run here too. A plain GET
        is a 400."""
        return await view(request)

    register(app, [
        Route("POST", "/graphql", graphql, Authenticated(WHY), body=GraphQLRequest, answers={200: GraphQLAnswer},
              example=EXAMPLE, tags=("graphql",)),
        Route("GET", "/graphql", graphql_ws, Authenticated(WHY, ws_init=True), answers={101: None}, errors=(400,),
              tags=("graphql",)),
    ])


__all__ = ["add_routes"]
