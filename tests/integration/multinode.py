"""A Ray cluster of a head and two worker nodes on this machine, the engine
joined to it, and a worker node killed mid-run (issue 15 item 1). Run by
tests/integration/test_multinode.py as its own process (a process joins one Ray:
the test session has its own), it prints one JSON line: where the actors were
before and after, and what PostgreSQL and the loopback receiver saw.

The nodes are Ray's own (``ray.cluster_utils.Cluster``: a raylet process per
node, each with its own resources and labels, as ``ray start`` makes them).

    python -m tests.integration.multinode NATS_URL DATABASE_URL REDIS_URL [N]
"""

from __future__ import annotations

import asyncio
import tempfile
import time

from bench.e2e import cluster_view
from sandbox import WebhookSink
from tests.integration.drivers import Cluster, on_cluster
from tests.integration.helpers import api_session, engine_config, serving, wait_rows

SECRET = "multinode-secret"
WORKER_CPUS = 3  # each worker alone has room for every actor (0.25 each): the survivor takes them all


def placement() -> dict[str, dict[str, int]]:
    """Node label -> the engine's live actors there, by class (as the harness records them)."""
    return cluster_view()["actors"]


def count(where: dict[str, dict[str, int]]) -> int:
    return sum(n for kinds in where.values() for n in kinds.values())


async def submit(base: str, n: int, tag: str) -> list[str]:
    ids = []
    async with api_session() as s:
        for start in range(0, n, 100):
            batch = [{"user_id": f"mn-{tag}-{i}", "category": "job_alerts", "channels": ["webhook"],
                      "content": {"text": f"hello {i}"}} for i in range(start, min(n, start + 100))]
            async with s.post(f"{base}/v1/notifications", json=batch) as r:
                assert r.status == 202, await r.text()
                ids += [x["id"] for x in (await r.json())["notifications"]]
    return ids


async def run(cluster: Cluster, workers: dict, nats_url: str, database_url: str, redis_url: str, n: int) -> dict:
    sink = WebhookSink(SECRET)
    await sink.start()
    home = tempfile.mkdtemp(prefix="tidings-multinode-home-")
    cfg = engine_config(nats_url, database_url, home, webhook_url=sink.url, secret=SECRET, channels=("webhook",),
                        redis_url=redis_url,
                        overrides={"ray": {"address": cluster.address, "actor_cpus": 0.25, "placement": "spread"},
                                   # a dead Ingestor's messages come back after this
                                   "nats": {"ack_wait_s": 10.0}})
    out: dict = {"n": n}
    try:
        async with serving(cfg, database_url) as engine:
            out["before"] = placement()
            first = await submit(engine.base_url, n // 2, "a")
            # the worker with more of the engine's actors goes, with the work in flight
            victim = max(workers, key=lambda k: sum(out["before"].get(k, {}).values()))
            await wait_rows(engine.pool, first[: n // 10], n // 10, timeout_s=120)
            cluster.remove_node(workers[victim], allow_graceful=False)
            killed_at = time.monotonic()
            out["killed"] = victim
            second = await submit(engine.base_url, n - n // 2, "b")  # the front door keeps taking work
            ids = first + second
            done = await wait_rows(engine.pool, ids, len(ids), timeout_s=240)
            out["settled_s"] = round(time.monotonic() - killed_at, 1)
            # the rows may all be in before Ray has declared the node dead (its actors'
            # processes can outlive their raylet for a while, and finish the work in
            # flight): the actors are counted once Ray has made them again elsewhere,
            # not when the dead node's are gone (they are restarting then, not yet alive)
            deadline = time.monotonic() + 120
            everyone = count(out["before"])
            while (victim in (after := placement()) or count(after) < everyone) and time.monotonic() < deadline:
                await asyncio.sleep(1)
            out["after"] = after
            out["moved_s"] = round(time.monotonic() - killed_at, 1)
            rows = await engine.pool.fetch(
                "SELECT status, count(*) AS n FROM delivery_tracking WHERE notification_id = ANY($1::uuid[]) "
                "GROUP BY status", ids)
            out["rows"] = done
            out["statuses"] = {r["status"]: r["n"] for r in rows}
            out["rows_per_notification_max"] = await engine.pool.fetchval(
                "SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM delivery_tracking "
                "WHERE notification_id = ANY($1::uuid[]) GROUP BY notification_id, channel) x", ids)
            out["sink_received"] = sink.received
            out["sink_notifications"] = len([i for i in ids if sink.accepted[i] > 0])
            out["sink_duplicates"] = sink.duplicates
            out["sent_twice"] = sum(1 for i in ids if sink.accepted[i] > 1)
            out["sent_max"] = max(sink.accepted[i] for i in ids)
    finally:
        await sink.stop()
    return out


def add_workers(cluster: Cluster) -> dict:
    return {name: cluster.add_node(num_cpus=WORKER_CPUS, labels={"tidings-node": name}) for name in ("w1", "w2")}


if __name__ == "__main__":
    on_cluster(2000, add_workers, run)
