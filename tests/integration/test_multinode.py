"""The engine on a multi-node Ray cluster (issue 15 item 1): a head and two worker
nodes on this machine (tests/integration/multinode.py, in its own process), the
actors spread over the workers (``ray.placement = "spread"``), notifications
through the HTTP API to a loopback webhook receiver, and the worker with more of
the engine's actors killed while they are in flight. Nothing is lost: its actors
come back on the other worker, its messages are redelivered, every notification
ends with one terminal row. A repeat is the documented window (docs/faults.md,
"Sent is sent once": a send between the provider's answer and the commit), at most
once, and carries the same delivery id."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration.drivers import run_driver

pytestmark = pytest.mark.integration

N = 2000


def test_a_worker_node_killed_loses_nothing(nats_url, database_url, redis_url):
    out = run_driver("tests.integration.multinode", nats_url, database_url, redis_url, N, timeout_s=480)
    print(out)
    before, after, killed = out["before"], out["after"], out["killed"]
    survivor = ({"w1", "w2"} - {killed}).pop()
    # placed across both workers by their resources (the head offers no CPU)
    assert before.get("w1") and before.get("w2") and "head" not in before, before
    # every kind of actor alive again, all on the survivor
    assert set(after) == {survivor}, after
    assert Counter(after[survivor]) == Counter(before["w1"]) + Counter(before["w2"]), (before, after)
    # nothing lost, each once in PostgreSQL, each delivered
    assert out["rows"] == N and out["statuses"] == {"sent": N} and out["rows_per_notification_max"] == 1, out
    assert out["sink_notifications"] == N
    # the window: at most one repeat each, recognised by the receiver by its delivery id
    assert out["sent_max"] <= 2 and out["sink_duplicates"] == out["sent_twice"], out
