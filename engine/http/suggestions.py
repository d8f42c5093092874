"""Preference suggestions and engagement drift (``policy.suggestions``).

- ``GET /v1/users/{user_id}/preferences/suggestions``: what the person's engagement
  over the last ``LOOKBACK_DAYS`` suggests changing, each with its evidence and the
  rows it would set;
- ``POST /v1/users/{user_id}/preferences/suggestions/{suggestion_id}``: accept one,
  applied through the audited preference path (a PATCH setting its rows, the caller
  as the actor); 404 when it is no longer suggested (the evidence changed, or it was
  accepted already);
- ``GET /v1/analytics/drift?days=7``: the population's open rate per (category,
  channel) in the last ``days`` against the ``days`` before, with a significance test.

The person's own token may read and accept their suggestions, as it may change
their preferences."""

from __future__ import annotations

import time
from typing import Annotated

import msgspec
from aiohttp import web

from actors.user_prefs import PrefCommand
from engine.http.access import Param, Route, Scoped, actor, register
from engine.http.common import ENGINE, Problem, path_param, query_int, reply
from engine.http.prefs import (
    ETAG,
    IF_MATCH,
    USER_PATH,
    PreferencesAnswer,
    PreferencesConflict,
    change,
    conflict,
    get_doc,
    if_match,
    path_user,
    with_etag,
)
from policy import suggestions, wire
from policy.suggestions import ChannelUse, Drift, Suggestion
from policy.validate import PreferencesPatch
from stores import analytics, engagement

LOOKBACK_DAYS = 90
HORIZON_S = 2 * 86_400.0  # drift: an open counts within this long of its send, and the windows end this long ago
SuggestionId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{12}\Z")]


class Suggestions(msgspec.Struct):
    """``version``: the preferences' the suggestions were made from (also the ``ETag``);
    accepting with it in ``If-Match`` applies only if nothing changed since."""

    user_id: str
    version: int
    lookback_days: int
    suggestions: list[Suggestion]


class DriftReport(msgspec.Struct):
    """Open rates per (category, channel): ``before`` is [from, middle), ``after``
    [middle, to); ``significant`` at 5% over all the pairs compared (Bonferroni)."""

    from_: float = msgspec.field(name="from")
    middle: float = 0.0
    to: float = 0.0
    pairs: list[Drift] = []


async def suggested(request: web.Request, user_id: str) -> tuple[int, list[Suggestion]]:
    """(the preferences' version, the suggestions made from it)."""
    engine = request.app[ENGINE]
    async with engine.pool.acquire() as conn:
        uses = [ChannelUse(*r) for r in await engagement.channel_use(conn, user_id,
                                                                       time.time() - LOOKBACK_DAYS * 86_400.0)]
    raw = await engine.shard_for(user_id).suggest.remote(user_id, wire.encode(uses), LOOKBACK_DAYS)
    return wire.decode(raw, tuple[int, list[Suggestion]])


async def get_suggestions(request: web.Request) -> web.Response:
    """What the person's engagement suggests changing in their preferences: each
    suggestion with its evidence and the rows accepting it sets; the preferences'
    version they were made from as the ``ETag``."""
    user_id = path_user(request)
    version, found = await suggested(request, user_id)
    resp = reply(Suggestions(user_id, version, LOOKBACK_DAYS, found))
    resp.headers["ETag"] = f'"{version}"'
    return resp


async def accept(request: web.Request) -> web.Response:
    """Accept a suggestion: its rows are set through the audited preference path
    (the change feed and audit log name the caller), only if the preferences are
    still at the version it was made from (and at ``If-Match``'s, when given: 409
    with the current ones otherwise). 404 when it is not suggested now. Answers the
    preferences as changed, their version as the ``ETag``."""
    user_id = path_user(request)
    sid = path_param(request, "suggestion_id", SuggestionId, "suggestion id")
    wanted = if_match(request)
    engine = request.app[ENGINE]
    for attempt in range(2):  # without If-Match, a change between the read and the write is read again once
        version, found = await suggested(request, user_id)
        chosen = next((s for s in found if s.id == sid), None)
        if wanted is not None and wanted != version:
            return conflict(await get_doc(engine, user_id))
        if chosen is None:
            raise Problem(404, "not found", [{"field": "suggestion_id", "reason": "not suggested now (the evidence "
                                              "changed, or it was accepted)"}])
        # at the version the rows were merged from: a change made meanwhile is not overwritten
        cmd = PrefCommand(user_id=user_id, patch=PreferencesPatch(set=chosen.set), actor=actor(request),
                          source="suggestion", if_match=version)
        doc, stale = await change(engine, cmd)
        if not stale:
            return with_etag(doc)
        if wanted is not None or attempt:
            return conflict(doc)
    raise AssertionError("unreachable")


async def get_drift(request: web.Request) -> web.Response:
    """The population's open rate per (category, channel) in the ``days`` ending two days
    ago against the ``days`` before, an open counted within two days of its send (so
    every send has had as long), with at least ``min_sent`` sends in each: the
    difference, its interval and the p-value of a two-proportion z-test; significant
    changes first."""
    days = query_int(request, "days", 7, 1, 30)
    min_sent = query_int(request, "min_sent", 30, 1, 1_000_000)
    engine = request.app[ENGINE]
    to = time.time() - HORIZON_S  # every send counted has had the whole horizon to be opened
    middle, start = to - days * 86_400.0, to - 2 * days * 86_400.0
    error = analytics.window_error(start, to, None, engine.cfg.analytics)
    if error is not None:
        status, field, reason = error
        raise Problem(status, "invalid window", [{"field": "days", "reason": reason}])
    async with engine.pool.acquire() as conn:
        before, after = await analytics.windows(conn, start, middle, to, HORIZON_S)
    pairs = suggestions.drift([suggestions.Window(*w) for w in before], [suggestions.Window(*w) for w in after],
                              min_sent)
    return reply(DriftReport(from_=start, middle=middle, to=to, pairs=pairs))


SUGGESTION_PATH = {**USER_PATH, "suggestion_id": SuggestionId}
ROUTES = [
    Route("GET", "/v1/users/{user_id}/preferences/suggestions", get_suggestions,
          Scoped("preferences:read", user=True), params=USER_PATH, answers={200: Suggestions}, headers=ETAG),
    Route("POST", "/v1/users/{user_id}/preferences/suggestions/{suggestion_id}", accept,
          Scoped("preferences:write", user=True), params=SUGGESTION_PATH, query=IF_MATCH,
          answers={200: PreferencesAnswer, 409: PreferencesConflict}, errors=(400, 404), headers=ETAG),
    Route("GET", "/v1/analytics/drift", get_drift, Scoped("analytics:read"),
          query=(Param("days", Annotated[int, msgspec.Meta(ge=1, le=30)], "The windows' length (default 7)"),
                 Param("min_sent", Annotated[int, msgspec.Meta(ge=1, le=1_000_000)],
                       "Sends a pair needs in each window (default 30)")),
          answers={200: DriftReport}),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)


__all__ = ["ROUTES", "add_routes"]
