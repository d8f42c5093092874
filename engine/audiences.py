"""Audiences at the edge (``policy.audience``): a saved segment read once, when
a broadcast or a count is asked for (its filter then travels with the request,
so what a shard evaluates is what was checked here), and counts by the shards.
The HTTP routes answer with what this returns or raises."""

from __future__ import annotations

import time

from engine.dry_runs import Busy, within
from policy import segments, wire
from policy.audience import Audience
from stores import segments as segment_store


class UnknownSegment(LookupError):
    """The audience names a saved segment that is not there."""


async def resolved(engine, audience: Audience, at: str = "audience") -> Audience:
    """``audience`` with its saved segment's filter in ``where``; a filter
    checked (``segments.Invalid`` naming ``at``'s fields)."""
    if audience.segment is not None and audience.where is not None:
        raise segments.Invalid([(f"{at}.where", "give segment or where, not both")])
    if audience.segment is not None:
        async with engine.pool.acquire() as conn:
            saved = await segment_store.get(conn, audience.segment)
        if saved is None:
            raise UnknownSegment(audience.segment)
        return Audience(topic=audience.topic, segment=audience.segment, where=saved.where)
    errors = segments.audience_errors(audience, at)
    if errors:
        raise segments.Invalid(errors)
    return audience


async def count(engine, audience: Audience) -> tuple[int, list[str], float]:
    """(users in the audience, up to five of them, seconds): every shard counts
    its own, a segment evaluated on each user's state. One count or broadcast dry
    run at a time per engine (``dry_runs.Busy``): each reads every user's state."""
    lock = engine.broadcast_dry_run
    if lock.locked():
        raise Busy
    async with lock:
        started = time.monotonic()
        payload = wire.encode(audience)
        parts = await within([s.count_audience.remote(payload) for s in engine.actors.user_shards])
        sample = [u for p in parts for u in p["sample"]][:5]
        return sum(p["users"] for p in parts), sample, round(time.monotonic() - started, 3)


async def members(engine, audience: Audience) -> list[str]:
    """Every user in ``audience`` now (template application by audience)."""
    payload = wire.encode(audience)
    parts = await within([s.count_audience.remote(payload, True) for s in engine.actors.user_shards])
    return [u for p in parts for u in p["members"]]


__all__ = ["UnknownSegment", "count", "members", "resolved"]
