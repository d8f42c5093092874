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
from engine.http.common import ENGINE, USER_PATH, Problem, decode, path_user, read_json, reply
from stores import erasure


class ErasureReceipt(msgspec.Struct):
    """What an erasure did: when, at whose request, the rows deleted per table, the key destroyed, its audit row."""

    id: str
    user_id: str
    erased_at: str  # ISO 8601, UTC
    requested_by: str | None
    deleted: dict[str, int]  # rows deleted, by table
    key_destroyed: bool
    audit_row: int
    audit_hash: str  # hex


class LegalHold(msgspec.Struct):
    """A user's legal hold as it now is: its reason, or null when lifted."""

    user_id: str
    legal_hold: str | None


async def erase_user(request: web.Request) -> web.Response:
    """Erase a user (GDPR Art. 17, CCPA) and answer the receipt.

    Their data key is destroyed and their rows deleted, through the owning
    UserShard. A user erased already answers the same receipt again; a user who
    never was, 404; a user under a legal hold, 409 (nothing erased)."""
    engine = request.app[ENGINE]
    user_id = path_user(request)
    done = await engine.shard_for(user_id).erase.remote(user_id, actor(request))
    if "held" in done:
        raise Problem(409, "under legal hold", [{"field": "user_id", "reason": "the user is under a legal hold: "
                                                                               "nothing was erased"}])
    if "receipt" not in done:
        raise Problem(404, "not found", [{"field": "user_id", "reason": "no such user"}])
    response = reply(msgspec.convert(done["receipt"], ErasureReceipt))
    response.headers["Cache-Control"] = "no-store"
    return response


class Hold(msgspec.Struct, forbid_unknown_fields=True):
    """Why a user is held: a case or ticket reference."""

    # a case or ticket reference: no personal data belongs here (it stays readable in the audit log)
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+\Z")]


_hold = msgspec.json.Decoder(Hold)


async def place_hold(request: web.Request) -> web.Response:
    """Place a legal hold on a user (audited): they cannot be erased until it is lifted."""
    return await _hold_change(request, decode(_hold, await read_json(request), "legal hold").reason)


async def lift_hold(request: web.Request) -> web.Response:
    """Lift a user's legal hold (audited)."""
    return await _hold_change(request, None)


async def _hold_change(request: web.Request, reason: str | None) -> web.Response:
    engine = request.app[ENGINE]
    user_id = path_user(request)
    async with engine.pool.acquire() as conn:
        if not await erasure.set_hold(conn, engine.ring, user_id, reason, actor(request)):
            raise Problem(404, "not found", [{"field": "user_id", "reason": "no such user"}])
    return reply(LegalHold(user_id=user_id, legal_hold=reason))


ROUTES = [
    Route("DELETE", "/v1/users/{user_id}", erase_user, Scoped("users:erase", user=True), params=USER_PATH,
          errors=(404, 409), answers={200: ErasureReceipt}, headers={"Cache-Control": "no-store"}),
    Route("PUT", "/v1/users/{user_id}/legal-hold", place_hold, Scoped("users:hold"), params=USER_PATH, body=Hold,
          errors=(404,), answers={200: LegalHold}, example={"reason": "case 2026-114"}),
    Route("DELETE", "/v1/users/{user_id}/legal-hold", lift_hold, Scoped("users:hold"), params=USER_PATH, errors=(404,),
          answers={200: LegalHold}),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
