"""A Ray cluster of a head and N worker nodes on this machine, for running the
harness (or the engine) as it runs on a real cluster:

    python -m bench.cluster --workers 2 --cpus 2      # prints RAY_ADDRESS=… and waits
    RAY_ADDRESS=<printed> TIDINGS_RAY_PLACEMENT=spread TIDINGS_RAY_ACTOR_CPUS=0.25 \\
        tidings bench e2e --n 20000 --shards 2 …       # in another shell, unchanged

The nodes are Ray's own (``ray.cluster_utils.Cluster``: a raylet per node with
its own resources and a ``tidings-node`` label, as ``ray start`` makes them). The
head has no CPUs of its own, so actors that reserve CPUs (``ray.actor_cpus``)
go to the workers. The cluster's files live in a temporary folder of their own
(``RAY_TMPDIR``): Ray's "current cluster" note there is not the machine's, so
nobody else's ``ray.init()`` joins this cluster by accident. Ctrl-C or SIGTERM
stops every node and removes the folder.

On one machine the nodes share its cores: this shows the engine works spread
over nodes (Ray calls between raylets, objects through the object store) and
what that costs, not more throughput.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
    ap.add_argument("--cpus", type=float, default=2, help="logical CPUs each worker node offers (default 2)")
    ap.add_argument("--head-cpus", type=float, default=0, help="logical CPUs of the head (default 0: no actors there)")
    ap.add_argument("--address-file", help="also write the address to this file (for scripts)")
    args = ap.parse_args(argv)
    if args.workers < 0 or args.cpus <= 0 or args.head_cpus < 0:
        ap.error("--workers ≥ 0, --cpus > 0 and --head-cpus ≥ 0")

    tmp = tempfile.mkdtemp(prefix="tidings-cluster-")
    os.environ["RAY_TMPDIR"] = tmp  # before Ray is imported: its files and its "current cluster" note go here
    from engine.raybox import ray_environment  # imports Ray: after RAY_TMPDIR

    ray_environment()  # every node as the engine's own Ray (usage stats, the metrics path)
    from ray.cluster_utils import Cluster

    stop = threading.Event()
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.head_cpus,
                                                                 "include_dashboard": False})
        for i in range(args.workers):
            cluster.add_node(num_cpus=args.cpus, labels={"tidings-node": f"w{i + 1}"})
        cluster.wait_for_nodes()
        # after the nodes start: Ray's own node code sets a SIGTERM handler that exits with status 1
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        if args.address_file:
            part = args.address_file + ".part"  # whole or not there: a reader never sees it half written
            with open(part, "w") as f:
                f.write(cluster.address + "\n")
            os.replace(part, args.address_file)
        print(f"RAY_ADDRESS={cluster.address}", flush=True)
        print(f"# a head ({args.head_cpus:g} CPUs) and {args.workers} worker nodes ({args.cpus:g} CPUs each); "
              f"files in {tmp}; Ctrl-C stops it", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        if cluster is not None:
            cluster.shutdown()
        if args.address_file:
            try:
                os.remove(args.address_file)
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
