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
    ("sandbox webhook", "webhook sink"),
    ("sandbox smtp", "smtp sink"),
    ("nats-server", "nats-server"),
    ("postgres", "postgres"),
)


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
    """Average CPU (in cores) per group over the sampling period."""

    def __init__(self, every_s: float = 0.5):
        self.every_s = every_s
        self.totals: dict[str, float] = defaultdict(float)
        self.samples = 0
        self._task: asyncio.Task | None = None
        self._procs: dict[int, psutil.Process] = {}

    async def _loop(self) -> None:
        while True:
            for p in psutil.process_iter():
                if p.pid not in self._procs and group_of(p):
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
