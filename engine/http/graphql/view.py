"""``/graphql``: strawberry's aiohttp view, held to the API's rules.

- ``POST /graphql`` takes ``{"query", "variables", "operationName"}`` as
  ``application/json`` (415 otherwise; a body that is not such an object is
  the 400/422 REST answers, naming the field) and answers the GraphQL result,
  errors included, with 200.
- ``GET /graphql`` is the WebSocket (``graphql-transport-ws`` only; the older
  ``graphql-ws`` is not offered); a plain GET is a 400 (queries go by POST).
- No GraphiQL page: it loads its scripts from a CDN, which the API never
  serves (/docs ships its files). Introspection is on: only authenticated
  callers reach it, and the schema is no secret (it is the API).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
from aiohttp import web
from strawberry import Schema
from strawberry.aiohttp.views import GraphQLView, HTTPException  # the view's own (strawberry moves it between versions)
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler

from engine.http.access import is_upgrade
from engine.http.common import ENGINE, Problem, decode, read_json
from engine.http.graphql import limits
from engine.http.graphql.auth import Refused, connect, context_of, count
from engine.http.graphql.errors import Answers
from engine.http.graphql.schema import Mutation, Query, Subscription
from engine.http.inbox import HEARTBEAT_S
from engine.http.sockets import SOCKETS

MAX_OPERATIONS = 10  # operations running at once on one WebSocket
INIT_WAIT_S = 10  # a WebSocket that sends no connection_init by then is closed (4408)


class GraphQLRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A GraphQL request: the document, its variables, and which operation of it to run."""

    query: str
    variables: dict[str, Any] | None = None
    operationName: str | None = None
    extensions: dict[str, Any] | None = None


class GraphQLAnswer(msgspec.Struct, omit_defaults=True):
    """A GraphQL result: ``data``, and ``errors`` each with its ``message``, ``path`` and ``extensions``
    (``code``: the HTTP status REST would answer, ``errors``: each field and reason)."""

    data: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None
    extensions: dict[str, Any] | None = None


_request = msgspec.json.Decoder(GraphQLRequest)


class QuietSchema(Schema):
    def process_errors(self, errors, execution_context=None) -> None:
        """Errors are logged where they are answered (engine/http/graphql/errors.py):
        only the unexpected ones, not every refusal and syntax error a client sends."""


class Transport(BaseGraphQLTransportWSHandler):
    """graphql-transport-ws, each operation counted against the caller's rate limit."""

    async def handle_subscribe(self, message) -> None:
        principal = self.context.get("principal") if self.connection_acknowledged else None
        if principal is not None:
            try:
                await count(self.context["engine"], principal)
            except Refused as e:
                await self.send_message({"id": message["id"], "type": "error",
                                         "payload": [{"message": e.reason, "extensions": {"code": 429}}]})
                return
        await super().handle_subscribe(message)


class View(GraphQLView):
    graphql_transport_ws_handler_class = Transport

    def __init__(self, allowed_origins: list[str]):
        super().__init__(schema(), graphql_ide=None, allow_queries_via_get=False,
                         subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
                         connection_init_wait_timeout=timedelta(seconds=INIT_WAIT_S),
                         max_subscriptions_per_connection=MAX_OPERATIONS, allowed_origins=allowed_origins)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            decode(_request, await read_json(request), "GraphQL request")  # 415, 400, 422 as REST answers them
            return await self._run(request)
        if not is_upgrade(request):
            raise Problem(400, "not a WebSocket", [{"field": "$", "reason": "GET /graphql is the graphql-transport-ws "
                                                    "WebSocket; send queries and mutations by POST"}])
        # counted in http.ws_total with the inbox sockets (its user is known only after connection_init)
        with request.app[SOCKETS].held(None, request.app[ENGINE].cfg.http):
            return await self._run(request)

    async def _run(self, request: web.Request) -> web.StreamResponse:
        """strawberry's own refusals (an operation it cannot pick, say) in the API's error shape."""
        try:
            return await self.run(request=request)
        except HTTPException as e:
            raise Problem(e.status_code, "bad GraphQL request", [{"field": "$", "reason": e.reason}]) from None

    async def create_websocket_response(self, request: web.Request, subprotocol: str | None) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=[subprotocol] if subprotocol else [], heartbeat=HEARTBEAT_S,
                                   max_msg_size=64 * 1024)
        await ws.prepare(request)
        return ws

    async def reject_websocket(self, request: web.Request) -> web.Response:
        raise Problem(403, "forbidden", [{"field": "Origin", "reason": "this origin is not allowed "
                                          "(http.allowed_origins)"}])

    async def get_context(self, request: web.Request, response: Any) -> dict[str, Any]:
        return context_of(request, response)

    async def on_ws_connect(self, context: dict[str, Any]) -> None:
        try:
            await connect(context)
        except Refused as e:
            if e.code != 4403:  # strawberry closes a rejection with 4403; anything else is closed here first
                await context["response"].close(code=e.code, message=e.reason.encode())
            raise ConnectionRejectionError({"reason": e.reason}) from None


def schema() -> Schema:
    return QuietSchema(query=Query, mutation=Mutation, subscription=Subscription,
                       extensions=[Answers, *limits.extensions()])


__all__ = ["GraphQLAnswer", "GraphQLRequest", "View", "schema"]
