"""``POST /v1/tokens``: a key with ``tokens:issue`` mints an end-user token for
one user (a product's front end, the hosted preference center). Body
``{"user_id": "...", "ttl_s": 900}`` (at most ``http.token_ttl_max_s``) → 201
``{"token", "user_id", "expires_at"}``. The token reaches only that user's
preferences, effective preferences, inbox and engagement events."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from engine.http.access import Route, Scoped, register
from engine.http.common import ENGINE, decode, read_json, reply
from policy.types import UserId


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Whom a token is for, and for how many seconds (at most ``http.token_ttl_max_s``)."""

    user_id: UserId
    ttl_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 900.0


_request = msgspec.json.Decoder(TokenRequest)


class Token(msgspec.Struct):
    """An end-user token, its user, and when it expires (epoch seconds)."""

    token: str
    user_id: str
    expires_at: float


async def mint(request: web.Request) -> web.Response:
    """Mint an end-user token for one user.

    The token reaches only that user's preferences, effective preferences, inbox
    and engagement events (a product's front end, the hosted preference center)."""
    engine = request.app[ENGINE]
    t = decode(_request, await read_json(request), "token request")
    token, expires_at = await engine.auth.mint(t.user_id, t.ttl_s)
    return reply(Token(token=token, user_id=t.user_id, expires_at=expires_at), status=201)


ROUTES = [Route("POST", "/v1/tokens", mint, Scoped("tokens:issue"), body=TokenRequest, answers={201: Token},
                example={"user_id": "u-1042", "ttl_s": 900})]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
