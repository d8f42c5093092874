"""``POST /v1/notifications/{id}/events``: a client (a mobile app, a web page)
reports that the user opened or clicked a notification on one channel, or
converted (did what it asked: what an A/B experiment's "converted" metric counts,
policy/experiments.py).

Body ``{"channel": "push", "type": "opened" | "clicked" | "converted", "at"?: <epoch s>}``.
Answers (errors as ``{"error", "errors": [{"field", "reason"}]}``):

- 201 ``{"id", "channel", "type", "at", "duplicate": false}``: stored;
- 200, the same with ``"duplicate": true`` and the stored ``at``: that event
  was reported before (only the first of each type per channel is kept);
- 400: the id is not a UUID, or the body is not JSON;
- 422: a field breaks the schema, or ``at`` is in the future;
- 404: no outcome recorded for the notification (unknown, or still in
  flight: report again), or none on that channel;
- 409: that channel was not sent (suppressed, deferred, failed, ...), so
  there was nothing to open.

See ``stores.engagement`` for what is stored and what it changes.
"""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from engine.http.access import Route, UserOwned, owner_check, register
from engine.http.common import ENGINE, UUID_PATH, Problem, decode, path_uuid, read_json, reply
from policy.types import Channel
from stores import engagement
from stores.engagement import Engagement, EventType, Report

_report = msgspec.json.Decoder(Report)


class EventRecorded(msgspec.Struct):
    """The event as stored: ``at`` is the stored time (epoch seconds); ``duplicate`` when that type was
    reported on that channel before (only the first is kept: 200 instead of 201)."""

    id: str
    channel: Channel
    type: EventType
    at: float | None
    duplicate: bool

CHANNELS_SQL = "SELECT channel, status, user_id FROM delivery_tracking WHERE notification_id = $1 ORDER BY channel"


async def post_event(request: web.Request) -> web.Response:
    """Report that the user opened, clicked or converted on a notification on one channel.

    201 when stored; 200 with ``duplicate: true`` and the stored ``at`` when that
    type was reported on that channel before. 404 while no outcome is recorded
    for the notification (report again later) or it has none on that channel;
    409 when that channel was not sent (nothing to open); 422 when ``at`` is in
    the future."""
    engine = request.app[ENGINE]
    nid = path_uuid(request)
    report = decode(_report, await read_json(request), "event")
    now = time.time()
    error = engagement.clock_error(report, now)
    if error is not None:
        raise Problem(422, "invalid event", [error])
    async with engine.pool.acquire() as conn:
        rows = {r["channel"]: r for r in await conn.fetch(CHANNELS_SQL, nid)}
        if not rows:
            raise Problem(404, "not found", [{"field": "id", "reason": "no outcome recorded (unknown, or still "
                                                                       "in flight: report again later)"}])
        owner_check(request, next(iter(rows.values()))["user_id"])  # an end-user token: its own only
        row = rows.get(report.channel)
        if row is None:
            raise Problem(404, "not found", [{"field": "$.channel", "reason": f"notification has no {report.channel!r} "
                                              f"delivery (its channels: {', '.join(rows)})"}])
        if row["status"] not in engagement.OPENABLE:
            raise Problem(409, "not sent", [{"field": "$.channel", "reason": f"{report.channel!r} was not sent "
                                             f"(status {row['status']!r}): there was nothing to open"}])
        at = now if report.at is None else report.at
        event = Engagement(nid, row["user_id"], report.channel, report.type, at, "api")
        new = await engagement.record(conn, [event])
        request.app[ENGINE].feed.add([event], new)
        at = await engagement.stored_at(conn, nid, report.channel, report.type)  # as stored: never before accepted
    return reply(EventRecorded(id=str(nid), channel=report.channel, type=report.type, at=at, duplicate=not new),
                 status=201 if new else 200)


ROUTES = [
    Route("POST", "/v1/notifications/{id}/events", post_event, UserOwned("events:write"), params=UUID_PATH,
          body=Report, answers={201: EventRecorded, 200: EventRecorded}, errors=(404, 409),
          example={"channel": "push", "type": "opened"}),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)


__all__ = ["ROUTES", "add_routes", "post_event"]
