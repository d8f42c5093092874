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
from typing import Annotated, Literal, cast, get_args

import msgspec
from aiohttp import web

from engine.http.access import Param, Route, Scoped, register
from engine.http.common import ENGINE, Problem, reply
from policy.types import CHANNELS, Channel
from stores import analytics

DAY_S = 86400.0
MAX_EPOCH_S = 253402300800.0  # 10000-01-01: beyond it datetime cannot hold the time


Bucket = Literal["minute", "hour", "day"]
# see instant(): epoch seconds or ISO 8601
From = Annotated[str, msgspec.Meta(examples=["2024-05-29T00:00:00Z", "1716940800"])]
To = Annotated[str, msgspec.Meta(examples=["2024-05-30T00:00:00Z", "1717027200"])]


class ChannelCounts(msgspec.Struct, forbid_unknown_fields=True):
    """Outcomes by status; ``accepted`` = sent + delivered + bounced + complained (the provider took it);
    ``opened``, ``clicked``: how many of those the recipient opened, clicked."""

    sent: int
    delivered: int
    bounced: int
    complained: int
    failed: int
    suppressed: int
    deferred: int
    digested: int
    rejected: int
    cancelled: int
    accepted: int
    opened: int
    clicked: int


# The rows are stores.analytics.shape's, converted to the Structs here: their
# ``forbid_unknown_fields`` makes a key added there and not here fail loudly
# (the analytics tests) instead of vanishing from the answer.
if set(ChannelCounts.__struct_fields__) != {*analytics.STATUSES, "accepted", "opened", "clicked"} \
        or set(analytics.BUCKETS) != set(get_args(Bucket)):
    raise TypeError("engine.http.analytics describes other counts or buckets than stores.analytics makes")


class Rates(msgspec.Struct, forbid_unknown_fields=True):
    """``delivery_rate`` = (delivered + complained) / accepted; ``open_rate``, ``click_rate`` = opened,
    clicked / accepted; ``failure_rate`` = failed / (accepted + failed); null when the denominator is 0."""

    delivery_rate: float | None
    open_rate: float | None
    click_rate: float | None
    failure_rate: float | None


class Latency(msgspec.Struct, forbid_unknown_fields=True):
    """Milliseconds from accepted to the provider's answer, over the outcomes the provider took."""

    p50: float | None
    p95: float | None
    p99: float | None


class ChannelRow(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One channel and provider over the window, or over one bucket of it when a bucket was asked
    (``bucket``: its start, epoch seconds; absent otherwise)."""

    bucket: float | None = None
    channel: str
    provider: str | None
    total: int
    counts: ChannelCounts
    rates: Rates
    latency_ms: Latency | None
    avg_attempts: float | None


class ChannelReport(msgspec.Struct):
    """The window asked for (epoch seconds, ``to`` excluded), the bucket (null: one row per channel and
    provider for the whole window), and its rows, bucket by bucket."""

    from_: float = msgspec.field(name="from")
    to: float
    bucket: Bucket | None
    rows: list[ChannelRow]


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
    """Channel performance over a time window: outcomes, engagement, rates, latency.

    Per channel and provider (and per ``bucket`` when asked) over ``[from,
    to)``. A window longer than ``analytics.max_window_days`` (``from``) or with
    more than ``analytics.max_buckets`` buckets (``bucket``) is a 422 naming
    it; a bad value a 400."""
    q = request.query
    # present and empty is not a bucket: 400, as the document's enum says
    return reply(await report(request.app[ENGINE], q.get("from"), q.get("to"), q.get("bucket"), q.get("channel")))


async def report(engine, start_text: str | None, end_text: str | None, bucket: str | None,
                 channel: str | None) -> ChannelReport:
    """The report for the window as given (texts as ``instant`` reads them;
    None: the default), or the 400/422 naming what is wrong. The REST route
    and the GraphQL ``channelAnalytics`` field both read it here."""
    end = instant(end_text, "to") if end_text is not None else time.time()
    start = instant(start_text, "from") if start_text is not None else end - DAY_S
    problem = analytics.window_error(start, end, bucket, engine.cfg.analytics)
    if problem is not None:
        status, field, reason = problem
        raise Problem(status, "bad query" if status == 400 else "window too large", [{"field": field, "reason": reason}])
    if channel is not None and channel not in CHANNELS:
        raise Problem(400, "bad query", [{"field": "channel", "reason": f"one of {', '.join(CHANNELS)}"}])
    rows = await analytics.channels(engine.pool, start, end, bucket, channel)
    return ChannelReport(from_=start, to=end, bucket=cast(Bucket | None, bucket),
                         rows=msgspec.convert(rows, list[ChannelRow]))


ROUTES = [
    Route("GET", "/v1/analytics/channels", get_channels, Scoped("analytics:read"), answers={200: ChannelReport},
          errors=(422,), query=(
              Param("from", From, "The window's start: epoch seconds, or ISO 8601 (no zone: UTC); default 24 hours "
                                 "before `to`"),
              Param("to", To, "The window's end (excluded): epoch seconds, or ISO 8601 (no zone: UTC); default now"),
              Param("bucket", Bucket, "Cut the window into buckets of this size (UTC); default none: one row per "
                                      "channel and provider for the whole window"),
              Param("channel", Channel, "Only this channel"))),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)


__all__ = ["ROUTES", "add_routes", "get_channels", "instant", "report"]
