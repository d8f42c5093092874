"""Audiences at the edge (``policy.audience``): a saved segment read once, when
a broadcast or a count is asked for (its filter then travels with the request,
so what a shard evaluates is what was checked here), and counts by the shards.
The HTTP routes answer with what this returns or raises."""

from __future__ import annotations

import asyncio
import contextlib
import time

from engine.dry_runs import Busy, within
from policy import segments, wire
from policy.audience import Audience
from stores import segments as segment_store


class UnknownSegment(LookupError):
    """The audience names a saved segment that is not there."""


async def resolved(engine, audience: Audience, at: str = "$.audience", checked: bool = True) -> Audience:
    """``audience`` with its saved segment's filter in ``where``; with
    ``checked``, the audience checked too (``segments.Invalid`` naming ``at``'s
    fields; a broadcast's is checked with the rest of the message)."""
    if audience.segment is not None and audience.where is not None:
        raise segments.Invalid([(f"{at}.where", "give segment or where, not both: a segment's filter is the "
                                                "saved one")])
    if audience.segment is not None:
        async with engine.pool.acquire() as conn:
            saved = await segment_store.get(conn, audience.segment)
        if saved is None:
            raise UnknownSegment(audience.segment)
        return Audience(topic=audience.topic, segment=audience.segment, where=saved.where)
    errors = segments.audience_errors(audience, at) if checked else []
    if errors:
        raise segments.Invalid(errors)
    return audience


MOST_MEMBERS = 100_000  # users a template is applied to by audience, in one call


class TooMany(Exception):
    """An audience larger than ``MOST_MEMBERS``."""


async def count(engine, audience: Audience) -> tuple[int, list[str], float]:
    """(users in the audience, up to five of them, seconds): every shard counts
    its own, a segment evaluated on each user's state."""
    async with _one_at_a_time(engine):
        started = time.monotonic()
        payload = wire.encode(audience)
        parts = await within([s.count_audience.remote(payload) for s in engine.actors.user_shards])
        sample = [u for p in parts for u in p["sample"]][:5]
        return sum(p["users"] for p in parts), sample, round(time.monotonic() - started, 3)


async def members(engine, audience: Audience) -> list[str]:
    """Every user in ``audience`` now (template application by audience);
    ``TooMany`` past ``MOST_MEMBERS`` (no shard sends more than that)."""
    async with _one_at_a_time(engine):
        payload = wire.encode(audience)
        parts = await within([s.count_audience.remote(payload, MOST_MEMBERS + 1)
                              for s in engine.actors.user_shards])
    if sum(p["users"] for p in parts) > MOST_MEMBERS:
        raise TooMany
    return [u for p in parts for u in p["members"]]


@contextlib.asynccontextmanager
async def _one_at_a_time(engine):
    """One audience scan (a count, a template's members, a broadcast dry run) at a
    time per engine (``dry_runs.Busy``): each reads every user's state."""
    lock: asyncio.Lock = engine.broadcast_dry_run
    if lock.locked():
        raise Busy
    async with lock:
        yield


__all__ = ["MOST_MEMBERS", "TooMany", "UnknownSegment", "count", "members", "resolved"]
