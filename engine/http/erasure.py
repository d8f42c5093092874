"""Erasure and legal holds (stores/erasure.py, docs/privacy.md):

- ``DELETE /v1/users/{user_id}``: erase a person (GDPR Art. 17, CCPA): their
  data key destroyed, their rows deleted, through the owning UserShard, which
  forgets them in the same call. 200 with the receipt (the same receipt again
  for a user erased already); 404 for a user that never was; 409 under a
  legal hold. A key with ``users:erase``, or the person's own end-user token.
- ``PUT /v1/users/{user_id}/legal-hold`` ``{"reason": "case 2026-114"}`` and
  ``DELETE …/legal-hold``: place and lift a hold (``users:hold``), audited.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from engine.http.access import Route, Scoped, actor, register
from engine.http.common import ENGINE, Problem, decode, path_user, read_json, reply
from stores import erasure


async def erase_user(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    user_id = path_user(request)
    done = await engine.shard_for(user_id).erase.remote(user_id, actor(request))
    if "held" in done:
        raise Problem(409, "under legal hold", [{"field": "user_id", "reason": "the user is under a legal hold: "
                                                                               "nothing was erased"}])
    if "receipt" not in done:
        raise Problem(404, "not found", [{"field": "user_id", "reason": "no such user"}])
    response = reply(done["receipt"])
    response.headers["Cache-Control"] = "no-store"
    return response


class Hold(msgspec.Struct, forbid_unknown_fields=True):
    # a case or ticket reference: no personal data belongs here (it stays readable in the audit log)
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+\Z")]


_hold = msgspec.json.Decoder(Hold)


async def place_hold(request: web.Request) -> web.Response:
    return await _hold_change(request, decode(_hold, await read_json(request), "legal hold").reason)


async def lift_hold(request: web.Request) -> web.Response:
    return await _hold_change(request, None)


async def _hold_change(request: web.Request, reason: str | None) -> web.Response:
    engine = request.app[ENGINE]
    user_id = path_user(request)
    async with engine.pool.acquire() as conn:
        if not await erasure.set_hold(conn, engine.ring, user_id, reason, actor(request)):
            raise Problem(404, "not found", [{"field": "user_id", "reason": "no such user"}])
    return reply({"user_id": user_id, "legal_hold": reason})


ROUTES = [
    Route("DELETE", "/v1/users/{user_id}", erase_user, Scoped("users:erase", user=True)),
    Route("PUT", "/v1/users/{user_id}/legal-hold", place_hold, Scoped("users:hold")),
    Route("DELETE", "/v1/users/{user_id}/legal-hold", lift_hold, Scoped("users:hold")),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
