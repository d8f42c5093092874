"""Segments: saved audience filters (``policy.segments``: the language, its
fields and operators), and counting an audience before using it. A broadcast
takes ``"audience": {"segment": "<id>"}`` (or ``{"where": …}``, or either with a
``topic``); ``POST /v1/preference-templates/{id}/apply`` takes a segment too."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from engine import audiences, dry_runs
from engine.auth import PRINCIPAL
from engine.dry_runs import Busy
from engine.http.access import Param, Route, Scoped, actor, register
from engine.http.common import ENGINE, Problem, decode, path_param, query_after, query_int, read_json, reply
from policy import segments
from policy.audience import Audience, Name, Where
from policy.types import ONE_LINE
from stores import segments as store

SEGMENT_PATH = {"segment_id": Name}
EXAMPLE = {"description": "Recently active in Europe, marketing email allowed",
           "where": {"all": [{"field": "timezone", "op": "prefix", "value": "Europe/"},
                             {"field": "preference", "op": "enabled", "value": "email:marketing"},
                             {"field": "last_engaged", "op": "within_days", "value": 30}]}}


class SegmentBody(msgspec.Struct, forbid_unknown_fields=True):
    """A segment to save: its filter (``where``) and what it is for."""

    where: Where
    description: Annotated[str, msgspec.Meta(max_length=500, pattern=ONE_LINE)] = ""


class Segment(msgspec.Struct):
    segment_id: str
    description: str
    where: Where
    created_at: float
    updated_at: float


class Segments(msgspec.Struct):
    """A page of segments in id order; ``next``: the ``after`` of the next page (none: the last)."""

    segments: list[Segment]
    next: str | None


class Deleted(msgspec.Struct):
    segment_id: str
    deleted: bool


class Count(msgspec.Struct):
    """How many users the audience takes now, up to five of them (for a caller
    with ``decisions:read`` too, as a dry run's samples), and how long counting took."""

    users: int
    sample: list[str]
    seconds: float


_body = msgspec.json.Decoder(SegmentBody)
_audience = msgspec.json.Decoder(Audience)


def path_segment(request: web.Request) -> str:
    return path_param(request, "segment_id", Name, "segment id")


def invalid(e: segments.Invalid, what: str) -> Problem:
    return Problem(422, f"invalid {what}", [{"field": p, "reason": r} for p, r in e.errors])


def answer(s: store.Saved) -> Segment:
    return Segment(s.segment_id, s.description, s.where, s.created_at, s.updated_at)


async def put_segment(request: web.Request) -> web.Response:
    """Save a segment (201 when new, 200 when it replaced one). Broadcasts already
    submitted keep the filter they were submitted with."""
    sid = path_segment(request)
    body = decode(_body, await read_json(request), "segment")
    try:
        segments.check(body.where, "$.where")
    except segments.Invalid as e:
        raise invalid(e, "segment") from None
    async with request.app[ENGINE].pool.acquire() as conn:
        saved, created = await store.put(conn, sid, body.description, body.where, actor(request))
    return reply(answer(saved), status=201 if created else 200)


async def get_segment(request: web.Request) -> web.Response:
    """A saved segment: its filter and description."""
    sid = path_segment(request)
    async with request.app[ENGINE].pool.acquire() as conn:
        saved = await store.get(conn, sid)
    if saved is None:
        raise Problem(404, "not found", [{"field": "segment_id", "reason": "no such segment"}])
    return reply(answer(saved))


Limit = Annotated[int, msgspec.Meta(ge=1, le=500)]


async def list_segments(request: web.Request) -> web.Response:
    """Saved segments, a page at a time in id order."""
    after = query_after(request, Name)
    limit = query_int(request, "limit", 100, 1, 500)
    async with request.app[ENGINE].pool.acquire() as conn:
        rows = await store.listed(conn, after, limit)
    return reply(Segments([answer(s) for s in rows], rows[-1].segment_id if len(rows) == limit else None))


async def delete_segment(request: web.Request) -> web.Response:
    """Delete a saved segment (broadcasts already submitted keep its filter)."""
    sid = path_segment(request)
    async with request.app[ENGINE].pool.acquire() as conn:
        if not await store.delete(conn, sid):
            raise Problem(404, "not found", [{"field": "segment_id", "reason": "no such segment"}])
    return reply(Deleted(sid, True))


async def counted(request: web.Request, audience: Audience, at: str) -> web.Response:
    engine = request.app[ENGINE]
    try:
        audience = await audiences.resolved(engine, audience, at)
        users, sample, seconds = await audiences.count(engine, audience)
    except segments.Invalid as e:
        raise invalid(e, "audience") from None
    except audiences.UnknownSegment:
        if at == "segment_id":  # the path's
            raise Problem(404, "not found", [{"field": "segment_id", "reason": "no such segment"}]) from None
        raise Problem(422, "invalid audience", [{"field": f"{at}.segment", "reason": "no such segment"}]) from None
    except Busy:
        raise Problem(429, "busy", [{"field": "$", "reason": "an audience count or broadcast dry run is running on "
                                     "this engine: try again when it has answered"}]) from None
    except TimeoutError:
        raise Problem(504, "took too long", [{"field": "$", "reason": "the shards did not answer in time"}]) from None
    # who is in it shows their consent, preferences and suppressions: as a dry run's samples do
    p = request.get(PRINCIPAL)
    return reply(Count(users, sample if p is None or p.allows(dry_runs.SCOPE) else [], seconds))


async def count_segment(request: web.Request) -> web.Response:
    """How many users a saved segment takes now (every user's state read, as a broadcast would)."""
    return await counted(request, Audience(segment=path_segment(request)), "segment_id")


async def count_audience(request: web.Request) -> web.Response:
    """How many users an audience (a topic, a segment or a filter, or a topic and
    one of those) takes now."""
    return await counted(request, decode(_audience, await read_json(request), "audience"), "$")


PAGE = (Param("after", Name, "Segments after this id (the previous page's next)"),
        Param("limit", Limit, "At most this many (default 100)"))
ROUTES = [
    Route("PUT", "/v1/segments/{segment_id}", put_segment, Scoped("segments:write"), params=SEGMENT_PATH,
          body=SegmentBody, answers={200: Segment, 201: Segment}, example=EXAMPLE),
    Route("GET", "/v1/segments/{segment_id}", get_segment, Scoped("segments:read"), params=SEGMENT_PATH,
          answers={200: Segment}, errors=(404,)),
    Route("GET", "/v1/segments", list_segments, Scoped("segments:read"), query=PAGE, answers={200: Segments}),
    Route("DELETE", "/v1/segments/{segment_id}", delete_segment, Scoped("segments:write"), params=SEGMENT_PATH,
          answers={200: Deleted}, errors=(404,)),
    Route("GET", "/v1/segments/{segment_id}/count", count_segment, Scoped("segments:read"), params=SEGMENT_PATH,
          answers={200: Count}, errors=(404, 429, 504)),
    Route("POST", "/v1/audiences/count", count_audience, Scoped("segments:read"), body=Audience,
          answers={200: Count}, errors=(429, 504), example={"topic": "company-42", "where": EXAMPLE["where"]}),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
