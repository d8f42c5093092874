"""The actors' metrics (``ray.util.metrics``): every series they export, made
lazily inside the actor (a Ray metric needs the actor's worker), the label
bounds from the Config (``policy.labels``), and a ticker for the gauges that are
sampled (consumer lag, breaker states, cache sizes, the scheduled backlog).

Ray's metrics agent serves them on each node's metrics export port
(``ray.metrics_port``) with a ``ray_`` prefix: ``tidings_deliveries_total`` is
scraped as ``ray_tidings_deliveries_total``. Hot paths count into plain dicts
and report once per batch or tick; a measurement never fails the work it
measures (a failed one is logged once per actor and then ignored).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from ray.util import metrics

from actors.tracing import BOUNDARIES
from infra.config import Config
from policy.held import Held, HeldDeferred, HeldDigest
from policy.labels import NONE, Bounds
from policy.types import CHANNELS, Outcome

log = logging.getLogger(__name__)

SAMPLE_S = 5.0  # how often sampled gauges are read: Ray exports every few seconds, Prometheus scrapes every 15 s
# accepted to recorded: milliseconds for a send, hours for a notification held by quiet hours or a digest
LATENCY_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
                      3600.0, 6 * 3600.0, 86400.0]
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}  # tidings_breaker_state's values
DEAD_LETTER_REASONS = frozenset({"payload.invalid", "payload.malformed", "processing.failed"})

# name -> (kind, description, tag keys, histogram boundaries)
SERIES: dict[str, tuple[str, str, tuple[str, ...], list[float] | None]] = {
    "tidings_deliveries_total": ("counter", "Outcomes committed to delivery_tracking (the Recorder)",
                                 ("channel", "provider", "status", "reason"), None),
    "tidings_delivery_latency_seconds": ("histogram", "Accepted to outcome committed, per channel and status",
                                         ("channel", "status"), LATENCY_BOUNDARIES),
    "tidings_provider_call_seconds": ("histogram", "One provider call (a batch call counts once)",
                                      ("channel", "provider", "result"), BOUNDARIES),
    "tidings_ratelimit_wait_seconds": ("histogram", "Waits for a provider's rate-limit token that got one",
                                       ("channel", "provider"), BOUNDARIES),
    "tidings_ratelimit_refused_total": ("counter", "Token waits given up (longer than max_wait_s)",
                                        ("channel", "provider"), None),
    "tidings_provider_limit_fallback_total": ("counter", "Provider calls admitted by a shard's local share "
                                              "of the limits while Redis did not answer", ("channel", "provider"),
                                              None),
    "tidings_breaker_state": ("gauge", "Circuit breaker per provider and shard: 0 closed, 1 half open, 2 open",
                              ("channel", "provider", "shard"), None),
    "tidings_consumer_pending": ("gauge", "Messages in a lane's JetStream consumer not yet delivered (lag)",
                                 ("lane",), None),
    "tidings_consumer_ack_pending": ("gauge", "Messages delivered to a lane's Ingestors and not yet acked",
                                     ("lane",), None),
    "tidings_consumer_redelivered": ("gauge", "Messages of a lane delivered more than once and not yet acked",
                                     ("lane",), None),
    "tidings_bulk_yields_total": ("counter", "Bulk-lane fetches kept small and alone because the priority lane "
                                  "had work (engine.priority_yield_s)", (), None),
    "tidings_dead_letters_total": ("counter", "Messages the Ingestors sent to the dead-letter stream",
                                   ("reason",), None),
    "tidings_cache_entries": ("gauge", "Entries held in a UserShard's caches", ("cache", "shard"), None),
    "tidings_cache_evictions_total": ("counter", "Users dropped from a UserShard's cache (least recently used)",
                                      ("shard",), None),
    "tidings_scheduled_backlog": ("gauge", "Held rows: due and not yet released, or waiting for their time",
                                  ("kind", "state"), None),
    "tidings_scheduled_overdue_seconds": ("gauge", "How long the oldest due held row has waited past its time",
                                          (), None),
}

# The actors' series made elsewhere, with their kinds (actors/tracing.py, actors/stalls.py, actors/scheduler.py)
ELSEWHERE: dict[str, str] = {
    "tidings_stage_seconds": "histogram", "tidings_loop_lag_seconds": "histogram",
    "tidings_gc_pause_seconds": "histogram", "tidings_retention_deleted": "counter",
}


def exported() -> set[str]:
    """Every sample name the actors export, as Prometheus scrapes it (``ray_`` first)."""
    kinds = {**{name: spec[0] for name, spec in SERIES.items()}, **ELSEWHERE}
    out = set()
    for name, kind in kinds.items():
        if kind == "counter" and not name.endswith("_total"):
            name += "_total"  # Ray's exporter adds it to a counter's name
        out |= {f"ray_{name}{end}" for end in (("_bucket", "_sum", "_count") if kind == "histogram" else ("",))}
    return out


def bounds(cfg: Config) -> Bounds:
    """A deployment's label values: its channels, providers, categories and rule reasons."""
    return Bounds(channels=[*CHANNELS, *cfg.channels],
                  providers=[p.name for ch in cfg.channels.values() for p in ch.providers],
                  categories=cfg.preferences.categories,
                  rule_reasons=[r.reason for r in cfg.preferences.rules if r.reason])


class _Known(msgspec.Struct, array_like=True):
    channels: list[str]
    providers: list[str]
    categories: list[str]
    reasons: list[str]


def encode_bounds(cfg: Config) -> bytes:
    """What an actor that has no Config (the Recorder) needs of it for its labels."""
    return msgspec.msgpack.encode(_Known(
        [*CHANNELS, *cfg.channels], [p.name for ch in cfg.channels.values() for p in ch.providers],
        list(cfg.preferences.categories), [r.reason for r in cfg.preferences.rules if r.reason]))


def decode_bounds(data: bytes | None) -> Bounds:
    """``encode_bounds``'s Bounds; None: the code's channels only (every provider ``other``)."""
    if not data:
        return Bounds(channels=CHANNELS)
    k = msgspec.msgpack.decode(data, type=_Known)
    return Bounds(k.channels, k.providers, k.categories, k.reasons)


class Meter:
    """The series of ``SERIES`` one actor reports, each made on first use."""

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}
        self._failed: set[str] = set()

    def _series(self, name: str) -> Any:
        m = self._made.get(name)
        if m is None:
            kind, description, tags, boundaries = SERIES[name]
            if kind == "counter":
                m = metrics.Counter(name, description=description, tag_keys=tags)
            elif kind == "gauge":
                m = metrics.Gauge(name, description=description, tag_keys=tags)
            else:
                m = metrics.Histogram(name, description=description, boundaries=boundaries, tag_keys=tags)
            self._made[name] = m
        return m

    def _failure(self, name: str) -> None:
        if name not in self._failed:  # said once per series: a broken exporter must not flood the log
            log.exception("metric %s failed (logged once)", name)
        self._failed.add(name)

    def inc(self, name: str, value: float, tags: dict[str, str] | None = None) -> None:
        try:
            if value:
                self._series(name).inc(value, tags=tags)
        except Exception:  # noqa: BLE001 - a measurement never fails the work
            self._failure(name)

    def set(self, name: str, value: float, tags: dict[str, str] | None = None) -> None:
        try:
            self._series(name).set(value, tags=tags)
        except Exception:  # noqa: BLE001
            self._failure(name)

    def observe(self, name: str, values: list[float], tags: dict[str, str] | None = None) -> None:
        """Every value of ``values`` (one series, its tags built once)."""
        try:
            h = self._series(name)
            for v in values:
                h.observe(v, tags=tags)
        except Exception:  # noqa: BLE001
            self._failure(name)


def committed(meter: Meter, b: Bounds, batches: list[list[Outcome]], at: float, *, released: bool = False) -> None:
    """Outcomes committed at ``at``: ``tidings_deliveries_total`` once per label
    set, and each one's time from accepted to committed
    (``tidings_delivery_latency_seconds``; one series per channel and status)
    unless ``released``: a held notification's time is the hold's (quiet hours,
    a digest, a retry window), not the engine's, and would make the latency's
    p99 hours every morning. Never raises: the work is committed already."""
    try:
        _committed(meter, b, batches, at, released)
    except Exception:  # noqa: BLE001 - a measurement never fails committed work
        meter._failure("tidings_deliveries_total")


def _committed(meter: Meter, b: Bounds, batches: list[list[Outcome]], at: float, released: bool) -> None:
    counts: Counter[tuple[str, str, str, str]] = Counter()
    latencies: dict[tuple[str, str], list[float]] = {}
    for outcomes in batches:
        for o in outcomes:
            labels = b.outcome(o)
            counts[labels] += 1
            if o.accepted_at and not released:
                latencies.setdefault((labels[0], labels[2]), []).append(max(0.0, at - o.accepted_at))
    for (channel, provider, status, reason), n in counts.items():
        meter.inc("tidings_deliveries_total", n,
                  {"channel": channel, "provider": provider, "status": status, "reason": reason})
    for (channel, status), seconds in latencies.items():
        meter.observe("tidings_delivery_latency_seconds", seconds, {"channel": channel, "status": status})


def held(meter: Meter, b: Bounds, items: list[Held]) -> None:
    """Notifications held (their ``deferred`` or ``digested`` tracking rows
    committed with them, stores/schedules.py ``hold``): counted with the
    outcomes. Never raises: the hold is committed already."""
    try:
        _held(meter, b, items)
    except Exception:  # noqa: BLE001 - a measurement never fails committed work
        meter._failure("tidings_deliveries_total")


def _held(meter: Meter, b: Bounds, items: list[Held]) -> None:
    counts: Counter[tuple[str, str, str]] = Counter()
    for it in items:
        if isinstance(it, HeldDeferred):
            counts[(b.channel(it.channel), "deferred", b.reason(it.reason))] += 1
        elif isinstance(it, HeldDigest):
            counts[(b.channel(it.channel), "digested", b.reason(it.reason))] += 1
    for (channel, status, reason), n in counts.items():
        meter.inc("tidings_deliveries_total", n, {"channel": channel, "provider": NONE, "status": status,
                                                  "reason": reason})


class Ticker:
    """Calls ``sample`` every ``SAMPLE_S`` inside the actor's loop, from ``start``
    to ``stop``; a failing sample is logged (once in a row) and the next one runs."""

    def __init__(self, sample: Callable[[], Awaitable[None]], every_s: float = SAMPLE_S) -> None:
        self.sample, self.every_s = sample, every_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self.sample()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                if not failing:
                    log.warning("metrics sample failed", exc_info=True)
                failing = True
            await asyncio.sleep(self.every_s)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


__all__ = ["BREAKER_STATES", "ELSEWHERE", "exported", "SAMPLE_S", "SERIES", "Meter", "Ticker", "bounds", "committed", "held", "decode_bounds", "encode_bounds"]
