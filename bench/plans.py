"""A benchmark's fresh tables, ANALYZEd as they fill, as autovacuum would in a
database that lives longer than a run (``tidings bench e2e``).

Each harness run migrates a new schema, whose tables fill from empty within a
minute. PostgreSQL keeps a prepared statement's generic plan, chosen after its
first five runs, until the statistics or the definition of a table it reads
change. One chosen while ``delivery_tracking`` was empty is a sequential scan:
the UserShard's "recorded already?" read (``stores.tracking.RECORDED``, once per
batch) then reads the whole table, which grows through the run; a statement
planned afresh on the filled table, statistics or not, probes the index
(bench/RESULTS.md, 2026-12-06). autovacuum ANALYZEs a table once 50 rows and a
tenth of it have changed, looking once a minute, and an ANALYZE makes every
session plan again. This machine's PostgreSQL runs without autovacuum, and a run
of a minute rarely meets it where it runs, so before this no run had these plans
right; by autovacuum's defaults a deployment has them a minute or two after its
tables fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

log = logging.getLogger(__name__)

FIRST = 256  # rows written before the tracking table's first ANALYZE; again each time they double
POLL_S = 0.5
TABLES = ("SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
          "WHERE schemaname = current_schema()")


async def analyze_schema(pool) -> None:
    """ANALYZE every table of the pool's schema, once it is seeded (the users,
    their keys and preferences): no plan made while they filled stays. The still
    empty tracking table is counted as empty; ``analyzed_as_it_grows`` follows it."""
    tables = [r[0] for r in await pool.fetch(TABLES)]
    if tables:
        await pool.execute("ANALYZE " + ", ".join(tables))


async def analyzed_as_it_grows(pool, recorder, first: int = FIRST) -> None:
    """ANALYZE delivery_tracking each time the Recorder's rows written since this
    began double (from ``first``), until cancelled. A restarted Recorder counts
    from 0 again: its count is taken as the new start."""
    base = last = (await recorder.stats.remote())["rows_written"]
    at, failed = first, False
    while True:
        try:
            now = (await recorder.stats.remote())["rows_written"]
            if now < last:  # the Recorder restarted
                base -= last
            last = now
            if now - base >= at:
                await pool.execute("ANALYZE delivery_tracking")
                at = 2 * (now - base)
        except Exception as e:  # noqa: BLE001 - a Recorder restarting, a statement timeout: try again
            if not failed:
                log.warning("ANALYZE of the run's tracking table: %r; trying again", e)
            failed = True
        await asyncio.sleep(POLL_S)


@contextlib.asynccontextmanager
async def analyzing(pool, recorder, enabled: bool = True) -> AsyncIterator[None]:
    """``analyzed_as_it_grows`` for the block's length (nothing when not
    ``enabled``). If it failed, says so: the run's figures may have stale plans."""
    task = asyncio.ensure_future(analyzed_as_it_grows(pool, recorder)) if enabled else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as e:  # noqa: BLE001 - a measurement aid must not fail the run it measures
                log.warning("ANALYZE of the run's tracking table stopped (%r): its figures may hold stale plans", e)
