"""Dry runs: a broadcast or notifications decided by their UserShards exactly as a
send would decide them, with nothing sent, held or recorded (``policy.dryrun``).
The HTTP routes answer with what this returns (``?dry_run=true``)."""

from __future__ import annotations

import asyncio
import time
import uuid

import ray

from infra.aio import gather_within
from policy import wire
from policy.api import DecisionCount, DryRun
from policy.dryrun import Tally
from policy.sharding import shard_of
from policy.types import BroadcastRequest, NotificationRequest

DRY_RUN_S = 600.0  # the longest a dry run may take: a broadcast's is every user's state read and decided
# what a dry run shows: users' preferences, consent and suppressions, in its reasons and samples
SCOPE = "decisions:read"


class Busy(Exception):
    """A broadcast dry run is running on this engine already."""


async def broadcast(engine, b: BroadcastRequest) -> DryRun:
    """Every user decided by their shard, in the broadcast's own chunks. One at a
    time per engine: each reads every user's state, as the broadcast would."""
    lock: asyncio.Lock = engine.broadcast_dry_run
    if lock.locked():
        raise Busy
    async with lock:
        started = time.monotonic()
        b.accepted_at = time.time()
        payload = wire.encode(wire.Broadcast(str(b.id or uuid.uuid4()), b))
        return answer(await within([s.dry_run.remote(payload) for s in engine.actors.user_shards]), started)


async def notifications(engine, reqs: list[NotificationRequest]) -> DryRun:
    """Each notification decided by its user's shard (one call per shard)."""
    started = time.monotonic()
    now = time.time()
    shards = engine.actors.user_shards
    groups: dict[int, list[wire.Inbound]] = {}
    for r in reqs:
        r.accepted_at = now
        groups.setdefault(shard_of(r.user_id, len(shards)), []).append(wire.Inbound(str(r.id or uuid.uuid4()), r))
    return answer(await within([shards[i].dry_run_items.remote(wire.encode(items)) for i, items in groups.items()]),
                  started)


async def within(refs: list) -> list[bytes]:
    """The shards' answers within ``DRY_RUN_S`` (TimeoutError otherwise); a call
    given up on (the time, the client gone) is cancelled in the shards too."""
    try:
        return await gather_within(DRY_RUN_S, *refs)
    finally:
        for ref in refs:
            ray.cancel(ref)  # nothing for one that has answered


def answer(parts: list[bytes], started: float) -> DryRun:
    tally = Tally()
    for p in parts:
        tally.merge(wire.decode(p, Tally))
    return DryRun(dry_run=True, recipients=tally.recipients, seconds=round(time.monotonic() - started, 3),
                  decisions=[DecisionCount(c.channel, c.action, c.reason, c.count, c.sample)
                             for c in tally.rows()])
