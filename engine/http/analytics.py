"""``GET /v1/analytics/channels``: channel performance over a window (see
``stores.analytics``).

Query: ``from`` and ``to`` (epoch seconds or ISO 8601; a time without a zone is
UTC; default the last 24 hours up to now), ``bucket`` (``minute``, ``hour``,
``day``; default none: one row per channel and provider for the whole window),
``channel`` (only that one). A bad value is a 400 naming the parameter; a
window longer than ``analytics.max_window_days`` (``from``) or with more than
``analytics.max_buckets`` buckets (``bucket``) is a 422 naming it.
"""

from __future__ import annotations

import datetime as dt
import math
import time

from aiohttp import web

from engine.http.access import Route, Scoped, register
from engine.http.common import ENGINE, Problem, reply
from policy.types import CHANNELS
from stores import analytics

DAY_S = 86400.0
MAX_EPOCH_S = 253402300800.0  # 10000-01-01: beyond it datetime cannot hold the time


def instant(text: str, name: str) -> float:
    """Epoch seconds from ``text`` (a number, or ISO 8601; no zone means UTC)."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not (math.isfinite(value) and 0 <= value < MAX_EPOCH_S):
            raise Problem(400, "bad query", [{"field": name, "reason": "epoch seconds between 0 and year 9999"}])
        return value
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise Problem(400, "bad query", [{"field": name, "reason": "expected epoch seconds or ISO 8601"}]) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    value = when.timestamp()
    if not 0 <= value < MAX_EPOCH_S:  # an offset can push year 1 or 9999 out of range
        raise Problem(400, "bad query", [{"field": name, "reason": "a time between 1970 and year 9999"}])
    return value


async def get_channels(request: web.Request) -> web.Response:
    q = request.query
    end = instant(q["to"], "to") if "to" in q else time.time()
    start = instant(q["from"], "from") if "from" in q else end - DAY_S
    bucket = q.get("bucket") or None
    problem = analytics.window_error(start, end, bucket, request.app[ENGINE].cfg.analytics)
    if problem is not None:
        status, field, reason = problem
        raise Problem(status, "bad query" if status == 400 else "window too large", [{"field": field, "reason": reason}])
    channel = q.get("channel") or None
    if channel is not None and channel not in CHANNELS:
        raise Problem(400, "bad query", [{"field": "channel", "reason": f"one of {', '.join(CHANNELS)}"}])
    rows = await analytics.channels(request.app[ENGINE].pool, start, end, bucket, channel)
    return reply({"from": start, "to": end, "bucket": bucket, "rows": rows})


ROUTES = [
    Route("GET", "/v1/analytics/channels", get_channels, Scoped("analytics:read")),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)


__all__ = ["ROUTES", "add_routes", "get_channels", "instant"]
