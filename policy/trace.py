"""Where a notification's time goes: stage stamps and the segments between them.

A sampled notification (``sampled``: by its id, so every actor agrees) carries
wall-clock stamps as it moves: fetched by the Ingestor, in the UserShard,
decided (handed to the ChannelShards), in the ChannelShard, out of it, back in
the UserShard, in the Recorder. The Recorder adds the commit, and the provider
call comes from the outcome's attempts; ``segments`` turns them into the time
spent in each part of the pipeline. The Ingestor measures the last part (commit
to ack) itself. Pure: the stamps are given.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

from policy.types import Attempt

# segment -> what it is; in pipeline order (bench/RESULTS.md and docs/design.md use these names)
SEGMENTS = {
    "fetch": "published to fetched: JetStream, the batch forming, a free Ingestor slot",
    "ingest": "fetched to in the UserShard: decode, group, the Ray call and the shard's queue",
    "decide": "in the UserShard to handed on: decode, recorded ids, user states, templates, the plan",
    "to_channel": "handed on to in the ChannelShard: the Ray call and the shard's queue",
    "channel_wait": "in the ChannelShard to the provider call: bulkhead, rate limit, breaker",
    "provider": "the provider calls, first start to last end (retries included)",
    "batch_rest": "provider answered to the ChannelShard's answer: the rest of its batch",
    "back": "the ChannelShard's answer to the UserShard: the Ray reply, the other shards' calls",
    "to_recorder": "back in the UserShard to in the Recorder: other channels, fallbacks, holds, the Ray call",
    "commit": "in the Recorder to committed: linger, COPY and commit",
    "ack": "committed to acked: the replies to the UserShard and the Ingestor, and the ack (one per shard batch)",
}


# the segments a notification passes once, before it fans out to its channels
BEFORE_FANOUT = ("fetch", "ingest", "decide")


def sampled(notification_id: str, rate: float) -> bool:
    """Whether ``notification_id`` is traced at ``rate`` (0..1); the same answer in
    every actor. Salted: other hashes of the id (a retry's spread) are not correlated."""
    if rate <= 0:
        return False
    return rate >= 1 or zlib.crc32(b"trace:" + notification_id.encode()) < rate * 0xFFFFFFFF


def segments(stamps: Mapping[str, float], accepted_at: float, attempts: Sequence[Attempt],
             committed: float) -> dict[str, float]:
    """Seconds per segment (all but ``ack``) for one outcome; segments whose ends
    are missing (no provider call, a stamp not made) are left out."""
    at = dict(stamps)
    at["committed"] = committed
    if accepted_at:
        at["accepted"] = accepted_at
    if attempts:
        at["call_start"] = attempts[0].at
        at["call_end"] = max(a.at + a.duration_ms / 1000 for a in attempts)
    pairs = {"fetch": ("accepted", "fetched"), "ingest": ("fetched", "shard_in"), "decide": ("shard_in", "decided"),
             "to_channel": ("decided", "channel_in"), "channel_wait": ("channel_in", "call_start"),
             "provider": ("call_start", "call_end"), "batch_rest": ("call_end", "channel_out"),
             "back": ("channel_out", "shard_back"), "to_recorder": ("shard_back", "record_in"),
             "commit": ("record_in", "committed")}
    return {name: max(0.0, at[b] - at[a]) for name, (a, b) in pairs.items() if a in at and b in at}
