"""Which process is busiest during a run: samples CPU per process group (Ray actor
class, postgres, nats-server, sinks, the driver) with psutil, so a run can say
which stage saturates first from measurement rather than guesswork."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict

import psutil

GROUPS = (
    ("ray::Ingestor", "Ingestor"),
    ("ray::UserShard", "UserShard"),
    ("ray::ChannelShard", "ChannelShard"),
    ("ray::Recorder", "Recorder"),
    ("ray::EventSender", "EventSender"),
    ("ray::Scheduler", "Scheduler"),
    # Ray's own processes: a node's agents (its dashboard agent ingests every actor's
    # metrics), the raylet, the GCS, the dashboard, the monitors
    ("ray::DashboardAgent", "Ray itself"),
    ("ray::RuntimeEnvAgent", "Ray itself"),
    ("/ray/raylet/raylet", "Ray itself"),
    ("/ray/gcs/gcs_server", "Ray itself"),
    ("ray/dashboard/dashboard.py", "Ray itself"),
    ("ray-dashboard-", "Ray itself"),  # the dashboard's module processes name themselves so
    ("ray/_private/log_monitor.py", "Ray itself"),
    ("/ray/autoscaler/", "Ray itself"),  # its monitor (v1 or v2)
    ("ray.util.client.server", "Ray itself"),  # what a ray:// driver talks to
    ("sandbox webhook", "webhook sink"),
    ("sandbox smtp", "smtp sink"),
    ("nats-server", "nats-server"),
    ("postgres", "postgres"),
)


def ours(proc: psutil.Process, session: str | None) -> bool:
    """A Ray worker of this run's Ray (its raylet, the parent, names the session)
    or one of that Ray's own processes, not of another Ray on the machine: others'
    tests may run engine actors too. Other processes (NATS, PostgreSQL, sinks) are
    everyone's."""
    if not session:
        return True
    try:
        line = " ".join(proc.cmdline())
        if not line.startswith("ray::"):
            # Ray's raylet, GCS and monitors name their session's directory; the rest are everyone's
            return session in line if "/session_" in line and "/ray/" in line else True
        parent = proc.parent()
        return parent is not None and session in " ".join(parent.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def ray_session() -> str | None:
    """The session name of the Ray this process joined (a local one or a cluster's), if any."""
    try:
        from ray._private import worker

        return worker._global_node.session_name if worker._global_node is not None else None
    except Exception:  # noqa: BLE001 - without it every Ray worker on the machine counts, as before
        return None


def group_of(proc: psutil.Process) -> str | None:
    try:
        if proc.pid == os.getpid():
            return "driver"
        line = " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    for needle, name in GROUPS:
        if needle in line:
            return name
    return None


class CpuSampler:
    """Average CPU (in cores) per group over the sampling period; Ray workers only
    of the Ray session ``session`` when given (``ray_session()``)."""

    def __init__(self, every_s: float = 0.5, session: str | None = None):
        self.every_s = every_s
        self.session = session
        self._others: set[int] = set()
        self.totals: dict[str, float] = defaultdict(float)
        self.samples = 0
        self._task: asyncio.Task | None = None
        self._procs: dict[int, psutil.Process] = {}

    async def _loop(self) -> None:
        while True:
            for p in psutil.process_iter():
                if p.pid not in self._procs and p.pid not in self._others and group_of(p):
                    if not ours(p, self.session):
                        self._others.add(p.pid)
                        continue
                    p.cpu_percent(None)  # first call primes the counter
                    self._procs[p.pid] = p
            await asyncio.sleep(self.every_s)
            seen: dict[str, float] = defaultdict(float)
            for pid, p in list(self._procs.items()):
                try:
                    seen[group_of(p) or "?"] += p.cpu_percent(None) / 100
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    del self._procs[pid]
            for name, cores in seen.items():
                self.totals[name] += cores
            self.samples += 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> dict[str, float]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        n = max(self.samples, 1)
        return dict(sorted(((k, round(v / n, 2)) for k, v in self.totals.items()), key=lambda kv: -kv[1]))


class _HostSampler:
    """A ``CpuSampler`` on another host of the cluster: a Ray actor pinned to one
    of its nodes, counting that host's processes."""

    def __init__(self, session: str | None):
        self.sampler = CpuSampler(session=session)

    async def start(self) -> None:
        self.sampler.start()

    async def stop(self) -> dict[str, float]:
        out = await self.sampler.stop()
        out.pop("driver", None)  # that is this actor, not the harness
        return out


class ClusterCpu:
    """This host's ``CpuSampler`` and one on each other host of the cluster
    (``nodes``: a node id per other host), their figures added per group.
    ``complete`` is False when a host could not be sampled (its figures are
    then missing, not guessed)."""

    def __init__(self, session: str | None, nodes: list[str] | None = None, every_s: float = 0.5):
        self.local = CpuSampler(every_s, session)
        self.session, self.nodes, self.every_s = session, nodes or [], every_s
        self.remote: list = []
        self.complete = True

    def start(self) -> None:
        self.local.start()
        if not self.nodes:
            return
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        for node in self.nodes:
            actor = ray.remote(_HostSampler).options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(self.session)
            actor.start.remote()
            self.remote.append(actor)

    async def stop(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for name, cores in (await self.local.stop()).items():
            totals[name] += cores
        if self.remote:
            import ray

            answers = await asyncio.gather(*(asyncio.wait_for(asyncio.wrap_future(a.stop.remote().future()), 30)
                                             for a in self.remote), return_exceptions=True)
            for answer in answers:
                if isinstance(answer, BaseException):
                    self.complete = False
                    continue
                for name, cores in answer.items():
                    totals[name] += cores
            for actor in self.remote:
                ray.kill(actor)
        return dict(sorted(((k, round(v, 2)) for k, v in totals.items()), key=lambda kv: -kv[1]))
