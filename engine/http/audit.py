"""The audit log for administrators (engine/audit.py):

- ``GET /v1/audit/verify`` (``?user_id=``): walk every chain (or one) and check
  the newest signed checkpoint; 200 with ``{"ok", "chains", "rows", "checkpoint",
  "broken": [{"user_id", "row_id", "problem"}]}`` either way (a broken chain is
  the answer, not an error).
- ``POST /v1/audit/checkpoints``: sign every chain's last row now; 201.

Both need an ``admin`` key: they read and sign across every user."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from engine import audit as signed
from engine.http.access import Param, Route, Scoped, register
from engine.http.common import ENGINE, MAX_TEXT, Problem, reply, unprintable


class Break(msgspec.Struct):
    """The first row of a chain that does not verify (``user_id`` ``*``: the checkpoints themselves)."""

    user_id: str
    row_id: int | None
    problem: str


class CheckpointChecked(msgspec.Struct):
    """The newest signed checkpoint, checked against: whether it is valid, and older ones no key could check."""

    id: int
    max_id: int
    chains: int
    key_id: str
    at: float
    valid: bool
    unchecked_older: int


class Verification(msgspec.Struct):
    """Whether every chain (or one user's) verifies: chains and rows walked, the checkpoint, and each break."""

    ok: bool
    chains: int
    rows: int
    checkpoint: CheckpointChecked | None
    broken: list[Break]


class Checkpoint(msgspec.Struct):
    """A signed checkpoint just taken: its id, the log's last row, the chains and the signing key's id."""

    id: int
    max_id: int
    chains: int
    key_id: str


async def verify(request: web.Request) -> web.Response:
    """Verify the audit log's hash chains and the newest signed checkpoint.

    Every chain, or one user's (``?user_id=``). A broken chain is the answer
    (``ok`` false, each break named), not an error."""
    engine = request.app[ENGINE]
    user_id = request.query.get("user_id")
    if user_id is not None and (not user_id or unprintable(user_id)):
        raise Problem(400, "bad query", [{"field": "user_id", "reason": "1 to 256 printable characters"}])
    key = signed.signing_key(engine.cfg.engine.home, create=False)
    async with engine.pool.acquire() as conn:
        report = await signed.verify(conn, [key.public_key()] if key is not None else [], user_id,
                                     signed.max_age(engine.cfg))
    return reply(msgspec.convert(report.as_dict(), Verification))


async def checkpoint(request: web.Request) -> web.Response:
    """Sign every chain's last row now (a checkpoint).

    409 if the checkpoints so far are signed by another key."""
    engine = request.app[ENGINE]
    key = signed.signing_key(engine.cfg.engine.home)
    async with engine.pool.acquire() as conn:
        try:
            done = await signed.checkpoint(conn, key)
        except signed.KeyMismatch as e:
            raise Problem(409, "another signing key", [{"field": "$", "reason": str(e)}]) from None
    return reply(Checkpoint(**done), status=201)


USER_QUERY = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT, pattern=r"^[^\x00-\x1f\x7f]+$")]
ROUTES = [
    Route("GET", "/v1/audit/verify", verify, Scoped("admin"), answers={200: Verification},
          query=(Param("user_id", USER_QUERY, "Only this user's chain"),)),
    Route("POST", "/v1/audit/checkpoints", checkpoint, Scoped("admin"), answers={201: Checkpoint}, errors=(409,)),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
