"""ray.bulk_niceness: which actors run nicer (engine/runtime.py, actors/worker.py).
The actors themselves are checked in tests/integration/test_lanes.py."""

import os

from actors import worker
from engine import settings
from engine.runtime import bulk_shard_niceness


def test_a_channel_without_urgent_shards_keeps_its_bulk_shards_at_rays_niceness():
    cfg = settings.load(profile="production", env={}, overrides={"channels": {"sms": {"urgent_shards": 0},
                                                                              "email": {"urgent_shards": 1}}})
    assert cfg.ray.bulk_niceness == 4
    assert bulk_shard_niceness(cfg, "email") == 4  # its critical ones go to the urgent shard
    assert bulk_shard_niceness(cfg, "sms") == 0  # its critical ones go through these


def test_nothing_is_reniced_for_zero():
    before = os.getpriority(os.PRIO_PROCESS, 0)
    worker.yield_cpu(0)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
