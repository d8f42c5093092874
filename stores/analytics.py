"""Channel performance over a time window, from the tracking rows and the
engagement events: per channel and provider (and per time bucket when asked),
how many outcomes of each status, how many were opened and clicked, the rates
those give, the provider-call latency and the attempts per delivery.

Rows count in the window their outcome was recorded in (``created_at``). A
notification's engagement counts with its row, whenever it was reported.
Buckets are cut in UTC.

Rates (``None`` when their denominator is 0):

- ``accepted`` = sent + delivered + bounced + complained: the provider took it;
- ``delivery_rate`` = (delivered + complained) / accepted -- a complaint comes
  from a recipient who had it (needs the provider's tracking webhooks or
  engagement; without them every accepted row stays ``sent``);
- ``open_rate``, ``click_rate`` = opened, clicked / accepted;
- ``failure_rate`` = failed / (accepted + failed): the provider calls that ended
  in failure, after retries and failover.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from infra.config import AnalyticsConfig
from stores.engagement import OPENABLE, sql_in

STATUSES = ("sent", "delivered", "bounced", "complained", "failed", "suppressed", "deferred", "digested",
            "rejected", "cancelled")
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}

QUERY = """
WITH d AS (
    SELECT notification_id, channel, provider, status, attempts, accepted_at, completed_at,
           CASE WHEN $3::text IS NULL THEN NULL ELSE date_trunc($3::text, created_at, 'UTC') END AS bucket
    FROM delivery_tracking
    WHERE created_at >= $1 AND created_at < $2 AND channel <> '*' AND ($4::text IS NULL OR channel = $4)
), e AS (  -- only the window's notifications: the (notification_id, channel, type) index serves it
    SELECT notification_id, channel, bool_or(type = 'opened') AS opened, bool_or(type = 'clicked') AS clicked
    FROM engagement_events WHERE notification_id IN (SELECT notification_id FROM d) GROUP BY 1, 2
)
SELECT d.bucket, d.channel, d.provider, count(*) AS total,
       {statuses},
       count(*) FILTER (WHERE e.opened) AS opened,
       count(*) FILTER (WHERE e.clicked) AS clicked,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM d.completed_at - d.accepted_at))
           FILTER (WHERE d.status IN ('sent', 'delivered', 'bounced', 'complained')) AS latency,
       avg(d.attempts) FILTER (WHERE d.attempts > 0) AS attempts
FROM d LEFT JOIN e ON e.notification_id = d.notification_id AND e.channel = d.channel
GROUP BY 1, 2, 3
ORDER BY 1 NULLS FIRST, 2, 3 NULLS FIRST
""".format(statuses=",\n       ".join(f"count(*) FILTER (WHERE d.status = '{s}') AS {s}" for s in STATUSES))


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def shape(row: Any) -> dict:
    """One result row as the API answers it."""
    counts = {s: row[s] for s in STATUSES}
    accepted = counts["sent"] + counts["delivered"] + counts["bounced"] + counts["complained"]
    latency = row["latency"]
    out = {
        "channel": row["channel"], "provider": row["provider"], "total": row["total"],
        "counts": {**counts, "accepted": accepted, "opened": row["opened"], "clicked": row["clicked"]},
        "rates": {"delivery_rate": ratio(counts["delivered"] + counts["complained"], accepted), "open_rate": ratio(row["opened"], accepted),
                  "click_rate": ratio(row["clicked"], accepted),
                  "failure_rate": ratio(counts["failed"], accepted + counts["failed"])},
        "latency_ms": ({k: round(v * 1000, 1) if v is not None else None
                        for k, v in zip(("p50", "p95", "p99"), latency, strict=True)} if latency else None),
        "avg_attempts": round(float(row["attempts"]), 3) if row["attempts"] is not None else None,
    }
    if row["bucket"] is not None:
        out = {"bucket": row["bucket"].timestamp(), **out}
    return out


def window_error(start: float, end: float, bucket: str | None, limits: AnalyticsConfig) -> tuple[int, str, str] | None:
    """(status, field, reason) when the window cannot be answered, else None: 400
    for a window that is not one, 422 for one past ``limits`` (the query over it
    would hold a connection and read rows for too long)."""
    if end <= start:
        return 400, "to", "must be after from"
    if bucket is not None and bucket not in BUCKETS:
        return 400, "bucket", f"one of {', '.join(BUCKETS)}"
    days = limits.max_window_days
    if end - start > days * 86400:
        return 422, "from", f"the window is longer than {days} days (analytics.max_window_days); ask for a shorter one"
    if bucket is not None and (end - start) / BUCKETS[bucket] > limits.max_buckets:
        return 422, "bucket", (f"more than {limits.max_buckets:,} {bucket}s in the window (analytics.max_buckets); "
                               "use a larger bucket")
    return None


async def channels(conn: asyncpg.Connection | asyncpg.Pool, start: float, end: float, bucket: str | None = None,
                   channel: str | None = None) -> list[dict]:
    """The window [start, end) (epoch seconds) per channel and provider (and bucket)."""
    utc = dt.UTC
    rows = await conn.fetch(QUERY, dt.datetime.fromtimestamp(start, utc), dt.datetime.fromtimestamp(end, utc),
                            bucket, channel)
    return [shape(r) for r in rows]




DRIFT = f"""
WITH d AS (
    -- by when the send went (completed_at), not when its row was made (a held send's row is made when it
    -- is held); created_at bounds the rows read by its index: nothing is held longer than 31 days here
    SELECT notification_id, channel, category, completed_at, completed_at >= to_timestamp($2) AS later
    FROM delivery_tracking
    WHERE created_at >= to_timestamp($1) - interval '31 days' AND created_at < to_timestamp($3)
      AND completed_at >= to_timestamp($1) AND completed_at < to_timestamp($3)
      AND status IN ({sql_in(OPENABLE)}) AND channel <> '*'  -- a bounce had nothing to open
), e AS (  -- only the windows' notifications: the (notification_id, channel, type) index serves it
    SELECT notification_id, channel, min(at) AS at FROM engagement_events
    WHERE notification_id IN (SELECT notification_id FROM d) AND type IN ('opened', 'clicked') GROUP BY 1, 2
)
SELECT d.category, d.channel, d.later, count(*)::int,
       -- opened within the horizon: a send late in a window has had as long as one early in it
       count(*) FILTER (WHERE e.at < d.completed_at + make_interval(secs => $4))::int
FROM d LEFT JOIN e ON e.notification_id = d.notification_id AND e.channel = d.channel
GROUP BY 1, 2, 3
"""


async def windows(conn, start: float, middle: float, end: float, horizon_s: float
                  ) -> tuple[list[tuple], list[tuple]]:
    """Sends per (category, channel) in [start, middle) and [middle, end), and how many
    of them were opened within ``horizon_s`` of the send: what the engagement drift
    report compares (``policy.suggestions.drift``)."""
    before, after = [], []
    for r in await conn.fetch(DRIFT, start, middle, end, horizon_s):
        (after if r[2] else before).append((r[0], r[1], r[3], r[4]))
    return before, after


__all__ = ["BUCKETS", "channels", "shape", "window_error", "windows"]
