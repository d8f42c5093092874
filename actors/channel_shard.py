"""ChannelShard: an async actor owning one channel's provider clients and their
guards (token bucket, daily limit, circuit breaker, bulkhead). It takes a batch
of DeliveryTasks and answers with one Outcome per task; CPU-light by design —
every provider call is awaited I/O with its own timeout."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import msgspec
from redis.asyncio import Redis

from actors import metrics, spans, worker
from actors.delivery import Backoff, CircuitBreaker, DailyLimit, ProviderSlot, TokenBucket, deliver, deliver_batch
from actors.delivery.bucket import Clock
from actors.delivery.bulkhead import Bulkhead
from actors.delivery.routing import Router, make_router
from actors.delivery.shared import LUA, SharedLimits, SharedSetup, redis_key, share_of_rate
from actors.link import LinkServed
from actors.stalls import StallWatch, Watched
from infra import telemetry
from infra.config import ChannelConfig, ProviderConfig
from policy import devices, wire
from policy.labels import Bounds
from policy.plan import RETRY_REASONS
from policy.types import URGENT, DeliveryTask, Outcome
from providers import registry
from providers.base import BatchProvider

log = logging.getLogger(__name__)

WARM_REDIS_S = 2.0  # the longest a shard's set-up waits to connect to the limits' Redis


def build_slot(p: ProviderConfig, channel: str = "", setup: SharedSetup | None = None,
               redis: Redis | None = None) -> ProviderSlot:
    """A provider client with its guards, from config. Its rate and daily limit are
    the provider's totals: counted in ``redis`` with every other shard of the
    channel when there is one, else this shard's share of them (``setup.share``)."""
    clock = time.monotonic
    setup = setup or SharedSetup()
    burst = p.burst or p.rate_per_s
    limited = p.rate_per_s > 0 or p.daily_limit > 0
    bucket: TokenBucket | SharedLimits
    daily: DailyLimit | SharedLimits
    if redis is not None and limited:
        bucket = daily = SharedLimits(redis, redis_key(setup.scope, channel, p.name), p.rate_per_s, burst,
                                      p.daily_limit, setup.share, setup.timeout_s, setup.retry_s, clock)
    else:
        bucket = share_of_rate(p.rate_per_s, burst, setup.share, clock)
        daily = DailyLimit(max(1, p.daily_limit // max(1, setup.share)) if p.daily_limit else 0, time.time)
    return ProviderSlot(
        provider=registry.create(p.type, p.name, dict(p.settings)),
        priority=p.priority,
        bucket=bucket,
        daily=daily,
        breaker=CircuitBreaker(failure_threshold=p.breaker_failures, recovery_s=p.breaker_recovery_s,
                               clock=clock),
        bulkhead=Bulkhead(p.concurrency),
        max_attempts=p.max_attempts,
        backoff=Backoff(base_s=p.backoff_base_s, max_s=p.backoff_max_s),
        timeout_s=p.timeout_s,
        max_wait_s=p.max_wait_s,
    )


def slots_for(service: str, slots: list[ProviderSlot]) -> list[ProviderSlot]:
    """The slots whose provider takes ``service``'s tokens; all of them when no
    provider says which it takes (none at all: the device's send fails as
    ``no_provider``)."""
    said = [s for s in slots if getattr(s.provider, "service", None) is not None]
    return [s for s in said if s.provider.service == service] if said else slots  # type: ignore[attr-defined]


def build_router(cfg: ChannelConfig, providers: list[ProviderConfig], slots: list[ProviderSlot],
                 rng: random.Random, clock: Clock = time.monotonic) -> Router:
    """The channel's router over ``slots``, built one for one from ``providers``."""
    return make_router(cfg.routing, slots, rng, clock,
                       weights={s: p.weight for s, p in zip(slots, providers, strict=True)},
                       window_s=cfg.health_window_s, max_error_rate=cfg.health_max_error_rate)


def batches(tasks: list[DeliveryTask], size: int, *, mixed: bool = False) -> list[list[DeliveryTask]]:
    """Tasks with the same content, in groups of at most ``size`` (a batch call
    sends one content to many recipients), no address twice in a group (SendGrid
    refuses a whole request that names an address twice). With ``mixed`` (the
    providers store each task's own content, as in-app does) any tasks of the same
    urgency share a group. Channels without addresses (in-app) never split on the address."""
    by_content: dict[tuple, list[DeliveryTask]] = {}
    for t in tasks:
        c = t.content
        # a batch takes its bulkhead place by its first task's priority: urgent ones apart
        key = (t.priority in URGENT,) if mixed else (c.subject, c.text, c.html, t.category)
        by_content.setdefault(key, []).append(t)
    out = []
    for pending in by_content.values():
        while pending:
            batch, seen, rest = [], set(), []
            for t in pending:
                if len(batch) < size and (not t.address or t.address not in seen):
                    batch.append(t)
                    seen.add(t.address)
                else:
                    rest.append(t)
            out.append(batch)
            pending = rest
    return out


class ChannelShard(Watched, LinkServed):
    LINKED = frozenset({"deliver"})  # the UserShards' batches (actors/link.py)

    def __init__(self, channel: str, cfg: bytes, index: int = 0, gc_young: int = 0, observe: bytes | None = None,
                 limits: bytes | None = None, niceness: int = 0):
        telemetry.setup_actor(observe, f"channel_shard.{channel}")
        worker.yield_cpu(niceness)  # a bulk shard's (ray.bulk_niceness); an urgent shard's is 0
        self.channel, self.index = channel, index
        self.cfg = msgspec.msgpack.decode(cfg, type=ChannelConfig)
        self.limits = msgspec.msgpack.decode(limits, type=SharedSetup) if limits else SharedSetup()
        self.redis: Redis | None = None  # the providers' shared limits, when the engine shares them
        self.slots: list[ProviderSlot] | None = None
        self.rng = random.Random()
        self.router: Router | None = None  # built with the slots
        self._start_lock = asyncio.Lock()
        self.delivered = 0
        self.batch_size = 0
        self.mixed = False  # every provider's batch may mix contents
        self.watch = StallWatch(gc_young)
        self.bounds = Bounds(channels=[channel], providers=[p.name for p in self.cfg.providers])
        self.meter = metrics.Meter()
        self.ticker = metrics.Ticker(self._sample)

    async def _ready(self) -> list[ProviderSlot]:
        if self.slots is not None:
            return self.slots
        async with self._start_lock:
            if self.slots is None:
                enabled = sorted((p for p in self.cfg.providers if p.enabled), key=lambda p: p.priority)
                if self.limits.redis_url and self.redis is None:
                    self.redis = Redis.from_url(self.limits.redis_url, socket_connect_timeout=1.0,
                                                socket_timeout=1.0, health_check_interval=30)
                    await self._warm_redis()
                slots = [build_slot(p, self.channel, self.limits, self.redis) for p in enabled]
                router = build_router(self.cfg, enabled, slots, self.rng)  # before start: may refuse a weight
                await asyncio.gather(*(s.provider.start() for s in slots))
                # Batch mode only when every provider can take a batch, so failover
                # never meets a provider that cannot.
                sizes = [s.provider.max_batch if isinstance(s.provider, BatchProvider) else 0 for s in slots]
                self.batch_size = min(sizes) if sizes else 0
                self.mixed = bool(slots) and all(getattr(s.provider, "mixed_content", False) for s in slots)
                self.router = router
                self.slots = slots
                self.ticker.start()
                self.watch.start()  # set up: what it holds now is frozen (actors/stalls.py)
        return self.slots

    async def _warm_redis(self) -> None:
        """Connect and load the limits' script now, so the first step is not
        taken for an outage for paying the connection and the load inside its
        ``timeout_s``. A Redis that is down is the limits' fallback, not a failed start."""
        assert self.redis is not None
        try:
            async with asyncio.timeout(WARM_REDIS_S):
                await self.redis.script_load(LUA)
        except Exception as e:  # noqa: BLE001 - the steps will fall back and say so
            log.warning("provider limits: Redis did not answer at start (%s)", type(e).__name__)

    async def deliver(self, payload: bytes) -> bytes:
        """Deliver a batch (MessagePack list[DeliveryTask]); returns list[Outcome]."""
        arrived = time.time()
        slots = await self._ready()
        tasks = wire.decode(payload, list[DeliveryTask])
        traced = {t.notification_id: t.stages for t in tasks if t.stages is not None}
        env = dict(clock=time.monotonic, wall=time.time, sleep=asyncio.sleep, rng=self.rng, router=self.router)
        multi = [t for t in tasks if t.targets]  # a user's several devices: one call each, one outcome
        single = [t for t in tasks if not t.targets] if multi else tasks
        if self.batch_size > 1 and len(single) > 1:
            calls = [self._batch(g, slots, env) for g in batches(single, self.batch_size, mixed=self.mixed)]
        else:
            calls = [self._one(t, slots, env) for t in single]
        # one gather, device tasks alongside: every call settles before this answers
        results = await asyncio.gather(*calls, *(self._to_devices(t, slots, env) for t in multi))
        outcomes: list[Outcome] = [o for r in results for o in (r if isinstance(r, list) else [r])]
        self.delivered += len(outcomes)
        asyncio.get_running_loop().call_soon(self._measure, outcomes, slots)  # after the answer is sent
        if traced:  # one task per notification here: a shard serves one channel
            answered = time.time()
            for o in outcomes:
                stamps = traced.get(o.notification_id)
                if stamps is not None:
                    o.stages = {**stamps, "channel_in": arrived, "channel_out": answered}
        if telemetry.tracer() is not None:
            self._spans(tasks, outcomes, arrived)
        return wire.encode(outcomes)

    def _measure(self, outcomes: list[Outcome], slots: list[ProviderSlot]) -> None:
        """Provider call times (a batch's call once: its outcomes share their
        attempts) and the rate-limit waits of this call's deliveries."""
        calls: dict[tuple[str, str], list[float]] = {}
        seen: set[int] = set()
        for o in outcomes:
            for a in o.attempts:
                if id(a) not in seen:
                    seen.add(id(a))
                    key = (self.bounds.provider(a.provider), self.bounds.call_result(a.ok, a.error_kind))
                    calls.setdefault(key, []).append(a.duration_ms / 1000.0)
        channel = self.bounds.channel(self.channel)
        for (provider, result), seconds in calls.items():
            self.meter.observe("tidings_provider_call_seconds", seconds,
                               {"channel": channel, "provider": provider, "result": result})
        for s in slots:
            waits, refused = s.bucket.drain_waits()
            fallbacks = s.bucket.drain_fallbacks() if isinstance(s.bucket, SharedLimits) else 0
            if waits or refused or fallbacks:
                tags = {"channel": channel, "provider": self.bounds.provider(s.name)}
                self.meter.observe("tidings_ratelimit_wait_seconds", waits, tags)
                self.meter.inc("tidings_ratelimit_refused_total", refused, tags)
                self.meter.inc("tidings_provider_limit_fallback_total", fallbacks, tags)

    async def _sample(self) -> None:
        """Each provider's breaker state (``tidings_breaker_state``), every tick."""
        channel, shard = self.bounds.channel(self.channel), str(self.index)
        for s in self.slots or ():
            state, opened = s.breaker.state, s.breaker.metrics()["opened_at"]
            if state == "open" and opened is not None and time.monotonic() - opened >= s.breaker.recovery_s:
                state = "half_open"  # it lets the next call through as a probe: not open for an idle channel
            self.meter.set("tidings_breaker_state", metrics.BREAKER_STATES[state],
                           {"channel": channel, "provider": self.bounds.provider(s.name), "shard": shard})

    def _spans(self, tasks: list[DeliveryTask], outcomes: list[Outcome], arrived: float) -> None:
        """A span per traced task, from its arrival to now, with a child per
        provider call (made from the outcome's attempts: measured anyway, and
        nothing is done during the calls). One task per notification here."""
        parents = {t.notification_id: t.traceparent for t in tasks if t.traceparent is not None}
        if not parents:
            return
        for o in outcomes:
            span = spans.start("channel_shard.deliver", parents.get(o.notification_id), at=arrived, attributes={
                "tidings.notification_id": o.notification_id, "tidings.channel": self.channel,
                "tidings.channel_shard": self.index, "tidings.status": o.status, "tidings.reason": o.reason})
            if span is not None:
                spans.provider_calls(span, o.attempts)
                spans.end(span, error=o.reason if o.status == "failed" else None)

    async def _one(self, task: DeliveryTask, slots: list[ProviderSlot], env: dict) -> Outcome:
        return await deliver(task, slots, **env)

    async def _to_devices(self, task: DeliveryTask, slots: list[ProviderSlot], env: dict) -> Outcome:
        """A task for several devices (``targets``): each sent on its own, through
        the providers that speak its service (APNs tokens to APNs, FCM tokens to
        FCM; every provider when none says), under the same limits and breakers;
        merged into the channel's one outcome (``policy.devices.merged``)."""
        targets = task.targets or []
        subs = [msgspec.structs.replace(task, address=t.token, targets=None) for t in targets]
        outs = await asyncio.gather(*(deliver(sub, slots_for(t.service, slots), **env)
                                      for t, sub in zip(targets, subs, strict=True)))
        return devices.merged(task, list(zip(targets, outs, strict=True)), time.time(), RETRY_REASONS)

    async def _batch(self, group: list[DeliveryTask], slots: list[ProviderSlot], env: dict) -> list[Outcome]:
        outcomes = await deliver_batch(group, slots, **env)
        refused = [i for i, o in enumerate(outcomes) if o.reason == "invalid_message"]
        if len(refused) > 1:
            # One bad recipient refuses the whole request: send each alone, so only
            # that one fails (those past their life are settled already)
            again = await asyncio.gather(*(deliver(group[i], slots, **env) for i in refused))
            for i, o in zip(refused, again, strict=True):
                outcomes[i] = o
        return outcomes

    async def health(self) -> dict:
        slots = await self._ready()
        return {
            "channel": self.channel,
            "shard": self.index,
            "delivered": self.delivered,
            "routing": self.cfg.routing,
            "providers": {s.provider.name: s.breaker.metrics() for s in slots},
            "limits": {s.provider.name: s.bucket.info() if isinstance(s.bucket, SharedLimits) else {"shared": False}
                       for s in slots},
        }

    async def close(self) -> None:
        self.ticker.stop()
        if self.slots:
            await asyncio.gather(*(s.provider.close() for s in self.slots), return_exceptions=True)
        if self.redis is not None:
            await asyncio.gather(self.redis.aclose(), return_exceptions=True)
            self.redis = None
        await telemetry.stop_flush()  # the spans of the last batches, before the kill (bounded)
