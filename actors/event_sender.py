"""EventSender: status events out of the engine.

Two loops (docs/design.md, "Status events"):

- **relay**: the outbox (``status_events``, filled by triggers in the same
  transaction as each status change) published to JetStream, subject
  ``<prefix>.events.<channel>.<status>``, ``Nats-Msg-Id`` the event's id, then
  deleted. A crash between publish and delete publishes a row again, and the
  stream's duplicate window stores it once. One relay at a time per schema
  (an advisory lock held for the round), in outbox order.
- **hooks**: one durable JetStream consumer per enabled webhook subscription,
  from the time it was made. Its events go to ``lanes`` lanes by notification
  id; a lane POSTs one event at a time, signed like the webhook channel
  (``Tidings-Signature``), and retries it in place with ``events.retry_backoff_s``
  so a notification's events arrive in order. An event still refused after the
  last wait is the subscription's dead letter and is acked. One engine's
  EventSender delivers the hooks of a schema at a time (a session advisory
  lock): two would split a consumer's events and their order.

At least once: an event is acked only after a 2xx or its dead letter is
committed; receivers drop copies by ``Tidings-Delivery-Id`` (the event's id).
Every event fetched and not yet acked is "held": a heartbeat tells JetStream
each one is still being worked on, so none is given out again while its lane
waits, and the fetch asks only for what the window (``lanes`` ×
``PENDING_PER_LANE``) has room for. A subscriber that is down makes its
consumer lag behind (events wait in the stream, in order); one that lags past
the stream's limits loses events, and the gaps in the stream sequence are
counted in the subscription's ``lost_events``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

import asyncpg
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from actors import faults, worker
from infra import db, streams, telemetry
from infra.config import Config, decode as decode_config
from infra.pii import Keyring
from policy import events
from policy.events import StatusEvent
from providers.egress import EgressPolicy, check_url, guarded_session, parse_allow, read_capped
from providers.webhook.signing import ID_HEADER, SIGNATURE_HEADER, sign
from stores import events as store, pii as pii_store

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "tidings_status_events"  # the triggers' pg_notify
PENDING_PER_LANE = 50  # events fetched ahead per lane
EVENT_TYPE_HEADER = "Tidings-Event-Type"
ATTEMPT_HEADER = "Tidings-Attempt"
RELAY_ACK_S = 30.0  # the longest a relay round waits for JetStream to store what it published
RESTART_S = (1.0, 30.0)  # a hook's loop that failed starts again after 1 s, doubling up to 30 s
LOCK_PING_S = 5.0  # the lock's connection answers a SELECT 1 within this, or is taken for gone
# the lock's session: the server ends it (and frees the lock) when its client is gone, within about a minute
# (tcp_user_timeout: also when data the server sent was never acknowledged, where keepalives do not apply)
KEEPALIVES = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3",
              "tcp_user_timeout": "60000"}
CHECK_IDLE_S = 5.0  # an idle subscription's consumer is looked up this often (it may have been deleted)
LANE_ERROR_S = 5.0  # a delivery that failed unexpectedly is tried again after this (its lane waits: order)
# pg_try_advisory_*lock(class, hashtext(schema)): the two-key space, apart from the one-key locks of ids
RELAY_LOCK = 0x74657672  # "tevr": one relay round at a time per schema
HOOKS_LOCK = 0x74657668  # "tevh": one EventSender delivers a schema's hooks


class _Hook:
    """One subscription being delivered: its consumer's loop, the events it
    holds (fetched, not yet acked, by stream sequence) and its counts."""

    def __init__(self, sub: store.Subscription, secret: str):
        self.sub, self.secret = sub, secret
        self.task: asyncio.Task | None = None  # _run: the consumer's loop, started again when it fails
        self.held: dict[int, object] = {}  # stream sequence -> the latest nats Msg given out for it
        self.room = asyncio.Event()  # set when an event leaves ``held``
        self.last_seq = 0  # the stream sequence of the newest event first given out
        self.ack_wait = 60.0  # its consumer's: the heartbeat comes four times as often
        self.delivered = self.dead_lettered = self.failed_attempts = self.lost = self.undecodable = 0
        self.restarts = 0
        self.error = ""  # why its loop last stopped ("" while it runs)
        self.failing_since = 0.0  # when the URL began refusing (0: its last answer was a 2xx)
        # events of its consumer may be out with a loop that could not give them back (NATS away,
        # or another process: a new hook knows nothing of its consumer's past)
        self.unsettled = True

    def release(self, seq: int) -> None:
        self.held.pop(seq, None)
        self.room.set()


class EventSender:
    def __init__(self, cfg: bytes, nats_url: str, database_url: str, niceness: int = 0):
        self.cfg: Config = decode_config(cfg)
        worker.yield_cpu(niceness)  # ray.bulk_niceness: it works after the provider call
        telemetry.setup_actor(telemetry.observe(self.cfg), "event_sender")  # its log lines' format and level
        self.nats_url, self.url = nats_url, database_url
        self.pool = self.nc = self.js = self.session = None
        self.publisher: streams.Publisher | None = None
        self.ring: Keyring | None = None
        self.tasks: list[asyncio.Task] = []
        self.hooks: dict[str, _Hook] = {}
        self.broken: dict[str, str] = {}  # subscriptions not delivered, and why (a secret no master key opens)
        self.replays: dict[str, asyncio.Task] = {}
        self.refreshing = asyncio.Lock()
        self.lock_conn: asyncpg.Connection | None = None  # where HOOKS_LOCK is tried, and held while leading
        self.leading = False  # this sender holds HOOKS_LOCK and delivers the hooks
        self.stopping = False
        self.dropping: asyncio.Task | None = None  # stopping the hooks after the lock's connection ended
        self.wake = asyncio.Event()
        self.listener: asyncpg.Connection | None = None
        self.egress = EgressPolicy(parse_allow(self.cfg.events.egress_allow, "events.egress_allow"))
        self.stats = {"published": 0, "relay_rounds": 0, "delivered": 0, "dead_lettered": 0, "retries": 0}
        self.last_round_at = 0.0

    async def start(self) -> None:
        """Start both loops (idempotent: the engine calls it again after a restart)."""
        if self.tasks and not all(t.done() for t in self.tasks):
            return
        if self.pool is None:
            self.pool = await db.create_pool(self.url, self.cfg.database.schema, min_size=1, max_size=3,
                                             limits=self.cfg.database)
            async with self.pool.acquire() as conn:
                self.ring = await pii_store.keyring(conn, Keyring.parse(self.cfg.privacy.master_keys))
        if self.nc is None:
            self.nc = await nats.connect(self.nats_url, name="tidings-events", max_reconnect_attempts=-1)
            self.js = streams.jetstream(self.nc)
            self.publisher = streams.Publisher(self.nc)
        if self.session is None:
            e = self.cfg.events
            self.session = guarded_session(self.egress, max_connections=e.lanes * 16, connect_timeout_s=e.timeout_s,
                                           total_timeout_s=e.timeout_s)
        loop = asyncio.get_running_loop()
        self.stopping = False
        self.tasks = [loop.create_task(self._relay_loop()), loop.create_task(self._hooks_loop())]

    async def stop(self) -> None:
        self.stopping = True  # a refresh the HTTP API asks for now starts nothing
        await _cancel(self.tasks)
        self.tasks = []
        async with self.refreshing:
            await self._stop_hooks()
        await _cancel(list(self.replays.values()))
        self.replays.clear()
        for conn in (self.listener, self.lock_conn):
            if conn is not None and not conn.is_closed():
                await conn.close()
        self.listener = self.lock_conn = None
        self.leading = False
        if self.session is not None:
            session, self.session = self.session, None
            await asyncio.wait_for(session.close(), 5)
        if self.nc is not None:
            nc, self.nc, self.js, self.publisher = self.nc, None, None, None
            try:
                await asyncio.wait_for(nc.drain(), 5)
            except TimeoutError:
                await nc.close()
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    # -- relay: outbox -> NATS ------------------------------------------------------

    async def _relay_loop(self) -> None:
        e = self.cfg.events
        while True:
            self.last_round_at = time.time()
            # cleared before the round reads, not after: a NOTIFY of a commit the round's read
            # missed (it came while the round published) wakes the next round, not the idle poll
            self.wake.clear()
            published = 0
            try:
                await self._listen()
                published = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round tries again; one line, not a traceback per second
                if faults.transient(exc) or isinstance(exc, (nats.errors.Error, TimeoutError)):
                    log.warning("status events: relay round failed (%s); trying again", type(exc).__name__)
                else:
                    log.exception("status events: relay round failed; trying again")
                await asyncio.sleep(e.relay_idle_s)
                continue
            if published < e.relay_batch:  # caught up: wait for a NOTIFY or the idle interval
                try:
                    await asyncio.wait_for(self.wake.wait(), e.relay_idle_s)
                except TimeoutError:
                    continue
                if e.relay_linger_s:  # the commits right after this one go in the same round
                    await asyncio.sleep(e.relay_linger_s)

    async def _listen(self) -> None:
        """LISTEN for the triggers' NOTIFY on a connection of its own; without
        one (it dropped), the relay polls every ``relay_idle_s``."""
        if self.listener is not None and not self.listener.is_closed():
            return
        self.listener = await db.connect(self.url, self.cfg.database, app="tidings-events")
        await self.listener.add_listener(NOTIFY_CHANNEL, lambda *_: self.wake.set())

    async def relay_once(self) -> int:
        """Publish up to ``relay_batch`` outbox rows, oldest first; the number published."""
        prefix = self.cfg.nats.prefix
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, hashtext($2))", RELAY_LOCK,
                                       self.cfg.database.schema):
                return 0  # another engine's relay has this round
            rows = await store.outbox(conn, self.cfg.events.relay_batch)
            if not rows:
                return 0
            encode = events.ENCODER.encode
            await self.publisher.publish([(events.subject(prefix, ev), encode(ev), {"Nats-Msg-Id": ev.id})
                                          for _, ev in rows], RELAY_ACK_S)
            await store.published(conn, [seq for seq, _ in rows])
        self.stats["published"] += len(rows)
        self.stats["relay_rounds"] += 1
        return len(rows)

    # -- hooks: NATS -> webhook subscriptions --------------------------------------------

    async def _hooks_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - kept as they are until the next refresh
                log.warning("status events: subscriptions not refreshed (%s)", type(exc).__name__)
            await asyncio.sleep(self.cfg.events.refresh_s)

    async def _lead(self) -> bool:
        """Whether this sender delivers the schema's hooks: it holds HOOKS_LOCK
        on a connection of its own (the lock lives as long as the connection).
        The connection is checked each time: one gone half-open would keep a
        sender believing it leads; the server's TCP keepalives end such a
        session, and its lock, within about a minute."""
        conn = self.lock_conn
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), LOCK_PING_S)
            except Exception:  # noqa: BLE001 - gone, or as good as: the lock may be another's soon
                conn.terminate()
                self.leading = False
                await self._stop_hooks()  # now, not after a reconnect that may take its own timeout
                return False
        else:
            self.leading = False
            self.lock_conn = conn = await asyncpg.connect(self.url, timeout=LOCK_PING_S, server_settings={
                **db.server_settings(self.cfg.database, app="tidings-event-hooks"), **KEEPALIVES})
            conn.add_termination_listener(self._lost_lead)
        if not self.leading:
            self.leading = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", HOOKS_LOCK,
                                                    self.cfg.database.schema))
        return self.leading

    def _lost_lead(self, conn: asyncpg.Connection) -> None:
        """The lock's connection ended: another engine may take the hooks now,
        so ours stop at once (under the refresh lock, awaited)."""
        if conn is not self.lock_conn:
            return
        self.leading = False
        if not self.stopping and (self.dropping is None or self.dropping.done()):
            self.dropping = asyncio.get_running_loop().create_task(self._drop_hooks())

    async def _drop_hooks(self) -> None:
        async with self.refreshing:
            if not self.leading:
                await self._stop_hooks()

    async def _stop_hooks(self) -> None:
        hooks, self.hooks = list(self.hooks.values()), {}
        await _cancel([h.task for h in hooks if h.task is not None])

    async def refresh(self) -> int:
        """Read the subscriptions again and start, change or stop their
        deliveries (the HTTP API calls this after a change). How many run."""
        if self.pool is None or self.stopping:
            return 0
        async with self.refreshing:
            if not await self._lead():
                await self._stop_hooks()
                return 0
            # the consumers first: a subscription made after they are listed keeps its new one
            names = await self._consumer_names()
            async with self.pool.acquire() as conn:
                every = await store.all_of_them(conn)
            if not self.leading or self.stopping:  # the lock's connection ended meanwhile
                await self._stop_hooks()
                return 0
            subs = {s.id: s for s in every if s.enabled}
            for sid in [sid for sid in self.hooks if sid not in subs]:
                gone = self.hooks.pop(sid)
                await _cancel([gone.task] if gone.task is not None else [])
            self.broken = {sid: why for sid, why in self.broken.items() if sid in subs}
            for sid, sub in subs.items():
                hook = self.hooks.get(sid)
                if hook is not None and sub.updated_at == hook.sub.updated_at:
                    continue
                try:
                    secret = store.secret_of(self.ring, sub)
                except Exception as exc:  # noqa: BLE001 - the others go on; this one is reported
                    if self.broken.get(sid) is None:
                        log.warning("status events: subscription %s has a secret no master key opens (%s); "
                                    "not delivered", sid, type(exc).__name__)
                    self.broken[sid] = "its secret cannot be opened (privacy.master_keys)"
                    if hook is not None:
                        self.hooks.pop(sid, None)
                        await _cancel([hook.task] if hook.task is not None else [])
                    continue
                self.broken.pop(sid, None)
                if hook is not None:  # changed: the URL, filters and secret apply to the next POST, in place
                    hook.sub, hook.secret = sub, secret
                    continue
                self.hooks[sid] = hook = _Hook(sub, secret)
                hook.task = asyncio.get_running_loop().create_task(self._run(hook))
            await self._drop_consumers(names, {s.id for s in every})
            return len(self.hooks)

    async def _consumer_names(self) -> list[str]:
        stream, names, offset = streams.events_stream(self.cfg.nats), [], 0
        while True:
            try:
                page = await self.js.consumers_info(stream, offset=offset)
            except NotFoundError:
                return names
            names += [c.name for c in page]
            if not page:
                return names
            offset += len(page)

    async def _drop_consumers(self, names: list[str], known: set[str]) -> None:
        """Delete the consumers (``names``, listed before ``known`` was read) of
        subscriptions that are gone; a disabled one keeps its consumer: its
        events wait for it to be enabled again."""
        stream = streams.events_stream(self.cfg.nats)
        for name in names:
            if name.startswith("hook-") and name[5:] not in known:
                try:
                    await self.js.delete_consumer(stream, name)
                except NotFoundError:
                    pass

    async def _run(self, hook: _Hook) -> None:
        """The subscription's consumer loop, started again (after 1 s, doubling
        to 30 s) whenever it fails: NATS away, its consumer deleted."""
        wait = RESTART_S[0]
        while True:
            began = time.monotonic()
            try:
                await self._hook_loop(hook)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported in info(), tried again
                hook.error, hook.restarts = type(exc).__name__, hook.restarts + 1
                if time.monotonic() - began > 2 * RESTART_S[1]:
                    wait = RESTART_S[0]
                log.warning("status events: subscription %s: delivery stopped (%s); starting again in %.0f s",
                            hook.sub.id, hook.error, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RESTART_S[1])

    async def _consumer(self, hook: _Hook):
        """Bind to the subscription's durable consumer, made (from the time the
        subscription was made) when there is none."""
        e, sub = self.cfg.events, hook.sub
        stream, durable = streams.events_stream(self.cfg.nats), streams.hook_consumer(sub.id)
        try:
            info = await self.js.consumer_info(stream, durable)
        except NotFoundError:
            info = await self.js.add_consumer(stream, ConsumerConfig(
                durable_name=durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=dt.datetime.fromtimestamp(sub.created_at, dt.UTC).isoformat(),
                ack_wait=e.ack_wait_s, max_ack_pending=e.lanes * PENDING_PER_LANE,
                filter_subject=streams.events_wildcard(self.cfg.nats)))
        hook.last_seq = info.delivered.stream_seq if info.delivered else 0
        hook.ack_wait = info.config.ack_wait or e.ack_wait_s  # a consumer made before keeps its own
        if hook.unsettled and info.num_ack_pending:
            # events given out before and not given back come again only after the ack wait; fetching
            # sooner would deliver the ones after them first
            log.info("status events: subscription %s: %d events still out; waiting %.0f s for them",
                     sub.id, info.num_ack_pending, hook.ack_wait)
            await asyncio.sleep(hook.ack_wait)
        hook.unsettled = False
        return await self.js.pull_subscribe_bind(durable, stream)

    async def _hook_loop(self, hook: _Hook) -> None:
        """Fetch the subscription's events, as many as the window has room
        for, and hand each to its lane; returns only by raising."""
        e = self.cfg.events
        window = e.lanes * PENDING_PER_LANE
        psub = await self._consumer(hook)
        lanes: list[asyncio.Queue] = [asyncio.Queue() for _ in range(e.lanes)]
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._lane(hook, q)) for q in lanes] + [loop.create_task(self._heartbeat(hook))]
        hook.error = ""
        checked = time.monotonic()
        batch: list = []  # fetched and not yet handled: given back if the loop ends in the middle
        try:
            while True:
                room = window - len(hook.held)
                if room <= 0:
                    hook.room.clear()
                    await hook.room.wait()
                    continue
                try:
                    batch = await psub.fetch(room, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    if time.monotonic() - checked > CHECK_IDLE_S:
                        # an idle fetch cannot tell a deleted consumer from a quiet stream
                        checked = time.monotonic()
                        try:
                            await psub.consumer_info()  # NotFoundError: the loop starts again and makes it
                        except (TimeoutError, nats.errors.TimeoutError):
                            pass  # a slow answer is not a missing consumer
                    continue
                checked = time.monotonic()
                while batch:
                    await self._take(hook, batch[0], lanes)
                    batch.pop(0)
        finally:
            await _cancel(tasks)
            held, hook.held = list(hook.held.values()), {}
            hook.unsettled = not await _give_back(self.nc, [*held, *batch])
            try:
                await asyncio.wait_for(psub.unsubscribe(), 5)
            except Exception:  # noqa: BLE001 - the connection is gone already
                pass

    async def _take(self, hook: _Hook, msg, lanes: list[asyncio.Queue]) -> None:
        """Hold ``msg`` and queue it in its lane (or ack it at once: not a status
        event, or not one the filters want). A gap in the sequence of first
        deliveries is events the stream dropped before they were read."""
        meta = msg.metadata
        seq = meta.sequence.stream
        if seq in hook.held:  # given out again while its lane has it: the lane acks the newest
            hook.held[seq] = msg
            return
        if meta.num_delivered == 1:
            lost = seq - hook.last_seq - 1 if hook.last_seq else 0
            hook.last_seq = max(hook.last_seq, seq)
            if lost > 0:
                await self._lost(hook, lost)
        try:
            ev = events.DECODER.decode(msg.data)
        except Exception:  # noqa: BLE001 - not ours (someone published on our subjects)
            hook.undecodable += 1
            if hook.undecodable & (hook.undecodable - 1) == 0:  # 1, 2, 4, 8, …: not one line each
                log.warning("status events: subscription %s: %d messages on the events subjects were not "
                            "status events; skipped", hook.sub.id, hook.undecodable)
            await msg.ack()
            return
        if not hook.sub.filters.wants(ev):
            await msg.ack()
            return
        hook.held[seq] = msg
        lanes[events.lane(ev.notification_id, len(lanes))].put_nowait((seq, ev))

    async def _lost(self, hook: _Hook, n: int) -> None:
        hook.lost += n
        log.warning("status events: subscription %s: %d messages left the events stream before it read them "
                    "(its limits, events.max_age_s / max_msgs, or a purge); those its filters take are lost",
                    hook.sub.id, n)
        try:
            async with self.pool.acquire() as conn:
                await store.count_lost(conn, hook.sub.id, n)
        except Exception as exc:  # noqa: BLE001 - counted in info() all the same
            log.warning("status events: lost events not counted in PostgreSQL (%s)", type(exc).__name__)

    async def _heartbeat(self, hook: _Hook) -> None:
        """Tell JetStream every held event is still being worked on, so none is
        given out again (as a duplicate, out of order) while its lane waits."""
        while True:
            await asyncio.sleep(hook.ack_wait / 4)
            for msg in list(hook.held.values()):
                try:
                    await msg.in_progress()
                except Exception:  # noqa: BLE001 - NATS away: the loop's next fetch fails and starts it again
                    break

    async def _lane(self, hook: _Hook, queue: asyncio.Queue) -> None:
        while True:
            seq, ev = await queue.get()
            while True:
                try:
                    await self._deliver(hook, seq, ev)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:  # the event stays held and is tried again: its lane keeps order
                    log.exception("status events: a delivery failed unexpectedly; trying it again")
                    await asyncio.sleep(LANE_ERROR_S)

    async def _deliver(self, hook: _Hook, seq: int, ev: StatusEvent) -> None:
        backoff = self.cfg.events.retry_backoff_s
        body = events.ENCODER.encode(ev)
        attempt = 0
        while True:
            attempt += 1
            error, for_good = await self._post(hook, body, ev, attempt)
            if error is None:
                hook.failing_since = 0.0
                await self._ack(hook, seq)
                hook.delivered += 1
                self.stats["delivered"] += 1
                return
            hook.failing_since = hook.failing_since or time.time()
            wait = None if for_good else events.backoff(backoff, attempt)
            if wait is None:
                await self._dead_letter(hook, ev, attempt, error)
                await self._ack(hook, seq)
                hook.dead_lettered += 1
                self.stats["dead_lettered"] += 1
                return
            hook.failed_attempts += 1
            self.stats["retries"] += 1
            await asyncio.sleep(wait)  # the heartbeat keeps the event ours meanwhile

    async def _dead_letter(self, hook: _Hook, ev: StatusEvent, attempts: int, error: str) -> None:
        """Commit the dead letter, trying again until PostgreSQL takes it (not
        the POSTs: they were all made)."""
        while True:
            try:
                async with self.pool.acquire() as conn:
                    await store.dead_letter(conn, hook.sub.id, ev, attempts, error)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - PostgreSQL away: the event stays held meanwhile
                log.warning("status events: dead letter not stored (%s); trying again", type(exc).__name__)
                await asyncio.sleep(LANE_ERROR_S)

    @staticmethod
    async def _ack(hook: _Hook, seq: int) -> None:
        """Ack and let go of a held event. An ack NATS did not take is given
        out again after the ack wait: a copy, which receivers drop by its id."""
        msg = hook.held.get(seq)
        try:
            if msg is not None:
                await msg.ack()
        except Exception as exc:  # noqa: BLE001 - at least once: the copy is the price
            log.warning("status events: ack not sent (%s); the event will come again", type(exc).__name__)
        finally:
            hook.release(seq)

    async def _post(self, hook: _Hook, body: bytes, ev: StatusEvent, attempt: int) -> tuple[str | None, bool]:
        """POST one event: (None when the URL took it (2xx), else why not: the
        status or the kind of failure, never the answer's body; whether the
        answer refuses this event for good, ``events.refused_for_good``)."""
        try:
            dest = check_url(hook.sub.url, self.egress, "subscription URL")
            headers = {"Content-Type": "application/json", ID_HEADER: ev.id, EVENT_TYPE_HEADER: ev.type,
                       ATTEMPT_HEADER: str(attempt), SIGNATURE_HEADER: sign(hook.secret, body, int(time.time()))}
            async with self.session.post(dest.url, data=body, headers=headers, allow_redirects=False) as resp:
                await read_capped(resp)
                if 200 <= resp.status < 300:
                    return None, False
                return f"HTTP {resp.status}", events.refused_for_good(resp.status)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is a failed attempt, retried
            return type(exc).__name__, False

    async def replay(self, sid: str, limit: int = 1000) -> int | str:
        """Deliver a subscription's dead letters again, oldest first, in the
        background, once each; each leaves the dead letters once its URL takes
        it (one still refused stays, its attempt counted). How many were
        taken, or why none can be (a replay still runs, a secret unreadable)."""
        self.replays = {k: t for k, t in self.replays.items() if not t.done()}
        if sid in self.replays:
            return "a replay of this subscription's dead letters is still running"
        if self.pool is None:
            return "status events are not running"
        async with self.pool.acquire() as conn:
            sub = await store.get(conn, sid)
            if sub is None or not sub.enabled:
                return "the subscription is disabled"
            letters = await store.oldest_dead_letters(conn, sid, limit)
        try:
            hook = _Hook(sub, store.secret_of(self.ring, sub))
        except Exception:  # noqa: BLE001 - told to the caller; nothing is sent unsigned
            return "its secret cannot be opened (privacy.master_keys)"
        self.replays[sid] = asyncio.get_running_loop().create_task(self._replay(hook, letters))
        return len(letters)

    async def _replay(self, hook: _Hook, letters: list[tuple[StatusEvent, int]]) -> None:
        sid = hook.sub.id
        try:
            for ev, attempts in letters:
                error, _ = await self._post(hook, events.ENCODER.encode(ev), ev, attempts + 1)
                async with self.pool.acquire() as conn:
                    if error is None:
                        await store.forget_dead_letter(conn, sid, ev.id)
                    else:
                        await store.dead_letter(conn, sid, ev, 1, error, add=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - what is left stays a dead letter, for the next replay
            log.warning("status events: subscription %s: replay stopped (%s)", sid, type(exc).__name__)

    async def info(self) -> dict:
        running = bool(self.tasks) and not any(t.done() for t in self.tasks)
        return {**self.stats, "running": running, "delivering_hooks": self.leading,
                "subscriptions": len(self.hooks), "last_round_at": self.last_round_at, "broken": dict(self.broken),
                "hooks": {sid: {"delivered": h.delivered, "dead_lettered": h.dead_lettered,
                                "failed_attempts": h.failed_attempts, "held": len(h.held), "lost": h.lost,
                                "undecodable": h.undecodable, "restarts": h.restarts, "error": h.error,
                                "failing_since": h.failing_since} for sid, h in self.hooks.items()}}


async def _give_back(nc, msgs: list, within_s: float = 5.0) -> bool:
    """Nak ``msgs`` so JetStream gives them out again now rather than after the
    ack wait; whether every nak reached the server (NATS may be gone)."""
    deadline = time.monotonic() + within_s
    ok = True
    for msg in msgs:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            await asyncio.wait_for(msg.nak(), min(left, 1.0))
        except Exception:  # noqa: BLE001 - it comes back after the ack wait anyway
            ok = False
    if ok and msgs:
        try:  # a nak is sent when the client's buffer is: flush, or it may be lost with the connection
            await asyncio.wait_for(nc.flush(), max(deadline - time.monotonic(), 0.1))
        except Exception:  # noqa: BLE001
            ok = False
    return ok


async def _cancel(tasks: list[asyncio.Task]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
