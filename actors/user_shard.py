"""UserShard: owns the users with ``shard_of(user_id, N) == index``.

It keeps their state in memory (loaded from PostgreSQL on first use, written
through on change), runs ``policy.decide`` for each request, hands the sends to
the ChannelShards in one batch per channel, and records every outcome before it
answers — so when ``handle`` returns, the batch is durable and may be acked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import ChainMap, OrderedDict
from collections.abc import Iterable, Mapping

from actors import link, metrics, spans
from actors.handles import resolve
from actors.keyed_lock import KeyedLock
from actors.stalls import StallWatch, Watched
from actors.user_audience import Selection, select as audience_of
from actors.user_cache import ChannelCounts, Engagement, Pinned, Profiles, UserCache
from actors.user_links import link_rules, unsubscribe_rules
from actors.user_prefs import PrefCommand, PrefResult, PrefsMixin
from actors.user_templates import TemplatesMixin
from infra import db, telemetry
from infra.config import Config, decode as decode_config
from infra.pii import Keyring
from policy import devices, dryrun, experiments, fatigue, plan as planner, release as releasing, timing, wire
from policy.audience import Audience
from policy.decide import consent_key, current_consent, split_consent_key, zone
from policy.dryrun import SAMPLE, Tally
from policy.fatigue import Ledger
from policy.held import Due, DueDeferred, DueDigest, DueFallback, Held, HeldDigest
from policy.plan import Context, Item, Plan
from policy.rules import Policy
from policy.types import (
    URGENT,
    BroadcastRequest,
    Content,
    DeliveryTask,
    Device,
    Message,
    Outcome,
    UserProfile,
    UserState,
    derive_id,
    recipient_id,
)
from policy.validate import ConsentRecord, Evidence, PreferencesPatch, rule_errors
from stores import (
    devices as device_store,
    engagement as engagement_store,
    erasure,
    experiments as experiment_store,
    pii as pii_store,
    prefs as prefs_store,
    schedules as schedule_store,
    state as state_store,
    tracking,
    users as user_store,
)
from stores.audit import append_audit
from stores.prefs import Change

log = logging.getLogger(__name__)

BROADCAST_CHUNK = 5000  # users decided, sent and recorded together
SEEN_EVERY_S = 86_400.0  # a device seen again moves its last seen at most this often (policy.devices.STALE_S)
BROADCAST_INFLIGHT = 4  # chunks between decide and record at once
PRELOAD_BATCH = 5000  # users put per step of the warm start (the loop is not held for long)
SEND_BATCH = 1000  # tasks per ChannelShard call
CLOSE_S = 10.0  # the longest close() waits for the pool's connections to be released
JOURNAL_MOST = 200_000  # notifications sent and not yet recorded that the journal keeps
EXPERIMENTS_EVERY_S = 10.0  # live experiments read again at least this often (a change on another instance)


class UserShard(PrefsMixin, TemplatesMixin, Watched, link.LinkServed):
    LINKED = frozenset({"handle"})  # the Ingestors' batches (actors/link.py)

    def __init__(self, index: int, cfg: bytes, database_url: str, channel_shards: dict, recorder,
                 urgent_shards: dict | None = None):
        self.index = index
        self.cfg: Config = decode_config(cfg)
        telemetry.setup_actor(telemetry.observe(self.cfg), "user_shard")
        self.url = database_url
        # names from engine/runtime.py; deliver and record go over links (actors/link.py)
        links = self.cfg.engine.actor_links
        self.channel_shards = channel_shards = link.linked(resolve(channel_shards), links)
        self.urgent_shards = link.linked(resolve(urgent_shards or {}), links)  # channel -> shards for high and critical only
        self.recorder = link.linked(resolve(recorder), links)
        self.available = frozenset(channel_shards) & self.cfg.enabled_channels()
        self.template_cache: dict[str, tuple] = {}  # template id -> its chain (child first)
        self.template_generation = 0  # counts template saves
        self.users = UserCache(self.template_cache, self.cfg.engine.max_cached_users)  # CLOCK out
        self.users.dropped = self._engagement_dropped
        self.message_templates: dict = {}  # (template id, version) -> channel -> locale -> Compiled
        self.policy = Policy(self.cfg.preferences)
        # fatigue counts per person, when the policy caps anything (policy/fatigue.py)
        self.ledger = Ledger(self.policy.fatigue, self.cfg.engine.max_cached_users) if self.policy.fatigue else None
        # engagement by local hour of the people "deliver": "optimal" requests were for (policy/timing.py):
        # user → (when read, profile, its zone), held with the user (actors/user_cache.py)
        self.profiles = Profiles(self.users)
        # events fed (engaged) while a person's profile is being read: user → [(at, recorded)]
        self._reading: dict[str, list[tuple[float, float]]] = {}
        # sends and opens per channel of the people "channel_strategy": "best" requests were for
        # (policy/choice.py): user → (when read, channel → (sent, engaged)), held with the user;
        # the population's: their sum; events fed while a person's counts are being read: user → events
        self.channel_stats = ChannelCounts(self.users)
        self.population: dict[str, tuple[int, int]] = {}
        self._counting: dict[str, list[wire.Engaged]] = {}
        # A/B experiments routing their category's notifications (policy/experiments.py): category → experiment
        self.experiments: dict[str, experiments.Live] = {}
        self._experiments_at = 0.0  # monotonic, when last read
        self._experiments_reading: asyncio.Task | None = None
        self._experiments_asked = self._experiments_read = 0  # reads started, and the latest one kept
        self.links = link_rules(self.cfg)  # None: no pixel or click redirect, nothing done per task
        self.unsubscribe = unsubscribe_rules(self.cfg)  # None: no one-click unsubscribe URL in email
        c = self.cfg.compliance  # CAN-SPAM footer on marketing email, when an address is configured
        self.footer = (c.postal_address, frozenset(c.marketing_categories)) if c.postal_address else None
        self.clock = time.time  # what decide() is told the time is; tests set their own
        self.recent: OrderedDict[str, None] = OrderedDict()  # committed ids, oldest first
        self.inflight: dict[str, asyncio.Future] = {}  # ids being handled now -> done when committed
        self.running: dict[str, asyncio.Task] = {}  # broadcasts being handled now
        # what the ChannelShards answered and is not committed yet: notification id ->
        # channel -> Outcome. A retry of the same notification (a redelivery after a
        # failed record, a claim that came back) records these instead of sending again.
        self.journal: dict[str, dict[str, Outcome]] = {}
        self.traced: dict[str, dict[str, float]] = {}  # notifications being handled that are traced: their stamps
        self.spans: dict[str, spans.Span] = {}  # notifications being handled whose trace is sampled: their span
        self.pool = None
        self.ring: Keyring | None = None  # the master keys and the index key, once set up (_ready)
        self.rr = 0
        self.stats = {"decided": 0, "duplicates": 0, "outcomes": 0}
        self._start_lock = asyncio.Lock()
        self._writing = KeyedLock()  # by user: writes of one user in turn, of others at once
        self._preloading: asyncio.Task | None = None
        self.watch = StallWatch(self.cfg.engine.gc_young)
        self.meter, self.bounds = metrics.Meter(), metrics.bounds(self.cfg)
        self.ticker = metrics.Ticker(self._sample)
        self._evicted_seen = 0

    async def _ready(self) -> None:
        if self.pool is None:
            async with self._start_lock:
                if self.pool is None:
                    # session_free: its locks are transaction-scoped, it sets nothing outside a transaction
                    pool = await db.create_pool(self.url, self.cfg.database.schema, min_size=1, max_size=4,
                                                session_free=True)
                    try:
                        async with pool.acquire() as conn:
                            self.ring = await pii_store.keyring(conn, Keyring.parse(self.cfg.privacy.master_keys))
                    except BaseException:
                        await pool.close()
                        raise
                    try:
                        await self._read_experiments(pool)
                    except Exception as e:  # noqa: BLE001 - none routed until the next read (EXPERIMENTS_EVERY_S)
                        log.warning("reading the live experiments failed: %s", type(e).__name__)
                    self.pool = pool
                    self.ticker.start()
                    self.watch.start()  # set up: what it holds now is frozen (actors/stalls.py)
                    if self.cfg.engine.preload_users:
                        self._preloading = asyncio.get_running_loop().create_task(self._warm_start())

    async def warm(self) -> dict:
        """Set up before the first message: this shard's pool, every ChannelShard
        (provider clients) and the Recorder, each called once so Ray has connected
        this shard to it. Otherwise the first batches pay for all of it, hundreds
        of ms on a busy machine, and a p99 over a few thousand notifications is
        those batches. Says what could not be warmed (it is set up on first use)."""
        await self._ready()
        shards = [s for group in (self.channel_shards, self.urgent_shards) for ss in group.values() for s in ss]
        results = await asyncio.gather(*(s.health.remote() for s in shards), self.recorder.warm.remote(),
                                       return_exceptions=True)
        await asyncio.gather(*(p.connect() for p in link.links([shards, self.recorder])), return_exceptions=True)
        failed = [repr(r) for r in results if isinstance(r, BaseException)]
        return {"warmed": len(results) - len(failed), "failed": failed}

    # -- notifications ---------------------------------------------------------

    async def handle(self, payload: bytes) -> dict:
        """Decide, deliver and record a batch (MessagePack list[Inbound]); returns
        once every item is committed — including copies of items another batch is
        handling right now (it waits for that batch, and fails if that one fails)."""
        await self._ready()
        arrived = time.time()
        items = wire.decode(payload, list[wire.Inbound])
        fresh, waits = self._claim(items)
        done = asyncio.get_running_loop().create_future()
        for inb in fresh:
            self.inflight[inb.id] = done
            if inb.stages is not None:
                inb.stages["shard_in"] = arrived
                self.traced[inb.id] = inb.stages
            if inb.traceparent is not None:
                self._span(inb, arrived)
        failed: BaseException | None = None
        try:
            outcomes, error = await self._process(fresh)
            if self.spans:
                self._linked(outcomes)
            committed = await self._record(outcomes)
            if error is not None:
                raise error
        except BaseException as e:
            failed = e
            done.set_exception(e)
            done.exception()  # retrieved here: copies that wait on it re-raise it themselves
            raise
        else:
            done.set_result(None)
            self._remember(fresh)
        finally:
            for inb in fresh:
                self.inflight.pop(inb.id, None)
                self.traced.pop(inb.id, None)
                if self.spans and (span := self.spans.pop(inb.id, None)) is not None:
                    spans.end(span, error=failed)
        if waits:
            await asyncio.gather(*waits)
        dups = len(items) - len(fresh)
        self.stats["decided"] += len(fresh)
        self.stats["duplicates"] += dups
        self.stats["outcomes"] += len(outcomes)
        return {"decided": len(fresh), "duplicates": dups, "outcomes": len(outcomes), "committed_at": committed}

    def _span(self, inb: wire.Inbound, arrived: float) -> None:
        span = spans.start("user_shard.handle", inb.traceparent, at=arrived,
                           attributes={"tidings.notification_id": inb.id, "tidings.user_shard": self.index,
                                       "tidings.category": inb.request.category})
        if span is not None:
            self.spans[inb.id] = span

    def _linked(self, outcomes: list[Outcome]) -> None:
        """Every outcome of a traced notification (a ChannelShard's or the plan's
        own) names this shard's span as its parent in the Recorder."""
        for o in outcomes:
            span = self.spans.get(o.notification_id)
            if span is not None:
                o.traceparent = spans.parent_of(span)

    def _claim(self, items: list[wire.Inbound]) -> tuple[list[wire.Inbound], list[asyncio.Future]]:
        """Items to handle now, and the futures of copies already in flight.
        Committed ids and repeats within the batch are dropped."""
        fresh, waits, seen = [], [], set()
        for inb in items:
            if inb.id in self.recent or inb.id in seen:
                continue
            pending = self.inflight.get(inb.id)
            if pending is not None:
                waits.append(pending)
                continue
            seen.add(inb.id)
            fresh.append(inb)
        return fresh, waits

    async def _record(self, outcomes: list[Outcome]) -> float:
        """Commit outcomes through the Recorder; they leave the journal once
        committed. Returns when the commit was (the Recorder's clock)."""
        committed = await link.call(self.recorder, "record", wire.encode(outcomes))
        self._committed(outcomes)
        return committed

    def _journal(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            self.journal.setdefault(o.notification_id, {})[o.channel] = o
        while len(self.journal) > JOURNAL_MOST:  # only a long run of failed records gets here
            log.warning("sent-but-unrecorded journal full: forgetting the oldest notification")
            del self.journal[next(iter(self.journal))]

    def _committed(self, outcomes: list[Outcome]) -> None:
        self._forget((o.notification_id, o.channel) for o in outcomes)

    def _released(self, outcomes: list[Outcome]) -> None:
        """Outcomes of held notifications, committed here (schedules.finish), not
        by the Recorder: counted in the same series as the Recorder's."""
        self._committed(outcomes)
        if outcomes:
            metrics.committed(self.meter, self.bounds, [outcomes], time.time(), released=True)

    async def _sample(self) -> None:
        """Cache sizes (``tidings_cache_entries{cache}``) and evictions, every tick."""
        shard = str(self.index)
        sizes = {"users": len(self.users), "preference_templates": len(self.template_cache),
                 "message_templates": len(self.message_templates), "recent_ids": len(self.recent),
                 "unrecorded": sum(len(v) for v in self.journal.values())}
        for cache, n in sizes.items():
            self.meter.set("tidings_cache_entries", n, {"cache": cache, "shard": shard})
        evicted, self._evicted_seen = self.users.evicted - self._evicted_seen, self.users.evicted
        self.meter.inc("tidings_cache_evictions_total", evicted, {"shard": shard})

    def _forget(self, pairs: Iterable[tuple[str, str]]) -> None:
        for nid, channel in pairs:
            kept = self.journal.get(nid)
            if kept is not None:
                kept.pop(channel, None)
                if not kept:
                    del self.journal[nid]

    def _journaled(self, items: list[Item]) -> list[Outcome]:
        """The outcomes of ``items`` that were sent but not recorded."""
        return [o for it in items for o in self.journal.get(it.notification_id, {}).values()]

    def _remember(self, committed: list[wire.Inbound]) -> None:
        for inb in committed:
            self.recent[inb.id] = None
        while len(self.recent) > self.cfg.engine.recent_ids:
            self.recent.popitem(last=False)  # O(1); a dict's first key deleted again and again is not

    async def _process(self, inbound: list[wire.Inbound]) -> tuple[list[Outcome], BaseException | None]:
        async with self.pool.acquire() as conn:
            done = await tracking.recorded(conn, [i.id for i in inbound])
            states = await self._load_missing(conn, [i.request.user_id for i in inbound])
        items = await self._routed([Item(inb.id, inb.request.user_id, inb.request) for inb in inbound], states, done)
        return await self._decide_and_send(items, done, states)

    # -- A/B experiments ---------------------------------------------------------

    async def _routed(self, items: list[Item], states: Mapping[str, UserState],
                      done: Mapping[tuple[str, str], str], record: bool = True) -> list[Item]:
        """``items`` with the variants of the live experiments in place
        (``policy.experiments``), who got which recorded (``record``) before anything
        is sent. A notification routed before (a redelivery) gets the variant it got
        then, whatever the experiment's state is now, and one decided before without
        a variant gets none: it must not go out on other channels the second time.
        Only for what enters the shard new: a held or released request carries its
        variant already."""
        self._refresh_experiments()
        seen = {nid for nid, _ in done} | {it.notification_id for it in items if it.notification_id in self.journal}
        routes = {it.notification_id: experiments.route(it.request.category, it.request.priority, it.user_id,
                                                        self.experiments) if self.experiments else None
                  for it in items}
        asked = [nid for nid, r in routes.items() if r is not None or nid in seen]
        if not asked:
            return items
        async with self.pool.acquire() as conn:
            before = await experiment_store.routed_before(conn, asked)
        now = self.clock()
        out = {it.notification_id: it for it in items}
        fresh: list[tuple[Item, experiments.Live, experiments.Variant, list[Message | None]]] = []
        for it in items:
            nid, route = it.notification_id, routes[it.notification_id]
            if nid in before:
                again = experiments.apply(it.request, before[nid], now)
                out[nid] = it if again is None else Item(nid, it.user_id, again)
            elif route is not None and nid not in seen:
                # in the experiment only if every variant fits it, whichever the person gets: otherwise
                # the arms would count different requests (a timing arm leaving out what has send_at)
                # (a stopped one's winner only: there are no arms to compare then)
                candidates = route[0].variants if route[0].status == "running" else (route[1],)
                each = [experiments.apply(it.request, v, now) for v in candidates]
                if all(r is not None for r in each):
                    fresh.append((it, route[0], route[1], each))
        refs = {(r.template.id, r.template.version) for *_, each in fresh for r in each
                if r is not None and r.template is not None}
        if refs:
            await self._load_templates(refs)
        exposures = []
        for it, live, variant, each in fresh:
            if not all(r is not None and experiments.fits(r, self.message_templates.get(
                    (r.template.id, r.template.version)) if r.template is not None else None) for r in each):
                continue
            routed = each[live.variants.index(variant)] if live.status == "running" else each[0]
            assert routed is not None
            out[it.notification_id] = Item(it.notification_id, it.user_id, routed)
            exposures.append(experiments.Exposure(live.experiment_id, it.notification_id, it.user_id, variant.name,
                                                  counted=live.status == "running" and it.user_id in states))
        if exposures and record:
            async with self.pool.acquire() as conn:
                await experiment_store.expose(conn, exposures)
        return list(out.values())

    async def _read_experiments(self, pool) -> None:
        """Read the live experiments; a read started before another one that finished
        first does not overwrite it (it may predate a change the other saw)."""
        self._experiments_asked += 1
        ticket = self._experiments_asked
        async with pool.acquire() as conn:
            live = await asyncio.wait_for(experiment_store.live(conn), CLOSE_S)
        if ticket > self._experiments_read:
            self.experiments, self._experiments_read = live, ticket
            self._experiments_at = time.monotonic()

    def _refresh_experiments(self) -> None:
        """Read the live experiments again in the background when the last read is
        older than ``EXPERIMENTS_EVERY_S`` (a change made through another instance;
        this instance's own changes come at once, ``experiments_changed``)."""
        if time.monotonic() - self._experiments_at < EXPERIMENTS_EVERY_S or self._experiments_reading is not None:
            return

        async def read() -> None:
            try:
                await self._read_experiments(self.pool)
            except Exception as e:  # noqa: BLE001 - the ones read before stay; tried again next time
                log.warning("reading the live experiments failed: %s", type(e).__name__)
                self._experiments_at = time.monotonic()
            finally:
                self._experiments_reading = None

        self._experiments_reading = asyncio.get_running_loop().create_task(read())

    async def experiments_changed(self) -> int:
        """An experiment was started, stopped or archived: read them again now. How
        many are live."""
        await self._ready()
        await self._read_experiments(self.pool)
        return len(self.experiments)

    async def _templates_of(self, items: list[Item]) -> None:
        """The message templates ``items`` name, loaded before they are planned."""
        refs = {(it.request.template.id, it.request.template.version) for it in items
                if it.request.template is not None}
        if refs:
            await self._load_templates(refs)

    def _context(self, digest: bool = True, parent_id: str | None = None, live: bool = True) -> Context:
        """``live=False`` for a dry run: no fatigue counts and no engagement profiles
        (they are read only for sends that happen), so caps and send-time
        optimization are not shown."""
        return Context(self.available, self.policy, self.message_templates, self.links, digest, parent_id,
                       self.unsubscribe, self.footer, self.ledger if live else None, self.profiles if live else None,
                       self.channel_stats if live else None, self.population)

    async def _decide_and_send(self, items: list[Item], rows: Mapping[tuple[str, str], str],
                               states: Mapping[str, UserState], parent_id: str | None = None,
                               digest: bool = True) -> tuple[list[Outcome], BaseException | None]:
        """``_plan_and_send``, with the fatigue counts of the people it is for kept
        while it runs (policy/fatigue.py)."""
        if self.ledger is None:
            return await self._plan_and_send(items, rows, states, parent_id, digest)
        capped = [it for it in items if self.ledger.fatigue.capped(it.request.channels + it.request.fallback,
                                                                   it.request.category, it.request.priority)]
        users = self.ledger.use(it.user_id for it in capped if it.user_id in states)
        try:
            await self._count_new(users, states)
            return await self._plan_and_send(items, rows, states, parent_id, digest)
        finally:
            self.ledger.done(users)

    async def _plan_and_send(self, items: list[Item], rows: Mapping[tuple[str, str], str],
                             states: Mapping[str, UserState], parent_id: str | None = None,
                             digest: bool = True) -> tuple[list[Outcome], BaseException | None]:
        """Plan and carry out a round for ``items`` (``policy.plan``), then hold
        fallback checks for what was sent and try fallback channels, one round per
        channel, for what was neither sent nor held. ``rows``: the tracking rows
        there are, (notification, channel) → status. Returns every outcome there
        is, and the first error of a channel that failed: the caller records what
        there is, then raises, so a redelivery does not send the channels that
        succeeded again. Channels sent before whose record failed (the journal)
        are not sent again: their outcomes are returned to be recorded again."""
        journaled = self._journaled(items)
        # a journaled one with a final row was committed (only the answer was lost):
        # forgotten; one with a deferred row is not recorded again (the Recorder would
        # keep the row and the journal forget the send): it waits for the release that
        # moves the row (schedules.finish), and is never sent meanwhile
        self._forget((o.notification_id, o.channel) for o in journaled
                     if rows.get((o.notification_id, o.channel), "deferred") != "deferred")
        again = [o for o in journaled if (o.notification_id, o.channel) not in rows]
        for o in again:  # their stamps are the first try's: they would measure the retry
            o.stages = None
        recorded = set(rows)
        done = recorded | {(o.notification_id, o.channel) for o in journaled}
        await self._templates_of(items)
        read_profiles = await self._read_profiles(items, states)
        read_counts = await self._read_channel_stats(items)
        ctx = self._context(digest, parent_id)
        if read_profiles or read_counts:
            # what this round read, for people the cache let go meanwhile (it holds
            # engagement only with the user): decided on, not kept; the cache's first (newer)
            ctx = dataclasses.replace(ctx, profiles=ChainMap(self.profiles, read_profiles),
                                      channel_stats=ChainMap(self.channel_stats, read_counts))
        if any(it.request.channel_strategy == "best" for it in items):
            # a best-of notification with a channel sent or held (recorded, or sent and not recorded)
            # was chosen for: it is not chosen again (policy/plan.py)
            handled = tracking.handled(rows) | {o.notification_id for o in journaled if o.status == "sent"}
            ctx = dataclasses.replace(ctx, chosen=frozenset(handled))
        now = self.clock()
        outcomes, kept, error = await self._execute_counted(planner.plan_round(items, states, done, ctx, now=now),
                                                            states, now)
        outcomes = again + outcomes
        sent = {o.notification_id for o in outcomes if o.status == "sent"}
        # a check held before is held again harmlessly; one lost with a failed record is
        # not lost. Held even when a call failed: the redelivery sees the sent channel
        # recorded and would not hold it then
        checks = planner.fallback_checks(items, sent, recorded, now=self.clock())
        if checks:
            try:
                await self._hold(checks)
            except Exception as e:  # noqa: BLE001 - recorded with the rest, then raised: redelivered
                error = error or e
        # a notification sent or held before needs no fallback; one whose recorded
        # channels all failed does (it was recorded by a round that failed before its
        # fallbacks ran), and channels recorded are not tried again
        handled = tracking.handled({**rows, **{(o.notification_id, o.channel): o.status for o in again}})
        pending = planner.start_fallbacks(items, kept | handled)
        while pending and error is None:
            attempt, pending = planner.next_fallbacks(pending)
            if not attempt:
                break
            now = self.clock()
            more, kept, error = await self._execute_counted(planner.plan_round(attempt, states, done, ctx, now=now),
                                                            states, now)
            outcomes += more
            pending = [p for p in pending if p.item.notification_id not in kept]
        return await self._retry_later(items, outcomes, error)

    async def _count_new(self, users: list[str], states: Mapping[str, UserState]) -> None:
        """Start counting the fatigue caps of ``users`` not counted yet, from their
        sends recorded in the current windows. Sends of theirs made but not committed
        at that moment (after a restart: those of the batches in flight then) are
        missed, so a cap may let that many more through once."""
        assert self.ledger is not None
        new = self.ledger.unknown(users)
        if new:
            now = self.clock()
            async with self.pool.acquire() as conn:
                sends = await tracking.recent_sends(conn, new, now - fatigue.LOOKBACK_S, fatigue.ENGINE_ANSWERS)
            self.ledger.seed(sends, {u: zone(states[u].timezone) for u in new}, now)

    async def _read_profiles(self, items: list[Item], states: Mapping[str, UserState]) -> dict[str, tuple]:
        """Read the engagement profiles of the people of ``deliver: optimal`` requests
        not read in the last ``preferences.timing.refresh_s``; what was read, user →
        (when, profile, zone). Events recorded since a read reach them through ``engaged``."""
        cfg = self.policy.cfg.timing
        now = self.clock()
        wanted = dict.fromkeys(it.user_id for it in items if it.request.deliver == "optimal"
                               and it.request.deliver_by is not None and it.request.deliver_by > now)
        stale = [u for u in wanted if u in states and ((hit := self.profiles.get(u)) is None
                                                        or now - hit[0] > cfg.refresh_s)]
        stale = [u for u in stale if u not in self._reading]  # another batch is reading them
        if not stale:
            return {}

        async def read() -> dict[str, list[float]]:
            async with self.pool.acquire() as conn:
                return await engagement_store.times(conn, stale, now - cfg.lookback_days * 86_400.0)

        times, fed = await self._read_keeping_fed(self._reading, stale, read)
        read_now: dict[str, tuple] = {}
        for u, events in fed.items():
            tz = zone(states[u].timezone)
            profile = timing.profile_of(times.get(u, ()), tz)
            for at, recorded in events:  # fed while reading: in the read only if recorded before it
                if recorded > now:
                    profile = timing.add_event(profile, at, tz)
            self.profiles.put(u, now, profile, tz.key)  # not kept if the user was evicted meanwhile
            read_now[u] = (now, profile, tz.key)
        return read_now

    async def _read_channel_stats(self, items: list[Item]) -> dict[str, tuple]:
        """Read the per-channel counts of the people of ``channel_strategy: best``
        requests not read in the last ``preferences.choice.refresh_s``; what was read,
        user → (when, channel → (sent, engaged)). Sends made since are counted by
        ``_count_sends``, engagement fed by ``engaged``. Someone not in the user cache
        (an unregistered recipient, one evicted meanwhile) is read for this round only."""
        cfg = self.policy.cfg.choice
        now = self.clock()
        stale = [u for u in dict.fromkeys(it.user_id for it in items if it.request.channel_strategy == "best"
                                          and len(it.request.channels) > 1)
                 if ((hit := self.channel_stats.get(u)) is None or now - hit[0] > cfg.refresh_s)
                 and u not in self._counting]  # another batch is reading them
        if not stale:
            return {}

        async def read() -> dict[str, dict[str, tuple[int, int]]]:
            async with self.pool.acquire() as conn:
                return await engagement_store.channel_counts(conn, stale, now - cfg.lookback_days * 86_400.0)

        counts, fed = await self._read_keeping_fed(self._counting, stale, read)
        read_now: dict[str, tuple] = {}
        for u, events in fed.items():
            stats = dict(counts.get(u, {}))
            for e in events:  # fed while reading: in the read only if recorded before it
                if e.recorded > now and e.channel:
                    sent, engaged = stats.get(e.channel, (0, 0))
                    stats[e.channel] = (sent, min(sent, engaged + 1))
            self._hold_stats(u, (now, stats))
            read_now[u] = (now, stats)
        return read_now

    @staticmethod
    async def _read_keeping_fed(marks: dict[str, list], users: list[str], read):
        """Run ``read()`` (a query about ``users``) with each of them marked in ``marks``,
        where ``engaged`` keeps the events fed meanwhile; (what it read, user → the events
        fed during it) for those still marked by this read: one erased meanwhile, and read
        again since, is left out (its read is not held)."""
        mine: dict[str, list] = {u: [] for u in users}
        marks.update(mine)
        try:
            return await read(), {u: fed for u, fed in mine.items() if marks.get(u) is fed}
        finally:
            for u, fed in mine.items():
                if marks.get(u) is fed:
                    del marks[u]

    def _hold_stats(self, user: str, held: tuple[float, dict[str, tuple[int, int]]] | None) -> None:
        """Keep (or with None, forget) a person's channel counts, the population's sums
        with them. Kept only while the user is held: they leave with the user
        (``_engagement_dropped``)."""
        old = self.channel_stats.get(user)
        if old is None and held is None:
            return
        if not self.channel_stats.put(user, held[0] if held else None, dict(held[1]) if held else {}):
            return  # not held (or too big to hold: the cache told ``_engagement_dropped`` of the old)
        for stats, sign in ((old[1] if old else {}, -1), (held[1] if held else {}, 1)):
            for ch, (sent, engaged) in stats.items():
                self._tally(ch, sign * sent, sign * engaged)

    def _engagement_dropped(self, user: str, eng: Engagement) -> None:
        """A person left the user cache with their channel counts: out of the population's."""
        for ch, (sent, engaged) in eng.stats.items() if eng.stats_at is not None else ():
            self._tally(ch, -sent, -engaged)

    def _tally(self, channel: str, sent: int, engaged: int) -> None:
        """Add (sent, engaged) on ``channel`` to the population's counts."""
        s, e = self.population.get(channel, (0, 0))
        self.population[channel] = (s + sent, e + engaged)

    def _add_counts(self, user: str, eng: Engagement, channel: str, sent: int, engaged: int) -> None:
        """Add (sent, engaged) on ``channel`` to a person's counts (``eng``, held), and the population's."""
        s, e = eng.stats.get(channel, (0, 0))
        eng.stats[channel] = (s + sent, e + engaged)
        if self.users.set_engagement(user, eng):
            self._tally(channel, sent, engaged)

    def _count_sends(self, outcomes: list[Outcome]) -> None:
        """Sends to people whose channel counts are held, counted in."""
        for o in outcomes:
            if o.status == "sent" and (eng := self.users.engagement(o.user_id)) is not None \
                    and eng.stats_at is not None:
                self._add_counts(o.user_id, eng, o.channel, 1, 0)

    async def engaged(self, payload: bytes) -> int:
        """Engagement events of people this shard owns (``wire.Engaged``, from an HTTP
        process, engine/engaged.py): counted into the send-time profiles held, unless the profile
        was read after the event was recorded (the read saw it), or the event is older
        than the lookback. A person whose profile is not held is read from PostgreSQL
        when next needed, these events with it. How many were counted."""
        counted = 0
        since = self.clock() - self.policy.cfg.timing.lookback_days * 86_400.0
        events = wire.decode(payload, list[wire.Engaged])
        if self.channel_stats or self._counting:
            self._count_engaged(events)
        for e in events:
            reading = self._reading.get(e.user_id)
            if reading is not None:  # applied when the read is done
                reading.append((e.at, e.recorded))
                continue
            eng = self.users.engagement(e.user_id)
            if eng is None or eng.profile_at is None or e.recorded <= eng.profile_at or e.at < since:
                continue
            eng.profile = timing.add_event(eng.profile, e.at, zone(eng.zone))
            counted += self.users.set_engagement(e.user_id, eng)
        self.stats["engaged"] = self.stats.get("engaged", 0) + counted
        return counted

    def _count_engaged(self, events: list[wire.Engaged]) -> None:
        """Sends read (their first open or click, as fed: ``channel`` set), counted into
        the channel counts held (policy/choice.py) unless the counts were read after the
        event was recorded (the read saw it), the event is older than the lookback, or
        it would count more reads than sends (a send the counts missed)."""
        since = self.clock() - self.policy.cfg.choice.lookback_days * 86_400.0
        for e in events:
            if not e.channel or e.at < since:
                continue
            counting = self._counting.get(e.user_id)
            if counting is not None:  # applied when the read is done
                counting.append(e)
                continue
            eng = self.users.engagement(e.user_id)
            if eng is None or eng.stats_at is None or e.recorded <= eng.stats_at:
                continue
            sent, engaged = eng.stats.get(e.channel, (0, 0))
            if engaged < sent:
                self._add_counts(e.user_id, eng, e.channel, 0, 1)

    async def _execute_counted(self, plan: Plan, states: Mapping[str, UserState], now: float
                               ) -> tuple[list[Outcome], set[str], BaseException | None]:
        """``_execute``, with the plan's capped sends counted before they go (another
        batch for the same person planning meanwhile sees them) and given back if
        they did not go; ``now``: the instant the plan was made for, so a send
        planned at a window's last moment is counted in that window."""
        if self.ledger is None or not plan.capped:
            return await self._execute(plan)
        ledger = self.ledger
        zones = {u: zone(states[u].timezone) for u in {c[1] for c in plan.capped}}
        for _, user, channel, category, priority in plan.capped:
            ledger.reserve(user, channel, category, priority, zones[user], now)
        outcomes, kept, error = await self._execute(plan)
        went = {(o.notification_id, o.channel) for o in outcomes if o.status == "sent"}
        for nid, user, channel, category, priority in plan.capped:
            if (nid, channel) not in went:
                ledger.give_back(user, channel, category, priority, zones[user], now)
        return outcomes, kept, error

    async def _retry_later(self, items: list[Item], outcomes: list[Outcome],
                           error: BaseException | None) -> tuple[list[Outcome], BaseException | None]:
        """Hold the deliveries that failed for a passing reason (``planner.retry_later``)
        instead of recording them failed. Whether or not the hold commits, they
        leave the journal: failed, nothing was sent, so a redelivery may try them
        again."""
        retries, outcomes = planner.retry_later(items, outcomes, self.cfg.engine.retry_failed_for_s,
                                                now=self.clock())
        if retries:
            self._forget((h.notification_id, h.channel) for h in retries)
            try:
                await self._hold(retries)
                self.stats["retries_held"] = self.stats.get("retries_held", 0) + len(retries)
            except Exception as e:  # noqa: BLE001 - recorded with the rest, then raised: redelivered
                error = error or e
        return outcomes, error

    async def _execute(self, plan: Plan) -> tuple[list[Outcome], set[str], BaseException | None]:
        """Hold and send what ``plan`` says, at once: the outcomes (the plan's own
        and the deliveries'), the notifications with a channel sent or held, and
        the first error."""
        outcomes = list(plan.outcomes)
        # a broadcast is bulk whatever its priority: its audience must not fill the urgent shards
        urgent_ok = plan.parent_id is None
        results = await asyncio.gather(self._hold(plan.holds),
                                       *(self._send(ch, t, urgent_ok) for ch, t in plan.sends.items()),
                                       return_exceptions=True)
        error = results[0] if isinstance(results[0], BaseException) else None
        for result in results[1:]:
            delivered, failed = ([], result) if isinstance(result, BaseException) else result
            error = error or failed
            if plan.parent_id is not None:  # providers do not know the broadcast a task belongs to
                for o in delivered:
                    o.parent_id = plan.parent_id
            self._journal(delivered)
            outcomes.extend(delivered)
        if self.channel_stats:
            self._count_sends(outcomes)
        kept = plan.kept() | {o.notification_id for o in outcomes if o.status == "sent"}
        # a device's token gone removes that device (policy/devices.py), not the user's address
        gone = {(o.notification_id, o.channel) for o in outcomes if o.reason == "address_gone" and not o.gone}
        if gone:
            await self._forget_addresses([(t.user_id, t.channel, t.address) for ts in plan.sends.values()
                                          for t in ts if (t.notification_id, t.channel) in gone and not t.targets])
        devices_gone = sorted({(o.user_id, *devices.split_gone(d)) for o in outcomes if o.gone for d in o.gone})
        if devices_gone:
            await self._forget_devices(devices_gone)
        return outcomes, kept, error

    async def _hold(self, items: list[Held]) -> None:
        if items:
            # one lock order across shards: by digest bucket key (none first), then notification and channel
            items.sort(key=lambda it: (it.key.text() if isinstance(it, HeldDigest) else "",
                                       it.notification_id, getattr(it, "channel", "")))
            async with self.pool.acquire() as conn:
                digests = [it.user_id for it in items if isinstance(it, HeldDigest)]
                states = await self._load_missing(conn, digests) if digests else {}  # their time zones
                await schedule_store.hold(conn, items, lambda it: self._next_bucket(it, states))
            metrics.held(self.meter, self.bounds, items)

    def _next_bucket(self, item: HeldDigest, states: Mapping[str, UserState]):
        state = states.get(item.user_id)
        return releasing.next_bucket(item, zone(state.timezone if state else "UTC"))

    async def _send(self, channel: str, tasks: list[DeliveryTask],
                    urgent_ok: bool = True) -> tuple[list[Outcome], BaseException | None]:
        """One call per ChannelShard of this channel, the tasks dealt round robin;
        high and critical tasks to the channel's urgent shards when it has some
        (``urgent_shards``) and ``urgent_ok`` (not a broadcast's). Returns what the shards that answered delivered, and
        the first error of one that did not: the answers are journaled and
        recorded whatever another shard did, or a retry would send them again."""
        self.rr += 1
        if self.spans:
            for t in tasks:
                span = self.spans.get(t.notification_id)
                if span is not None:
                    t.traceparent = spans.parent_of(span)
        if self.traced:
            handed = time.time()
            for t in tasks:
                stamps = self.traced.get(t.notification_id)
                if stamps is not None:
                    stamps.setdefault("decided", handed)  # a fallback round's wait is not "decide"
                    t.stages = dict(stamps)
        calls = []
        urgent_shards = self.urgent_shards.get(channel) if urgent_ok else None
        if urgent_shards:
            urgent = [t for t in tasks if t.priority in URGENT]
            if urgent:
                tasks = [t for t in tasks if t.priority not in URGENT]
                calls += self._deal(urgent_shards, urgent)
        calls += self._deal(self.channel_shards[channel], tasks)
        replies = await asyncio.gather(*(link.call(shard, "deliver", wire.encode(part)) for shard, part in calls),
                                       return_exceptions=True)
        error = next((r for r in replies if isinstance(r, BaseException)), None)
        outcomes = [o for r in replies if not isinstance(r, BaseException) for o in wire.decode(r, list[Outcome])]
        if self.traced:
            back = time.time()
            for o in outcomes:
                if o.stages is not None:
                    o.stages["shard_back"] = back
        return outcomes, error

    def _deal(self, shards: list, tasks: list[DeliveryTask]) -> list[tuple]:
        """(shard, tasks) per call: batches of ``SEND_BATCH``, or the tasks dealt
        over every shard, starting at the round-robin turn."""
        k = len(shards)
        parts = [tasks[i:i + SEND_BATCH] for i in range(0, len(tasks), SEND_BATCH)] if len(tasks) > SEND_BATCH \
            else [tasks[i::k] for i in range(k)]
        return [(shards[(self.rr + i) % k], part) for i, part in enumerate(parts) if part]

    # -- broadcasts ------------------------------------------------------------

    async def broadcast(self, payload: bytes) -> dict:
        """This shard's share of a broadcast: every user it owns, decided as a
        single notification would be, in chunks; returns when all are recorded.
        Recipients already recorded (a redelivered broadcast) are skipped, and a
        repeat of a broadcast still running here joins it instead of racing it."""
        await self._ready()
        job = wire.decode(payload, wire.Broadcast)
        task = self.running.get(job.id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._broadcast(job))
            self.running[job.id] = task
            task.add_done_callback(lambda _: self.running.pop(job.id, None))
        return await asyncio.shield(task)

    async def _broadcast(self, job: wire.Broadcast) -> dict:
        selection = await self._select(job.request.audience)
        user_ids = selection.users
        gate = asyncio.Semaphore(BROADCAST_INFLIGHT)
        counts = {"users": len(user_ids), "outcomes": 0}
        failed = asyncio.Event()

        async def chunk(ids: list[str]) -> None:
            async with gate:
                if failed.is_set():  # no new chunk after a failure: the retry does this one
                    return
                try:
                    outcomes, error = await self._broadcast_chunk(job, ids, selection)
                    await self._record(outcomes)
                    counts["outcomes"] += len(outcomes)
                    if error is not None:
                        raise error
                except BaseException:
                    failed.set()
                    raise

        # every chunk settles before this answers: one that failed must not leave the
        # others running into the retry, which would send what they are sending again
        results = await asyncio.gather(*(chunk(user_ids[i:i + BROADCAST_CHUNK])
                                         for i in range(0, len(user_ids), BROADCAST_CHUNK)), return_exceptions=True)
        error = next((r for r in results if isinstance(r, BaseException)), None)
        if error is not None:
            raise error
        return counts

    async def _broadcast_chunk(self, job: wire.Broadcast, user_ids: list[str], selection: Selection):
        """One chunk of a broadcast: those of ``user_ids`` the audience takes."""
        req: BroadcastRequest = job.request
        async with self.pool.acquire() as conn:
            states = await self._audience_states(conn, user_ids)
            members = set(await selection.members(conn, user_ids, states, self.clock()))
            # one sent and not yet recorded is recorded whatever the filter says now: the
            # send itself may have changed what it reads (an open, a bounce, an unsubscribe)
            items = [it for uid in user_ids if (it := Item(recipient_id(job.id, uid), uid, req)).notification_id
                     in self.journal or uid in members]
            done = await tracking.recorded(conn, [it.notification_id for it in items])
        items = await self._routed(items, states, done)
        return await self._decide_and_send(items, done, states, parent_id=job.id)

    async def _select(self, audience) -> Selection:
        async with self.pool.acquire() as conn:
            return await audience_of(conn, audience, self.policy, self.index, self.cfg.engine.user_shards)

    async def _audience_states(self, conn, user_ids: list[str]) -> dict[str, UserState]:
        """A broadcast chunk's users: looked up in the cache, but those loaded
        here are not kept: a broadcast would otherwise pull the whole audience
        into memory for good."""
        states = {uid: self.users[uid] for uid in user_ids if uid in self.users}
        missing = [uid for uid in user_ids if uid not in states]
        if missing:
            loaded = await state_store.load_states(conn, self.ring, missing)
            await self._attach_templates(conn, loaded.values())
            states.update(loaded)
        return states

    # -- dry runs ----------------------------------------------------------------

    async def dry_run(self, payload: bytes) -> bytes:
        """A broadcast (``wire.Broadcast``) decided for every user this shard owns
        as ``broadcast`` would decide it, in the same chunks, with nothing sent,
        held or recorded: the tally (``policy.dryrun.Tally``, MessagePack)."""
        await self._ready()
        job = wire.decode(payload, wire.Broadcast)
        selection = await self._select(job.request.audience)
        user_ids = selection.users
        tally = Tally()
        gate = asyncio.Semaphore(BROADCAST_INFLIGHT)
        ctx = self._context(parent_id=job.id, live=False)

        async def chunk(ids: list[str]) -> None:
            async with gate:
                async with self.pool.acquire() as conn:
                    states = await self._audience_states(conn, ids)
                    ids = await selection.members(conn, ids, states, self.clock())
                items = await self._routed([Item(recipient_id(job.id, uid), uid, job.request) for uid in ids], states,
                                           {}, record=False)
                await self._templates_of(items)
                dryrun.decide(items, states, ctx, tally, now=self.clock())

        # a chunk that fails cancels the others (and a cancelled call, all of them)
        async with asyncio.TaskGroup() as group:
            for i in range(0, len(user_ids), BROADCAST_CHUNK):
                group.create_task(chunk(user_ids[i:i + BROADCAST_CHUNK]))
        return wire.encode(tally)

    async def count_audience(self, payload: bytes, members: int = 0) -> dict:
        """How many users this shard owns in an audience (``policy.audience``,
        MessagePack) and up to ``SAMPLE`` of them (``members``: up to that many of
        them, in ``members``): a segment is evaluated on each user's state, in the
        broadcast's chunks, nothing kept."""
        await self._ready()
        selection = await self._select(wire.decode(payload, Audience))
        found: list[str] = []
        n = 0
        gate = asyncio.Semaphore(BROADCAST_INFLIGHT)

        async def chunk(ids: list[str]) -> None:
            nonlocal n
            async with gate, self.pool.acquire() as conn:
                if selection.test is not None:
                    ids = await selection.members(conn, ids, await self._audience_states(conn, ids), self.clock())
                n += len(ids)
                found.extend(ids[:max(0, max(members, SAMPLE) - len(found))])

        async with asyncio.TaskGroup() as group:
            for i in range(0, len(selection.users), BROADCAST_CHUNK):
                group.create_task(chunk(selection.users[i:i + BROADCAST_CHUNK]))
        return {"users": n, "sample": found[:SAMPLE], **({"members": found} if members else {})}

    async def dry_run_items(self, payload: bytes) -> bytes:
        """Single notifications (``list[wire.Inbound]``) of users this shard owns,
        decided as ``handle`` would decide them, with nothing sent, held or
        recorded: the tally (MessagePack)."""
        await self._ready()
        items = [Item(inb.id, inb.request.user_id, inb.request) for inb in wire.decode(payload, list[wire.Inbound])]
        async with self.pool.acquire() as conn:
            states = await self._load_missing(conn, list({it.user_id for it in items}))
        items = await self._routed(items, states, {}, record=False)
        await self._templates_of(items)
        tally = Tally()
        dryrun.decide(items, states, self._context(live=False), tally, now=self.clock())
        return wire.encode(tally)

    # -- held notifications, back when due ---------------------------------------

    async def release(self, payload: bytes) -> dict:
        """Due items from the Scheduler (list[Due]): deferred notifications are
        decided again (never collected into a digest), fallback checks send the
        fallback channels of what was not answered, digest buckets are sealed and
        sent as one notification each. Returns when all is committed; a part that
        fails does not hold back the others, and its claim comes back."""
        await self._ready()
        dues = wire.decode(payload, list[Due])
        async with self.pool.acquire() as conn:
            states = await self._load_missing(conn, list({d.user_id for d in dues}))
        deferred = [d for d in dues if isinstance(d, DueDeferred)]
        checks = [d for d in dues if isinstance(d, DueFallback)]
        buckets = [d for d in dues if isinstance(d, DueDigest)]
        counts = {"deferred": len(deferred), "digests": 0, "items": 0, "fallback_checks": len(checks)}
        errors: list[BaseException] = []
        for part, dues_ in ((self._release_fallback, checks), (self._release_deferred, deferred)):
            if dues_:
                try:
                    await part(dues_, states)
                except Exception as e:  # noqa: BLE001 - the others still go; the claim comes back
                    errors.append(e)
        for b in buckets:  # each on its own
            try:
                counts["items"] += await self._send_digest(b, states)
                counts["digests"] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        if errors:
            raise errors[0]
        return counts

    async def _release_deferred(self, dues: list[DueDeferred], states: Mapping[str, UserState]) -> None:
        items = releasing.deferred_items(dues)
        async with self.pool.acquire() as conn:
            done = await tracking.recorded(conn, [it.notification_id for it in items], final_only=True)
        outcomes, error = await self._decide_and_send(items, done, states, digest=False)
        finished = {(o.notification_id, o.channel) for o in outcomes} | set(done)
        settled = [(d.notification_id, d.channel) for d in dues if (d.notification_id, d.channel) in finished]
        async with self.pool.acquire() as conn:
            await schedule_store.finish(conn, outcomes, settled, [])
        self._released(outcomes)
        if error is not None:
            raise error

    async def _release_fallback(self, dues: list[DueFallback], states: Mapping[str, UserState]) -> None:
        async with self.pool.acquire() as conn:
            statuses, engaged, recorded = await tracking.answers(conn, [d.notification_id for d in dues])
        items, done = releasing.fallback_items(dues, statuses, engaged, recorded)
        outcomes: list[Outcome] = []
        if items:
            # a fallback channel recorded already, whatever its status, ends the walk as
            # before: a check is one step of the fallbacks, not a new start
            outcomes, error = await self._decide_and_send(items, dict.fromkeys(done, "sent"), states)
            if error is not None:
                raise error
        async with self.pool.acquire() as conn:
            await schedule_store.finish(conn, outcomes, [(d.notification_id, schedule_store.FALLBACK_CHANNEL)
                                                         for d in dues], [])
        self._released(outcomes)

    async def _send_digest(self, due: DueDigest, states: Mapping[str, UserState]) -> int:
        async with self.pool.acquire() as conn:
            found = await schedule_store.seal(conn, due.key)
        outcomes: list[Outcome] = []
        if found:
            item = releasing.digest_item(due, found, now=self.clock())
            async with self.pool.acquire() as conn:
                done = await tracking.recorded(conn, [item.notification_id], final_only=True)
            outcomes, error = await self._decide_and_send([item], done, states, digest=False)
            if error is not None:
                raise error
        async with self.pool.acquire() as conn:
            await schedule_store.finish(conn, outcomes, [], [(due.key, [nid for nid, _ in found])])
        self._released(outcomes)
        return len(found)

    # -- users -----------------------------------------------------------------

    async def upsert_users(self, payload: bytes, actor: str | None = None) -> list[tuple[str, str, str]]:
        """Write profiles to PostgreSQL (committed first), then to memory. A
        profile's ``opt_outs`` replace the user's preference rows, and a new time
        zone moves their quiet hours: either is a preference change of type
        ``profile`` (version, audit row, change feed). Returns every rule violation as (user, field, reason);
        if there is one, nothing is written."""
        await self._ready()
        profiles = wire.decode(payload, list[UserProfile])
        ids = [p.user_id for p in profiles]
        async with self._writing.hold(ids), self.pool.acquire() as conn:
            known = await self._load_missing(conn, ids)  # under their write locks: no write since
            errors = []
            for p in profiles:
                if p.opt_outs is not None:
                    state = known.get(p.user_id)
                    chain = state.templates if state else ()
                    consent = state.consent if state else frozenset()
                    errors += [(p.user_id, "opt_outs", why) for _, why in rule_errors(
                        user_store.opt_out_rows(p.opt_outs), chain, self.policy, self.clock(), "opt_outs", consent)]
            if errors:
                return errors
            fresh: dict[str, UserState] = {}
            async with conn.transaction():
                await user_store.save_profiles(conn, self.ring, profiles, known, actor)
                versions = await user_store.lock_versions(conn, ids)
                for p in profiles:
                    state = known.get(p.user_id)
                    moved = state is not None and state.timezone != p.timezone  # quiet hours move with it
                    if p.opt_outs is None and not moved:
                        continue
                    rows = user_store.opt_out_rows(p.opt_outs) if p.opt_outs is not None else list(state.prefs)
                    change = Change(user_id=p.user_id, version=0, type="profile", source="profile",
                                    preferences=rows,
                                    consent={c: "granted" for c in (state.consent if state else ())},
                                    timezone=p.timezone, template=state.template if state else None, actor=actor)
                    stored = await prefs_store.write_change(conn, self.ring, change, versions[p.user_id], None, {})
                    if stored is not None:  # its state stored after the whole profile: no second refresh
                        fresh[p.user_id] = stored
                fresh |= await state_store.refresh_states(conn, self.ring, [i for i in ids if i not in fresh])
            await self._attach_templates(conn, fresh.values())
        self.users.update(fresh)
        return []

    async def get_user(self, user_id: str) -> bytes | None:
        await self._ready()
        held = self.users.get(user_id)
        if held is not None:  # no connection taken (its release is a round trip too)
            return wire.encode(held)
        async with self.pool.acquire() as conn:
            state = (await self._load_missing(conn, [user_id])).get(user_id)
        return None if state is None else wire.encode(state)

    async def reload(self, user_ids: list[str]) -> int:
        """Re-read users whose rows changed elsewhere (a suppression, a bulk
        import). Under their write locks: a write in between would otherwise be
        overwritten by what this read before it."""
        await self._ready()
        async with self._writing.hold(user_ids), self.pool.acquire() as conn:
            return await self._reload(conn, user_ids)

    async def _reload(self, conn, user_ids: list[str]) -> int:
        fresh = await state_store.load_states(conn, self.ring, user_ids)
        await self._attach_templates(conn, fresh.values())
        for uid in user_ids:
            if uid in fresh:
                self.users[uid] = fresh[uid]
            else:
                self.users.pop(uid, None)
        return len(user_ids)

    async def _forget_addresses(self, gone: list[tuple[str, str, str]]) -> None:
        """A provider said these addresses are gone for good (an unregistered
        device token, an expired subscription): remove them from their users,
        committed first, then in memory."""
        users = list({u for u, _, _ in gone})
        async with self._writing.hold(users), self.pool.acquire() as conn:
            await user_store.forget_addresses(conn, self.ring, gone)
            await self._reload(conn, users)
        self.stats["addresses_removed"] = self.stats.get("addresses_removed", 0) + len(gone)

    # -- devices (policy/devices.py) -------------------------------------------

    async def put_device(self, user_id: str, payload: bytes, actor: str | None) -> dict | None:
        """Register or refresh a device (``Device``, MessagePack) of a user this
        shard owns: committed (with its audit row, the token never in it) and
        ``users.state`` refreshed, then held. None for no such user; else the
        users the same token was taken from (their shards must reload them).
        The same device again with nothing changed (an app's every start) only
        moves its last seen, at most daily, without an audit row."""
        await self._ready()
        device = wire.decode(payload, Device)
        async with self._writing.hold([user_id]), self.pool.acquire() as conn:
            seen = await device_store.unchanged(conn, self.ring, user_id, device)  # the table's word, not memory's
            if seen is not None:
                if device.last_seen - seen < SEEN_EVERY_S:
                    return {"taken_from": []}
                async with conn.transaction():
                    await user_store.lock_versions(conn, [user_id])
                    await device_store.touch(conn, user_id, device.device_id)
                    fresh = await state_store.refresh_states(conn, self.ring, [user_id])
                await self._attach_templates(conn, fresh.values())
                self.users.update(fresh)
                return {"taken_from": []}
            async with conn.transaction():
                # a token another user's device has moves here: one registration of a
                # token at a time (an advisory lock), their rows locked too, all in id
                # order, and their stored states refreshed (their own shards then
                # reload them: the caller asks)
                await device_store.lock_token(conn, self.ring, device)
                others = await device_store.holders(conn, self.ring, user_id, device)
                if user_id not in await user_store.lock_versions(conn, sorted({user_id, *others})):
                    return None
                keys = await pii_store.data_keys(conn, self.ring, [user_id], create=True)
                taken = await device_store.put(conn, self.ring, keys[user_id], user_id, device)
                await device_store.keep_newest(conn, user_id, devices.MOST_DEVICES)
                await append_audit(conn, self.ring, [(user_id, "device.register", None, devices.entry(device), actor)]
                                   + [(u, "device.moved", {"device_service": device.service}, None, actor)
                                      for u in taken], keys)
                fresh = await state_store.refresh_states(conn, self.ring, [user_id, *taken])
            mine = {user_id: fresh[user_id]} if user_id in fresh else {}
            await self._attach_templates(conn, mine.values())
        self.users.update(mine)
        return {"taken_from": taken}

    async def remove_device(self, user_id: str, device_id: str, actor: str | None) -> bool:
        """Remove a user's device (committed, audited, then in memory): whether it was there."""
        await self._ready()
        return bool(await self._remove_devices([(user_id, device_id)], "device.remove", actor))

    async def _forget_devices(self, gone: list[tuple[str, str, str]]) -> None:
        """The push service said these devices' tokens are gone for good (an
        app uninstalled, a subscription expired): (user, device, token
        fingerprint). Those devices go, if they still have that token (one
        registered again with a new token stays); the user's others stay."""
        removed = await self._remove_devices([(u, d) for u, d, _ in gone], "device.gone", "push service",
                                             {(u, d): fp for u, d, fp in gone})
        self.stats["devices_removed"] = self.stats.get("devices_removed", 0) + len(removed)

    async def _remove_devices(self, pairs: list[tuple[str, str]], action: str, actor: str | None,
                              tokens: dict[tuple[str, str], str] | None = None) -> list:
        users = sorted({u for u, _ in pairs})
        async with self._writing.hold(users), self.pool.acquire() as conn:
            async with conn.transaction():
                await user_store.lock_versions(conn, users)
                if tokens is not None:  # only those still holding the token that is gone
                    keys = await pii_store.data_keys(conn, self.ring, users)
                    current = await device_store.load(conn, keys, users)
                    pairs = [(u, d.device_id) for u in users for d in current.get(u, ())
                             if tokens.get((u, d.device_id)) == devices.fingerprint(d.token)]
                removed = await device_store.remove(conn, pairs)
                if not removed:
                    return []
                await append_audit(conn, self.ring, [(u, action, {"device_id": d}, None, actor) for u, d in removed])
                fresh = await state_store.refresh_states(conn, self.ring, sorted({u for u, _ in removed}))
            await self._attach_templates(conn, fresh.values())
        self.users.update(fresh)
        return removed

    async def _ask_confirmation(self, state: UserState, keys: list[str], version: int) -> None:
        """Double opt-in: text the person once per grant that waits for them
        (``keys``, SMS), outside ``decide`` (their consent is what is being
        asked for), and record it like any send (category
        ``consent_confirmation``; the id is derived from the user and the
        version, so the record is written once). A failure is logged, not
        retried: the grant stays pending, and granting again asks again."""
        address = state.addresses.get("sms")
        purposes = sorted({p for c, p in map(split_consent_key, keys) if c == "sms"} - {"*"})
        if address is None or "sms" not in self.channel_shards or "sms" in state.suppressed or not purposes:
            return  # no number, no SMS provider, a number that must not be texted, or nothing asked on SMS
        # replace, not format: a brace in the configured text must not fail a committed write
        text = self.cfg.compliance.sms_confirm_text.replace("{purpose}", " and ".join(purposes))
        nid = derive_id(f"consent-confirm:{state.user_id}:{version}")
        now = time.time()
        task = DeliveryTask(notification_id=nid, user_id=state.user_id, channel="sms",
                            category="consent_confirmation", address=address, content=Content(text=text),
                            priority="high", accepted_at=now, locale=state.locale)
        outcomes, error = await self._send("sms", [task])
        if error is not None or not outcomes:
            log.warning("consent confirmation not sent (%s)", type(error).__name__ if error else "no answer")
            return
        try:
            await self._record(outcomes)
        except Exception as e:  # noqa: BLE001 - sent; the grant is pending either way
            log.warning("consent confirmation sent, not recorded (%s)", type(e).__name__)

    async def consent_reply(self, user_id: str, keyword: str) -> str:
        """An SMS reply from the person's number (the providers' inbound webhooks):
        ``yes`` grants what was pending on SMS, ``stop`` withdraws every SMS
        consent, ``start`` grants again what the last STOP withdrew, as it was
        granted before it (the carriers' START; ``prefs.withdrawn_by_reply``
        says what that is). Through the same versioned, audited path as any
        preference change (source ``sms_reply``). Returns what changed:
        ``confirmed``, ``stopped``, ``started``, ``nothing``, or ``failed``
        when the write was refused (the webhook then answers 503)."""
        await self._ready()
        now = time.time()
        async with self.pool.acquire() as conn:
            state = (await self._load_missing(conn, [user_id])).get(user_id)
            restorable = await prefs_store.withdrawn_by_reply(conn, user_id, "sms", now) \
                if state is not None and keyword == "start" else {}
        if state is None:
            return "nothing"
        evidence = Evidence(method="sms_reply", at=now)
        change: dict = {}
        if keyword == "start":
            change = {consent_key("sms", purpose): ConsentRecord(
                status="granted", basis=basis, source="sms_reply", text_version=text_version, expires_at=expires_at,
                evidence=evidence) for purpose, (basis, text_version, expires_at) in restorable.items()}
        else:
            status, touched = ("granted", ("pending",)) if keyword == "yes" else \
                ("withdrawn", ("granted", "pending", "expired"))
            reply = ConsentRecord(status=status, source="sms_reply", evidence=evidence)
            sms = {k: s for k, s in current_consent(state, now).items() if split_consent_key(k)[0] == "sms"}
            change = {k: reply for k, s in sms.items() if s in touched}
            if keyword == "stop" and not change:
                change = {"sms": "withdrawn"}  # a STOP is recorded even with nothing to withdraw
        if not change:
            return "nothing"
        cmd = PrefCommand(user_id=user_id, patch=PreferencesPatch(consent=change), source="sms_reply",
                          actor=f"user:{user_id}(sms)")
        result = wire.decode(await self.set_prefs(wire.encode([cmd])), list[PrefResult])[0]
        if result.status != "ok":
            log.warning("an SMS reply could not be applied: %s", result.status)
            return "failed"
        return {"yes": "confirmed", "start": "started", "stop": "stopped"}[keyword]

    async def text_back(self, user_id: str, text: str, ref: str) -> str:
        """Text ``text`` to the user's SMS number: the answer to a text they sent
        us (``ref``: the provider's id of it), for providers that cannot answer in
        the webhook's response. Once per ``ref``: it is recorded (category
        ``sms_reply``) under an id derived from it, and a webhook delivered again
        finds it recorded. After a STOP too: the one answer that confirms it is
        what carriers require. Returns the outcome's status, ``duplicate`` or
        ``nothing`` (no such user, no number, no SMS provider, a suppressed number)."""
        await self._ready()
        nid = derive_id(f"sms-reply:{ref}")
        async with self._writing.hold([user_id]):  # two copies of one webhook at once: one sends
            async with self.pool.acquire() as conn:
                if await tracking.recorded(conn, [nid]):
                    return "duplicate"
                state = (await self._load_missing(conn, [user_id])).get(user_id)
            address = state.addresses.get("sms") if state is not None else None
            if address is None or "sms" not in self.channel_shards or "sms" in state.suppressed:
                return "nothing"
            task = DeliveryTask(notification_id=nid, user_id=user_id, channel="sms", category="sms_reply",
                                address=address, content=Content(text=text), priority="high",
                                accepted_at=time.time(), locale=state.locale)
            kept = self.journal.get(nid)
            if kept:  # sent before, its record failed: recorded now, not sent again
                outcomes, error = list(kept.values()), None
            else:
                outcomes, error = await self._send("sms", [task])
                self._journal(outcomes)
            if outcomes:
                await self._record(outcomes)
            if error is not None:
                raise error
            return outcomes[0].status if outcomes else "nothing"

    async def erase(self, user_id: str, actor: str | None) -> dict:
        """Erase a user this shard owns (stores/erasure.py: their key destroyed,
        their rows deleted, a receipt), committed first, then gone from memory,
        under the user's write lock so no write of theirs lands in between.
        {"receipt": …}; {"held": reason} under a legal hold; {} if there is no
        such user and never was."""
        await self._ready()
        async with self._writing.hold([user_id]), self.pool.acquire() as conn:
            try:
                receipt = await erasure.erase(conn, self.ring, user_id, actor)
            except erasure.Held as e:
                return {"held": e.reason}
            self.users.pop(user_id, None)  # the engagement held with them too
            if self.ledger is not None:
                self.ledger.forget(user_id)
            self._reading.pop(user_id, None)
            self._counting.pop(user_id, None)
        self.stats["erased"] = self.stats.get("erased", 0) + 1
        return {} if receipt is None else {"receipt": receipt.as_dict()}

    async def preload(self) -> int:
        """Load the users this shard owns, as many as the cache holds (a warm
        start), beside whatever the shard is doing: a user held already or
        written meanwhile keeps its newer state. Returns how many were read."""
        await self._ready()
        token = self.users.begin_load()
        try:
            async with self.pool.acquire() as conn:
                # chains first: a user is decided on as soon as it is held, with its template's rules
                for tid in await prefs_store.template_ids(conn):
                    await self._chain(conn, tid)
                n = await state_store.scan_shard(conn, self.ring, self.index, self.cfg.engine.user_shards,
                                                 self.users.loading(token), limit=self.users.max_users,
                                                 batch=PRELOAD_BATCH)
                for tid in self.users.template_ids() - set(self.template_cache):  # saved meanwhile
                    await self._chain(conn, tid)
        finally:
            self.users.end_load(token)
        return n

    async def _warm_start(self) -> None:
        """``preload`` once the shard is up (engine.preload_users). Requests do
        not wait for it: until it is done, a user not yet read is read when
        needed, as always."""
        began = time.monotonic()
        try:
            n = await self.preload()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a warm start is an optimisation; users load on demand
            log.warning("UserShard %d: warm start failed (%s); users are read when needed", self.index,
                        type(e).__name__)
            return
        log.info("UserShard %d: %d users read in %.2f s", self.index, n, time.monotonic() - began)

    async def _load_missing(self, conn, user_ids) -> Pinned:
        """The states of ``user_ids`` (those that exist) for this call to decide
        on: the cached ones, the others read and cached. The cache is bounded, so
        any of them may be evicted before the call is done (by its own loads or
        another call's): the call uses what this returns, never the cache alone.
        Never overwrites: a write that committed while this read ran is newer
        (``UserCache.add_loaded``)."""
        held = self.users.held(user_ids)  # taken first: this call's own loads may evict them
        missing = {uid for uid in user_ids if uid not in held}
        loaded: dict[str, UserState] = {}
        if missing:
            token = self.users.begin_load()
            try:
                loaded = await state_store.load_states(conn, self.ring, missing)
                await self._attach_templates(conn, loaded.values())
            except BaseException:
                self.users.end_load(token)
                raise
            self.users.add_loaded(token, loaded)
        return Pinned(self.users, held, loaded, user_ids)

    async def close(self) -> None:
        """Close the pool before the engine stops PostgreSQL and kills this actor
        (the kill is not immediate: a pool left open would reconnect to a server
        shutting down, and log its failure). Bounded: a connection still held is
        closed by force."""
        if self._preloading is not None:
            self._preloading.cancel()
        if self._experiments_reading is not None:
            self._experiments_reading.cancel()
        self.ticker.stop()
        await telemetry.stop_flush()  # the spans of the last batches, before the kill (bounded)
        pool, self.pool = self.pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_S)
            except TimeoutError:
                pool.terminate()

    async def info(self) -> dict:
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        return {"index": self.index, "users": len(self.users), "evicted": self.users.evicted,
                "recent_ids": len(self.recent), "loop": loop,
                "unrecorded": sum(len(v) for v in self.journal.values()),
                "calls": link.counts([self.channel_shards, self.urgent_shards, self.recorder]), **self.stats}
