"""What the tests that need a Ray cluster of their own share. Such a test runs a
driver module in its own process (a process joins one Ray, and the test session
has its own); the driver starts a cluster of Ray's own nodes, does its run and
prints one JSON line, which the test reads (``run_driver``). The cluster's files
(and its "current cluster" note, which a later ``ray.init()`` on this machine
would otherwise join) go under a folder of their own."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from ray.cluster_utils import Cluster

from engine.raybox import ray_environment


def on_cluster(default_n: int, add_nodes: Callable[[Cluster], Any],
               run: Callable[[Cluster, Any, str, str, str, int], Awaitable[dict]], join: bool = False) -> None:
    """A driver's main: ``NATS_URL DATABASE_URL REDIS_URL [N]`` from the command
    line, a head node with no CPU and the nodes ``add_nodes`` adds (what it
    returns goes to ``run``), this process joined to it when ``join``; ``run``'s
    answer printed as one JSON line with the wall time."""
    nats_url, database_url, redis_url = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else default_n
    started = time.monotonic()
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="tidings-cluster-"))
    ray_environment()  # the nodes as the engine's own Ray (usage stats off, the metrics path)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes = add_nodes(cluster)
        cluster.wait_for_nodes()
        if join:
            ray.init(address=cluster.address)
        out = asyncio.run(run(cluster, nodes, nats_url, database_url, redis_url, n))
        out["wall_s"] = round(time.monotonic() - started, 1)
        print(json.dumps(out), flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def run_driver(module: str, nats_url: str, database_url: str, redis_url: str, n: int, timeout_s: float) -> dict:
    """Run ``python -m module`` and return the JSON line it printed last (the test
    fails with its error output when it printed none or failed)."""
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="tidings-cluster-"), "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-m", module, nats_url, database_url, redis_url, str(n)],
                          capture_output=True, text=True, timeout=timeout_s, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return json.loads(lines[-1])
