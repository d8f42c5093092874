"""How long ``GET /v1/analytics/channels`` takes on a big tracking table.

    python -m bench.analytics [--rows 1000000] [--days 7]

Fills a throwaway schema with ``--rows`` tracking rows spread evenly over the last
``--days`` days (4 channels, 2 providers, statuses mixed as sent 3 : delivered 1 :
failed 1 : suppressed 1, an "opened" event for every delivered row), ANALYZEs it,
then times ``stores.analytics.channels`` for a 24-hour window (totals, by hour)
and the whole span by day. PostgreSQL: ``--database-url`` or
TIDINGS_DATABASE_URL. The schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid

import asyncpg

from engine import migrations
from infra import db
from stores import analytics

FILL = """
INSERT INTO delivery_tracking (notification_id, user_id, channel, category, status, reason, provider, attempts,
                               accepted_at, completed_at, created_at)
SELECT gen_random_uuid(), 'u' || (i % 100000), (ARRAY['email', 'push', 'sms', 'webhook'])[1 + i % 4], 'messages',
       (ARRAY['sent', 'sent', 'sent', 'delivered', 'failed', 'suppressed'])[1 + i % 6], 'x', 'p' || (i % 2), 1,
       now() - make_interval(secs => i * $2::float8), now() - make_interval(secs => i * $2::float8 - 0.2),
       now() - make_interval(secs => i * $2::float8 - 0.2)
FROM generate_series(1, $1::int) i
"""
OPENS = """
INSERT INTO engagement_events (notification_id, user_id, channel, type, at, source)
SELECT notification_id, user_id, channel, 'opened', created_at, 'api' FROM delivery_tracking WHERE status = 'delivered'
"""


async def run(url: str, rows: int, days: float) -> dict:
    schema = f"bench_analytics_{uuid.uuid4().hex[:8]}"
    await migrations.migrate_url(url, schema)
    pool = await db.create_pool(url, schema)
    out: dict = {"rows": rows, "days": days}
    try:
        started = time.perf_counter()
        await pool.execute(FILL, rows, days * 86400 / rows)
        await pool.execute(OPENS)
        await pool.execute("ANALYZE")
        out["fill_s"] = round(time.perf_counter() - started, 1)
        now = time.time()
        for label, start, bucket in (("24h_totals", now - 86400, None), ("24h_by_hour", now - 86400, "hour"),
                                     (f"{days:g}d_by_day", now - days * 86400, "day")):
            started = time.perf_counter()
            answer = await analytics.channels(pool, start, now, bucket)
            out[label] = {"ms": round((time.perf_counter() - started) * 1000), "result_rows": len(answer)}
    finally:
        await pool.close()
        conn = await asyncpg.connect(url)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.analytics", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--days", type=float, default=7.0)
    p.add_argument("--database-url", default=os.environ.get("TIDINGS_DATABASE_URL", ""))
    args = p.parse_args(argv)
    if not args.database_url:
        p.error("--database-url or TIDINGS_DATABASE_URL is needed")
    print(json.dumps(asyncio.run(run(args.database_url, args.rows, args.days)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
