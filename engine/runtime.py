"""The running engine: services resolved, migrations applied, streams and actors
up. The HTTP front door and the CLI both hold one ``Engine``."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import nats
import ray
import redis.asyncio as aioredis
from nats.js import JetStreamContext

from actors.delivery.shared import SharedSetup
from actors.metrics import encode_bounds
from engine import auth, credentials, engaged, master_keys, migrations, prefs_bus, ratelimit, raybox
from engine.deployment import Claim, Generation, Layout, fingerprint
from engine.embedded import Services
from infra import db, streams, telemetry
from infra.aio import gather_within
from infra.config import Config, ConfigError, encode as encode_config, shares_provider_limits, wants_redis
from infra.pii import Keyring
from policy import wire
from policy.rules import Policy
from policy.sharding import shard_of
from policy.types import UserProfile
from stores import events as event_store, pii as pii_store

log = logging.getLogger(__name__)
WARM_S = 60.0  # the longest a start waits for its actors to be set up in advance

STOP_LOOPS_S = 15.0  # the longest a stop waits for the Ingestors', Scheduler's and EventSender's loops
SUPERVISE_S = 5.0  # how often the Ingestors' and the Scheduler's loops are started again if a restart idled them


async def cancelled(task: asyncio.Task, tries: int = 20) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again while it runs:
    on Python 3.11 ``asyncio.wait_for`` (and ``asyncio.timeout``) can swallow a
    cancel that lands as what they wait for finishes, and a loop then goes on
    as if nothing was asked (seen as an engine stop that never returned). After
    ``tries`` half-seconds it is left to end on its own (the loops also watch
    ``Engine.stopping``)."""
    for _ in range(tries):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if task.done() and not task.cancelled():
        task.exception()  # read: an error it ended with is not reported as never retrieved


class Refused(ValueError):
    """A write broke a rule; ``violations`` are (user, field, reason)."""

    def __init__(self, violations: list[tuple[str, str, str]]):
        super().__init__(f"{len(violations)} rule violation(s), first: {violations[0]}")
        self.violations = violations


@dataclass
class Actors:
    """The engine process's handles on its deployment's actors: made by this
    instance (``spawn``) or found by name (``attach``). The actors are detached:
    the last instance's ``stop`` kills them (engine/deployment.py)."""

    recorder: ray.actor.ActorHandle
    channel_shards: dict[str, list[ray.actor.ActorHandle]]
    user_shards: list[ray.actor.ActorHandle]
    ingestors: list[ray.actor.ActorHandle] = field(default_factory=list)
    scheduler: ray.actor.ActorHandle | None = None
    urgent_shards: dict[str, list[ray.actor.ActorHandle]] = field(default_factory=dict)  # high/critical only
    events: ray.actor.ActorHandle | None = None  # the EventSender (status events out)

    def every_channel_shard(self) -> list[ray.actor.ActorHandle]:
        return [a for group in (self.channel_shards, self.urgent_shards) for shards in group.values() for a in shards]

    def all(self) -> list[ray.actor.ActorHandle]:
        return [self.recorder, *self.every_channel_shard(),
                *self.user_shards, *self.ingestors, *([self.scheduler] if self.scheduler else []),
                *([self.events] if self.events else [])]

    def loops(self) -> list[ray.actor.ActorHandle]:
        """The actors whose loops ``start`` begins and ``stop`` ends."""
        return [*self.ingestors, *([self.scheduler] if self.scheduler else []), *([self.events] if self.events else [])]


def spawn(cfg: Config, nats_url: str, database_url: str, secrets: dict[str, str] | None = None,
          redis_url: str = "", *, layout: Layout) -> Actors:
    """Create the actor graph (not yet started), named by ``layout``. The actors are detached: they outlive the instance
    that made them while other instances use them, and the last instance to
    leave kills them (engine/deployment.py); a local Ray ends with its process
    anyway. ``secrets`` fill the ``secret:NAME`` provider settings, in the
    ChannelShards' copies of their channel only (engine/credentials.py)."""
    # Plain classes wrapped here, not decorated where defined, so Ray pickles them
    # by reference (workers import the module) instead of by value.
    from actors.channel_shard import ChannelShard as _ChannelShard
    from actors.event_sender import EventSender as _EventSender
    from actors.ingestor import Ingestor as _Ingestor
    from actors.recorder import Recorder as _Recorder
    from actors.scheduler import Scheduler as _Scheduler
    from actors.user_shard import UserShard as _UserShard

    ChannelShard, Ingestor = ray.remote(_ChannelShard), ray.remote(_Ingestor)
    Recorder, UserShard, Scheduler = ray.remote(_Recorder), ray.remote(_UserShard), ray.remote(_Scheduler)

    cfg = with_service_urls(cfg, nats_url, database_url)
    blob = encode_config(cfg)
    names = layout
    # restarted however often they die: an actor gone for good would fail every message
    # bound for it until it was dead-lettered. A payload that kills its actor is bounded
    # by the Ingestor instead (faults.CONTENTION_TRIES, then nats.dead_letter_after)
    opts: dict = dict(num_cpus=cfg.ray.actor_cpus, max_restarts=-1, lifetime="detached")
    if cfg.ray.placement == "spread":
        opts["scheduling_strategy"] = "SPREAD"  # restarts too: a lost node's actors go where there is room
    # peers are passed by name (actors/handles.py): a handle among constructor arguments
    # would put them in the object store, where a restart may not find them
    recorder = Recorder.options(**opts, name=names.recorder).remote(
        database_url, cfg.database.schema, _encode(cfg.recorder), pool_max=max(2, cfg.database.pool_max // 2),
        limits=_encode(cfg.database), gc_young=cfg.engine.gc_young, labels=encode_bounds(cfg),
        observe=telemetry.observe(cfg), niceness=cfg.ray.bulk_niceness)
    enabled = {name: ch for name, ch in cfg.channels.items() if name in cfg.enabled_channels()}

    def channel_shard(name: str, ch, index: int, actor: str, cpus: float = cfg.ray.actor_cpus, niceness: int = 0):
        # a provider's limits are its totals: counted in Redis by all of the channel's
        # shards, or divided among them (actors/delivery/shared.py)
        limits = SharedSetup(redis_url=redis_url if shares_provider_limits(cfg) else "",
                             scope=f"{cfg.database.schema}\0{cfg.nats.stream}", share=ch.shards + ch.urgent_shards,
                             timeout_s=cfg.provider_limits.timeout_s, retry_s=cfg.provider_limits.retry_s)
        return ChannelShard.options(**{**opts, "num_cpus": cpus}, name=actor).remote(
            name, _encode(credentials.fill(ch, secrets or {})), index, gc_young=cfg.engine.gc_young,
            observe=telemetry.observe(cfg), limits=_encode(limits), niceness=niceness)

    channel_shards = {name: [channel_shard(name, enabled[name], i, actor, niceness=bulk_shard_niceness(cfg, name))
                             for i, actor in enumerate(actors)]
                      for name, actors in names.channels.items()}
    # an urgent shard is mostly idle: a quarter of what an actor reserves (ray.actor_cpus)
    urgent_shards = {name: [channel_shard(name, enabled[name], enabled[name].shards + i, actor, cfg.ray.actor_cpus / 4)
                            for i, actor in enumerate(actors)]
                     for name, actors in names.urgent.items()}
    user_shards = [UserShard.options(**opts, name=actor).remote(i, blob, database_url, names.channels,
                                                                 names.recorder, names.urgent)
                   for i, actor in enumerate(names.users)]
    *bulk, priority = names.ingestors
    ingestors = [Ingestor.options(**opts, name=actor).remote(blob, nats_url, names.users, names.recorder, i,
                                                             niceness=cfg.ray.bulk_niceness)
                 for i, actor in enumerate(bulk)]
    # the priority lane: its own consumer and Ingestor, never behind a bulk backlog
    ingestors.append(Ingestor.options(**opts, name=priority).remote(blob, nats_url, names.users, names.recorder, 0,
                                                                    ("priority",)))
    scheduler = Scheduler.options(**opts, name=names.scheduler).remote(blob, database_url, names.users)
    # mostly waiting on NATS, PostgreSQL and subscribers' URLs: a quarter of what an actor reserves
    events = ray.remote(_EventSender).options(**{**opts, "num_cpus": cfg.ray.actor_cpus / 4},
                                              name=names.events).remote(blob, nats_url, database_url,
                                                                        niceness=cfg.ray.bulk_niceness) \
        if names.events else None
    return Actors(recorder, channel_shards, user_shards, ingestors, scheduler, urgent_shards, events)


def bulk_shard_niceness(cfg: Config, channel: str) -> int:
    """How much nicer a channel's bulk ChannelShards run (``ray.bulk_niceness``): not at
    all for a channel without urgent shards, whose critical notifications go through them."""
    return cfg.ray.bulk_niceness if cfg.channels[channel].urgent_shards else 0


def new_generation() -> str:
    return uuid.uuid4().hex[:12]


def attach(layout: Layout) -> Actors:
    """The running generation's actors, found by name (raises ValueError for one
    that is not in this Ray cluster)."""
    get = ray.get_actor
    return Actors(get(layout.recorder), {k: [get(n) for n in v] for k, v in layout.channels.items()},
                  [get(n) for n in layout.users], [get(n) for n in layout.ingestors], get(layout.scheduler),
                  {k: [get(n) for n in v] for k, v in layout.urgent.items()},
                  get(layout.events) if layout.events else None)


def kill_generation(layout: Layout, namespace: str | None = None) -> int:
    """Kill what is left of a generation whose instances all died; how many were found."""
    found = 0
    for name in layout.every():
        try:
            ray.kill(ray.get_actor(name, namespace=namespace))
            found += 1
        except ValueError:  # not in this cluster (or gone already)
            pass
    return found


async def kill_recorded(database_url: str, cfg: Config) -> int:
    """Kill the actors of the generation on record for ``cfg``'s deployment, from a
    process joined to their Ray: with its engine killed too, a whole engine's crash
    (the tests and the fault bench make one). How many were found."""
    from engine.deployment import recorded
    conn = await db.connect(database_url, cfg.database, cfg.database.schema, app="tidings-kill")
    try:
        gen = await recorded(conn, cfg.nats.stream)
    finally:
        await conn.close()
    return kill_generation(gen.layout, namespace=cfg.ray.namespace) if gen is not None else 0


def with_service_urls(cfg: Config, nats_url: str, database_url: str) -> Config:
    """In-app providers write to this engine's PostgreSQL and NATS: fill in what
    their settings leave out (the URLs are known only once the services run)."""
    import msgspec
    channels = {}
    for name, ch in cfg.channels.items():
        providers = []
        for p in ch.providers:
            if p.type == "inapp":
                p = msgspec.structs.replace(p, settings={
                    "database_url": database_url, "nats_url": nats_url, "schema": cfg.database.schema,
                    "statement_timeout_s": cfg.database.statement_timeout_s,
                    "lock_timeout_s": cfg.database.lock_timeout_s,
                    "idle_in_transaction_timeout_s": cfg.database.idle_in_transaction_timeout_s,
                    "prefix": cfg.nats.prefix, **p.settings})
            providers.append(p)
        channels[name] = msgspec.structs.replace(ch, providers=providers)
    return msgspec.structs.replace(cfg, channels=channels)


def _encode(struct) -> bytes:
    import msgspec
    return msgspec.msgpack.encode(struct)


class Engine:
    """Starts (or joins) everything the engine needs, in dependency order."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        # Redis holds the HTTP API's rate limits and the providers' shared limits: none
        # (not even embedded) while neither is wanted
        self.services = Services(cfg.engine.home, cfg.nats.url, cfg.database.url, cfg.nats.embedded_port,
                                 redis_url=cfg.redis.url if wants_redis(cfg) else None,
                                 redis_port=cfg.redis.embedded_port)
        self.redis: aioredis.Redis | None = None
        self.limiter: ratelimit.Limiter | None = None
        self.nc: nats.NATS | None = None
        self.js: JetStreamContext | None = None
        self.publisher: streams.Publisher | None = None  # the HTTP API's submissions
        self.pool: asyncpg.Pool | None = None
        self.actors: Actors | None = None
        self.ray_info: dict = {}
        self.policy = Policy(cfg.preferences)
        self.prefs_listener = None
        self.secrets: dict[str, str] = {}
        self.ring: Keyring | None = None  # personal data's keys (engine/master_keys.py), once started
        self.auth: auth.Authenticator | None = None
        self.admin_key_file = None  # set when this start created the first admin key
        self.supervisor: asyncio.Task | None = None
        self.checkpointer: asyncio.Task | None = None
        self.claim: Claim | None = None  # this instance's place in the deployment, while it runs
        self.generation: Generation | None = None  # the actors' generation it made or joined
        # called once if this instance loses its place for good (the CLI stops serving then)
        self.on_lost: Callable[[], None] | None = None
        self._enabled: tuple[Config, frozenset[str]] | None = None
        self.lost = False
        self.broadcast_dry_run = asyncio.Lock()  # one at a time (engine/dry_runs.py)
        self.stopping = False
        # engagement events recorded here, passed on to the UserShards' send-time profiles
        self.feed = engaged.Feed(lambda: self.actors.user_shards if self.actors is not None else [])

    @property
    def enabled_channels(self) -> frozenset[str]:
        """``cfg.enabled_channels()``, worked out once per configuration: every
        submission asks (it was 4% of the HTTP process's CPU at 1,000 requests/s)."""
        if self._enabled is None or self._enabled[0] is not self.cfg:
            self._enabled = (self.cfg, self.cfg.enabled_channels())
        return self._enabled[1]

    @property
    def nats_url(self) -> str:
        return self.services.nats_url

    @property
    def database_url(self) -> str:
        return self.services.database_url

    @property
    def redis_url(self) -> str:
        """Empty while neither the API's rate limits nor shared provider limits want one."""
        return self.services.redis_url

    async def start(self, *, ingest: bool = True) -> Engine:
        """Start everything, in dependency order. If a step fails or the start is
        cancelled (Ctrl-C, SIGTERM), what was started is stopped before the error
        goes on: nothing a failed start began outlives it."""
        self.stopping = False
        try:
            return await self._start(ingest)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, ingest: bool) -> Engine:
        self.services.start()  # blocking for a moment, once, at start-up
        if self.redis_url:
            # Connects on first use: a Redis that is down now is the rate limiter's
            # ``redis_down`` case, not a failed start.
            self.redis = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=1.0, socket_timeout=1.0,
                                                 health_check_interval=30)
        # API rate limits per key and per end-user token, shared by every HTTP process
        self.limiter = ratelimit.Limiter(self.redis, self.cfg.ratelimit) if self.cfg.ratelimit.enabled else None
        self.cfg = master_keys.with_master_keys(self.cfg)  # before the actors: they read them there
        await migrations.migrate_url(self.database_url, self.cfg.database.schema, self.cfg.database)
        self.claim = await Claim.join(self.database_url, self.cfg)
        running = None if self.claim.alone else await self.claim.previous()
        if not self.claim.alone and (running is None or not running.shared_ray or not self.cfg.ray.address):
            raise ConfigError(
                f"another engine is running on database schema {self.cfg.database.schema!r} and stream "
                f"{self.cfg.nats.stream!r} with a Ray of its own: several instances join one Ray cluster "
                "(set ray.address or RAY_ADDRESS on every instance)")
        if not self.claim.alone and not self.services.all_given():
            # an embedded NATS or Redis of its own would take requests no Ingestor reads
            raise ConfigError("another engine is running on this deployment: a second instance shares its NATS, "
                              "PostgreSQL and Redis (set nats.url, database.url and redis.url on every instance)")
        self.pool = await db.create_pool(self.database_url, self.cfg.database.schema,
                                         min_size=self.cfg.database.pool_min, max_size=self.cfg.database.pool_max,
                                         limits=self.cfg.database)
        async with self.pool.acquire() as conn:
            await event_store.switch(conn, self.cfg.events.enabled)
            self.ring = await pii_store.keyring(conn, master_keys.keyring(self.cfg))
            await pii_store.seal_legacy(conn, self.ring)  # rows from before encryption at rest, once
        secrets = await credentials.for_config(self.pool, self.cfg)  # a missing one fails the start here (start stops)
        self.auth = auth.Authenticator(self.pool, self.cfg.http.auth_cache_s, self.cfg.http.token_ttl_max_s)
        await auth.ensure_signing_key(self.pool)
        # a first start: an admin key, written where the CLI, the demo and the benchmarks read it
        self.admin_key_file = await auth.ensure_admin_key(self.pool, self.cfg.engine.home)
        if self.admin_key_file is not None:
            log.warning("created the first admin API key: %s (mode 0600; keep it secret)", self.admin_key_file)
        self.nc = await nats.connect(self.nats_url, name="tidings-engine", max_reconnect_attempts=-1)
        self.js = streams.jetstream(self.nc)
        self.publisher = streams.Publisher(self.nc)
        await streams.ensure_streams(self.js, self.cfg.nats)
        await streams.ensure_events_stream(self.js, self.cfg.nats, self.cfg.events.max_age_s, self.cfg.events.max_msgs)
        # On this thread, not a worker thread: Ray ties the life of the processes it
        # starts to the thread that started them.
        self.ray_info = raybox.init(self.cfg.ray)
        self.secrets = secrets  # for the tracking webhooks' verification keys (engine.http.tracking)
        await self._take_actors(running, secrets)
        if ingest:
            if self.claim.alone:
                await self._warm()
            await self._start_loops()
        assert self.generation is not None
        await self.claim.joined(self.generation.run)
        if ingest:
            await self._lead()  # what fails here is tried again each supervisor turn
            # after joining: the supervisor renews the membership the join made
            self.supervisor = asyncio.get_running_loop().create_task(self._supervise())
            if self.cfg.audit.checkpoint_every_s > 0:
                self.checkpointer = asyncio.get_running_loop().create_task(self._checkpoints())
        return self

    async def _take_actors(self, running: Generation | None, secrets: dict[str, str]) -> None:
        """Alone: a new generation of actors (what a previous one left, when all of
        its instances died, is killed first). Else: the running generation's, if
        this instance's layout is the same."""
        assert self.claim is not None
        if not self.claim.alone:
            assert running is not None
            if Layout.of(self.cfg, running.run) != running.layout:
                raise ConfigError("this instance's user shards, ingestors, channels or their shards differ from the "
                                  "running deployment's: every instance runs the same configuration (stop them all "
                                  "to change it)")
            if fingerprint(self.cfg) != running.fingerprint:
                raise ConfigError("this instance's version or configuration differs from the running deployment's "
                                  "(its actors were made with the first instance's): every instance runs the same "
                                  "(stop them all to change it; docs/design.md, \"Several instances\")")
            try:
                self.actors = attach(running.layout)
            except ValueError:
                raise ConfigError(f"the running deployment's actors are not in this instance's Ray cluster "
                                  f"({self.cfg.ray.address!r}): every instance joins the same one") from None
            self.generation = running
            log.info("joined the running deployment (generation %s)", running.run)
            return
        left = await self.claim.previous()
        if left is not None:
            killed = kill_generation(left.layout)
            if killed:
                log.warning("killed %d actor(s) of generation %s, left by instances that all stopped without "
                            "ending it", killed, left.run)
        run = new_generation()
        self.generation = Generation(run, Layout.of(self.cfg, run), bool(self.cfg.ray.address), fingerprint(self.cfg))
        await self.claim.record(self.generation)  # first: a start that fails while spawning leaves them named
        self.actors = spawn(self.cfg, self.nats_url, self.database_url, secrets, self.redis_url,
                            layout=self.generation.layout)

    async def _checkpoints(self) -> None:
        """Sign the audit log's chain heads every ``audit.checkpoint_every_s``
        when rows were added since the newest checkpoint (engine/audit.py)."""
        from engine import audit as signed

        while not self.stopping:
            await asyncio.sleep(self.cfg.audit.checkpoint_every_s)
            if self.stopping:
                return
            try:
                async with self.pool.acquire() as conn:
                    if await signed.rows_since_checkpoint(conn):
                        done = await signed.checkpoint(conn, signed.signing_key(self.cfg.engine.home))
                        log.info("audit checkpoint %d: %d chains up to row %d", done["id"], done["chains"],
                                 done["max_id"])
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the next turn tries again; the log says why
                log.warning("audit checkpoint failed: %s: %s", type(e).__name__, e)

    async def _warm(self) -> None:
        """Every UserShard sets up and calls each actor it sends to once, before
        the Ingestors start (``UserShard.warm``). What fails is logged and set up
        on first use, as before."""
        try:
            results = await gather_within(WARM_S, *(s.warm.remote() for s in self.actors.user_shards),
                                          return_exceptions=True)
        except TimeoutError:
            log.warning("warm-up took over %.0f s: the rest is set up on first use", WARM_S)
            return
        for r in results:
            failed = [repr(r)] if isinstance(r, BaseException) else r["failed"]
            if failed:
                log.warning("warm-up: %d actor(s) not set up in advance: %s", len(failed), "; ".join(failed)[:500])

    async def _start_loops(self) -> list:
        """``start`` every Ingestor, the Scheduler and the EventSender (idempotent: a running one
        returns at once); the exceptions of those that could not."""
        results = await asyncio.gather(*(a.start.remote() for a in self.actors.loops()), return_exceptions=True)
        return [r for r in results if isinstance(r, BaseException)]

    async def _supervise(self) -> None:
        """Ray restarts an actor that died (``max_restarts``) with its constructor
        arguments only: an Ingestor or Scheduler comes back idle. Every
        ``SUPERVISE_S`` their loops are started again where they are not running,
        so a restart costs at most that long of ingestion or releases."""
        while not self.stopping:
            await asyncio.sleep(SUPERVISE_S)
            if self.stopping:
                return
            try:
                await self._keep_claim()
                await self._lead()
                try:
                    failed = await asyncio.wait_for(self._start_loops(), SUPERVISE_S * 4)
                except TimeoutError:
                    failed = ["timeout"]
                if failed:
                    log.warning("supervision: %d loop(s) could not be started: %r", len(failed), failed[:3])
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a turn that failed must not end the supervision
                log.warning("supervision: a turn failed (%s: %s); the next tries again", type(e).__name__, e)

    async def stop(self) -> None:
        self.stopping = True  # the loops below end at their next turn even if a cancel is lost
        await self.feed.close()
        for task in (self.supervisor, self.checkpointer):
            if task is not None:
                await cancelled(task)
        self.supervisor = self.checkpointer = None
        try:
            await self._stop_actors()
        finally:
            await self._stop_services()

    async def _stop_actors(self) -> None:
        """The listener stopped; the actors stopped and killed if this instance is
        the deployment's last, else left to the others; its place let go."""
        if self.prefs_listener is not None:
            listener, self.prefs_listener = self.prefs_listener, None
            await listener.stop()
        last = await self._leave()
        if self.actors is not None and last:
            # bounded: a loop that does not stop in time is killed below with the rest
            try:
                await gather_within(STOP_LOOPS_S, *(a.stop.remote() for a in self.actors.loops()),
                                    return_exceptions=True)
            except TimeoutError:
                log.warning("stop: a loop did not stop within %.0f s; its actor is killed", STOP_LOOPS_S)
            # every actor holding a pool closes it before PostgreSQL stops (the Scheduler did in stop)
            closers = [a.close.remote() for a in (*self.actors.every_channel_shard(), *self.actors.user_shards)]
            closers.append(self.actors.recorder.close.remote())
            try:  # bounded like the loops: an actor stuck closing is killed with the rest
                await gather_within(STOP_LOOPS_S, *closers, return_exceptions=True)
            except TimeoutError:
                log.warning("stop: an actor did not close within %.0f s; it is killed", STOP_LOOPS_S)
            for actor in self.actors.all():
                ray.kill(actor)
        self.actors = None  # another instance's, when this one was not the last: left running
        if self.claim is not None and last:
            await self._end_generation()

    async def _stop_services(self) -> None:
        """What the process holds, whatever happened to the actors: its place in
        the deployment, NATS, the pool, Redis, the embedded services."""
        if self.claim is not None:
            claim, self.claim = self.claim, None
            await claim.close()
        if self.nc is not None:
            await self.nc.drain()
            self.nc = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
        self.services.stop()

    async def _keep_claim(self) -> None:
        """This instance's membership outlives a PostgreSQL restart (deployment.Claim.keep)."""
        if self.claim is None:
            return
        try:
            if not await self.claim.keep():
                log.error("this instance lost its place in the deployment while PostgreSQL was away, and its "
                          "actors have been ended since: it stops (started again, it joins the actors running)")
                self.lost = True
                if self.on_lost is not None:
                    self.on_lost()
                    self.on_lost = None
        except Exception as e:  # noqa: BLE001 - still away: the next turn tries again
            log.warning("the deployment's session is lost and cannot be taken again yet (%s)", type(e).__name__)

    async def _leave(self) -> bool:
        """Whether this instance is the deployment's last (its stop ends the actors)."""
        if self.claim is None:
            return False
        try:
            return await self.claim.leave()
        except Exception as e:  # noqa: BLE001 - its session is gone: so are its locks, and it is not the last
            log.warning("stop: could not tell whether other instances run (%s): the actors are left running",
                        type(e).__name__)
            return False

    async def _end_generation(self) -> None:
        """The last instance: what the row names is killed (the actors this one did
        not have handles on: a spawn that failed part-way, a join that failed) and
        the row goes. A failure leaves the row: the next instance alone ends it."""
        assert self.claim is not None
        try:
            ended = await self.claim.previous()
            if ended is not None:
                kill_generation(ended.layout)
                await self.claim.forget(ended.run)
        except Exception as e:  # noqa: BLE001 - the next start alone kills what the row names
            log.warning("stop: the generation's row stays for the next start to end (%s)", type(e).__name__)

    async def _lead(self) -> None:
        """One member, the leader, pulls the preference writes over NATS, so two
        writes for one user are applied in the order they were published; another
        member takes over within a supervisor turn when the leader is gone."""
        try:
            leading = self.claim is not None and await self.claim.lead()
        except Exception as e:  # noqa: BLE001 - the session is away: keep_claim deals with it
            log.warning("the lead lock could not be read (%s)", type(e).__name__)
            leading = False
        try:
            if leading and self.prefs_listener is None:
                listener = prefs_bus.Listener(self)
                await listener.start()
                self.prefs_listener = listener  # once started: one that failed is tried again next turn
            elif not leading and self.prefs_listener is not None:
                listener, self.prefs_listener = self.prefs_listener, None
                await listener.stop()
        except Exception as e:  # noqa: BLE001 - NATS away, say: the next supervisor turn tries again
            log.warning("the preference listener could not be started or stopped (%s: %s)", type(e).__name__, e)

    def shard_for(self, user_id: str):
        return self.actors.user_shards[shard_of(user_id, len(self.actors.user_shards))]

    async def save_profiles(self, profiles: list[UserProfile], actor: str | None) -> None:
        """Write users through their owning UserShards: one call per shard, each
        commits before it answers. A rule violation (opt-outs that switch off a
        mandatory category) raises ``Refused`` with every (user, field, reason);
        a shard with one writes nothing."""
        n = len(self.actors.user_shards)
        groups: dict[int, list[UserProfile]] = {}
        for p in profiles:
            groups.setdefault(shard_of(p.user_id, n), []).append(p)
        replies = await asyncio.gather(*(self.actors.user_shards[s].upsert_users.remote(wire.encode(g), actor)
                                         for s, g in groups.items()))
        violations = [(uid, field, why) for reply in replies for uid, field, why in reply]
        if violations:
            raise Refused(violations)
