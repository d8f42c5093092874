"""Event-loop stalls: how late each actor's loop runs a timer, and how long the
garbage collector stops it. Both hold every notification in the actor at that
moment, so they show in each hop's p99 (``policy.trace``). Kept in memory for
``tidings bench e2e`` and reported as ``tidings_loop_lag_seconds`` and
``tidings_gc_pause_seconds{generation}``."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque

import ray
from ray.util import metrics

from actors.tracing import BOUNDARIES

log = logging.getLogger(__name__)

TICK_S = 0.02  # how often the loop is asked to wake: a lag is how late it did
KEPT = 20_000  # samples of each kind kept for the bench


def tune_gc(young: int) -> None:
    """Fewer and shorter collector pauses in an actor that moves batches.

    With Python's defaults a batch's objects (tasks, outcomes, messages) live
    through a few young collections, are promoted, and the old generation fills
    with objects already dead by the time it is traversed: full collections of
    the whole heap, up to 420 ms each in the bench, every actor, every few seconds.
    Young collections every ``young`` new objects (Python's default: 700) let
    a batch die young, and freezing what exists once the actor is set up
    (modules, clients, pools) keeps it out of every later collection. 0: the
    defaults are left alone (``engine.gc_young``)."""
    if young <= 0:
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)


def in_actor() -> bool:
    """Whether this process is a Ray actor's (not a driver or a test that built
    an actor class in its own process, whose collector is not ours to change)."""
    try:
        return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # noqa: BLE001 - no Ray worker here: not an actor
        return False


class Watched:
    """An actor with a ``watch`` (a ``StallWatch``): ``stalls`` answers the bench."""

    watch: StallWatch

    async def stalls(self) -> dict:
        """Loop lags and gc pauses kept, for the bench."""
        return self.watch.samples()


class StallWatch:
    """Started once per actor, inside its event loop, once the actor is set up
    (``start``); a no-op outside a Ray actor unless ``anywhere``."""

    def __init__(self, gc_young: int = 0, anywhere: bool = False) -> None:
        self.gc_young = gc_young
        self.anywhere = anywhere
        self._metric_failed = False
        self.lags: deque[float] = deque(maxlen=KEPT)
        self.pauses: deque[tuple[int, float]] = deque(maxlen=KEPT)  # (generation, seconds)
        self._since: list[tuple[int, float]] = []  # pauses not yet reported as metrics
        self._gc_started = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Watch this actor's loop, after tuning its collector (``tune_gc``)."""
        if self._task is not None or not (self.anywhere or in_actor()):
            return
        tune_gc(self.gc_young)
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._ticks())

    def _on_gc(self, phase: str, info: dict) -> None:
        # called by the interpreter around each collection: nothing here may raise or allocate much
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            pause = (info["generation"], time.perf_counter() - self._gc_started)
            self.pauses.append(pause)
            self._since.append(pause)

    async def _ticks(self) -> None:
        try:
            lag_metric = metrics.Histogram("tidings_loop_lag_seconds", description="How late an actor's event "
                                           "loop ran a timer", boundaries=BOUNDARIES)
            gc_metric = metrics.Histogram("tidings_gc_pause_seconds", description="Garbage collector pauses",
                                          boundaries=BOUNDARIES, tag_keys=("generation",))
        except Exception:  # outside a Ray worker: the samples are still kept
            log.warning("no stall metrics here", exc_info=True)
            lag_metric = gc_metric = None
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(TICK_S)
            lag = max(0.0, time.perf_counter() - asked - TICK_S)
            self.lags.append(lag)
            if lag_metric is None:
                self._since.clear()
                continue
            try:
                lag_metric.observe(lag)
                pauses, self._since = self._since, []
                for generation, seconds in pauses:
                    if generation:  # young collections are many and short: only the kept samples show them
                        gc_metric.observe(seconds, tags={"generation": str(generation)})
            except Exception:  # a measurement must never stop the watch; said once, not every tick
                if not self._metric_failed:
                    log.exception("stall metrics failed")
                self._metric_failed = True

    def samples(self) -> dict:
        """The kept samples: loop lags (seconds) and gc pauses per generation (seconds)."""
        per_gen: dict[str, list[float]] = {"0": [], "1": [], "2": []}
        for generation, seconds in list(self.pauses):  # copied first: a collection may append meanwhile
            per_gen[str(generation)].append(seconds)
        return {"lag": list(self.lags), "gc": per_gen}

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
            if self._on_gc in gc.callbacks:
                gc.callbacks.remove(self._on_gc)
