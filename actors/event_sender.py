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
  last wait is the subscription's dead letter and is acked.

At least once: an event is acked only after a 2xx or its dead letter is
committed; receivers drop copies by ``Tidings-Delivery-Id`` (the event's id).
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

from actors import faults
from infra import db, streams
from infra.config import Config, decode as decode_config
from infra.pii import Keyring
from policy import events
from policy.events import StatusEvent
from providers.egress import EgressPolicy, check_url, guarded_session, parse_allow, read_capped
from providers.webhook.signing import ID_HEADER, SIGNATURE_HEADER, sign
from stores import events as store, pii as pii_store

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "tidings_status_events"  # the triggers' pg_notify
ACK_WAIT_S = 60.0  # a lane holding an event longer tells JetStream it is still at it
PENDING_PER_LANE = 50  # events fetched ahead per lane
EVENT_TYPE_HEADER = "Tidings-Event-Type"
ATTEMPT_HEADER = "Tidings-Attempt"
RELAY_ACK_S = 30.0  # the longest a relay round waits for JetStream to store what it published


class _Hook:
    """One subscription being delivered: its consumer, lanes and tasks."""

    def __init__(self, sub: store.Subscription, secret: str):
        self.sub, self.secret = sub, secret
        self.tasks: list[asyncio.Task] = []
        self.delivered = self.dead_lettered = self.failed_attempts = 0


class EventSender:
    def __init__(self, cfg: bytes, nats_url: str, database_url: str):
        self.cfg: Config = decode_config(cfg)
        self.nats_url, self.url = nats_url, database_url
        self.pool = self.nc = self.js = self.session = None
        self.ring: Keyring | None = None
        self.tasks: list[asyncio.Task] = []
        self.hooks: dict[str, _Hook] = {}
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
        if self.session is None:
            e = self.cfg.events
            self.session = guarded_session(self.egress, max_connections=e.lanes * 16, connect_timeout_s=e.timeout_s,
                                           total_timeout_s=e.timeout_s)
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._relay_loop()), loop.create_task(self._hooks_loop())]

    async def stop(self) -> None:
        for hook in self.hooks.values():
            await _cancel(hook.tasks)
        self.hooks.clear()
        await _cancel(self.tasks)
        self.tasks = []
        if self.listener is not None:
            await self.listener.close()
            self.listener = None
        if self.session is not None:
            session, self.session = self.session, None
            await asyncio.wait_for(session.close(), 5)
        if self.nc is not None:
            nc, self.nc, self.js = self.nc, None, None
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
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), e.relay_idle_s)
                except TimeoutError:
                    pass

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
        key = f"tidings:events-relay:{self.cfg.database.schema}"
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1))", key):
                return 0  # another engine's relay has this round
            rows = await store.outbox(conn, self.cfg.events.relay_batch)
            if not rows:
                return 0
            acks = [await self.js.publish_async(events.subject(prefix, ev), events.ENCODER.encode(ev),
                                                headers={"Nats-Msg-Id": ev.id}) for _, ev in rows]
            await streams.all_acked(acks, RELAY_ACK_S)
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

    async def refresh(self) -> int:
        """Read the subscriptions again and start, restart or stop their
        deliveries (the HTTP API calls this after a change). How many run."""
        if self.pool is None:
            return 0
        async with self.pool.acquire() as conn:
            every = await store.every(conn)
        subs = {s.id: s for s in every if s.enabled}
        for sid in [sid for sid in self.hooks if sid not in subs or subs[sid].updated_at != self.hooks[sid].sub.updated_at]:
            await _cancel(self.hooks.pop(sid).tasks)
        for sid, sub in subs.items():
            if sid not in self.hooks:
                self.hooks[sid] = hook = _Hook(sub, store.secret_of(self.ring, sub))
                hook.tasks.append(asyncio.get_running_loop().create_task(self._hook_loop(hook)))
        await self._drop_consumers({s.id for s in every})
        return len(self.hooks)

    async def _drop_consumers(self, known: set[str]) -> None:
        """Delete the consumers of subscriptions that are gone (``known``: every
        subscription there is; a disabled one keeps its consumer: its events
        wait for it to be enabled again)."""
        stream = streams.events_stream(self.cfg.nats)
        try:
            names = [c.name for c in await self.js.consumers_info(stream)]
        except NotFoundError:
            return
        for name in names:
            if name.startswith("hook-") and name[5:] not in known:
                try:
                    await self.js.delete_consumer(stream, name)
                except NotFoundError:
                    pass

    async def _hook_loop(self, hook: _Hook) -> None:
        """Fetch the subscription's events and hand each to its lane."""
        e, sub = self.cfg.events, hook.sub
        stream, durable = streams.events_stream(self.cfg.nats), streams.hook_consumer(sub.id)
        await self.js.add_consumer(stream, ConsumerConfig(
            durable_name=durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=dt.datetime.fromtimestamp(sub.created_at, dt.UTC).isoformat(),
            ack_wait=ACK_WAIT_S, max_ack_pending=e.lanes * PENDING_PER_LANE,
            filter_subject=streams.events_wildcard(self.cfg.nats)))
        psub = await self.js.pull_subscribe_bind(durable, stream)
        lanes: list[asyncio.Queue] = [asyncio.Queue() for _ in range(e.lanes)]
        loop = asyncio.get_running_loop()
        hook.tasks += [loop.create_task(self._lane(hook, q)) for q in lanes]
        try:
            while True:
                try:
                    msgs = await psub.fetch(e.lanes * PENDING_PER_LANE, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                for msg in msgs:
                    try:
                        ev = events.DECODER.decode(msg.data)
                    except Exception:  # noqa: BLE001 - not ours (someone published on our subjects): skipped
                        await msg.ack()
                        continue
                    if not sub.filters.wants(ev):
                        await msg.ack()
                        continue
                    lanes[events.lane(ev.notification_id, e.lanes)].put_nowait((msg, ev))
        finally:
            await psub.unsubscribe()

    async def _lane(self, hook: _Hook, queue: asyncio.Queue) -> None:
        while True:
            msg, ev = await queue.get()
            try:
                await self._deliver(hook, msg, ev)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("status events: a delivery failed unexpectedly")

    async def _deliver(self, hook: _Hook, msg, ev: StatusEvent) -> None:
        backoff = self.cfg.events.retry_backoff_s
        body = events.ENCODER.encode(ev)
        attempt = 0
        while True:
            attempt += 1
            error = await self._post(hook, body, ev, attempt)
            if error is None:
                await msg.ack()
                hook.delivered += 1
                self.stats["delivered"] += 1
                return
            wait = events.backoff(backoff, attempt)
            if wait is None:
                async with self.pool.acquire() as conn:
                    await store.dead_letter(conn, hook.sub.id, ev, attempt, error)
                await msg.ack()
                hook.dead_lettered += 1
                self.stats["dead_lettered"] += 1
                return
            hook.failed_attempts += 1
            self.stats["retries"] += 1
            await self._hold(msg, wait)

    async def _hold(self, msg, seconds: float) -> None:
        """Wait ``seconds`` before the next try, telling JetStream the event is
        still being worked on (it would be given out again after ack_wait)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, ACK_WAIT_S / 3))
            await msg.in_progress()

    async def _post(self, hook: _Hook, body: bytes, ev: StatusEvent, attempt: int) -> str | None:
        """POST one event; None when the URL took it (2xx), else why not (the
        status or the kind of failure, never the answer's body)."""
        try:
            dest = check_url(hook.sub.url, self.egress, "subscription URL")
            headers = {"Content-Type": "application/json", ID_HEADER: ev.id, EVENT_TYPE_HEADER: ev.type,
                       ATTEMPT_HEADER: str(attempt), SIGNATURE_HEADER: sign(hook.secret, body, int(time.time()))}
            async with self.session.post(dest.url, data=body, headers=headers, allow_redirects=False) as resp:
                await read_capped(resp)
                return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is a failed attempt, retried
            return type(exc).__name__

    async def replay(self, sid: str, limit: int = 1000) -> int:
        """Deliver a subscription's dead letters again, oldest first, in the
        background; each leaves the dead letters once its URL takes it (one
        still refused is dead-lettered again). How many were taken."""
        hook = self.hooks.get(sid)
        if hook is None or self.pool is None:
            return 0
        async with self.pool.acquire() as conn:
            letters = await store.oldest_dead_letters(conn, sid, limit)

        async def again() -> None:
            for ev in letters:
                error = await self._post(hook, events.ENCODER.encode(ev), ev, 1)
                async with self.pool.acquire() as conn:
                    if error is None:
                        await store.forget_dead_letter(conn, sid, ev.id)
                    else:
                        await store.dead_letter(conn, sid, ev, 1, error)

        hook.tasks.append(asyncio.get_running_loop().create_task(again()))
        return len(letters)

    async def info(self) -> dict:
        running = bool(self.tasks) and not any(t.done() for t in self.tasks)
        return {**self.stats, "running": running, "subscriptions": len(self.hooks), "last_round_at": self.last_round_at,
                "hooks": {sid: {"delivered": h.delivered, "dead_lettered": h.dead_lettered,
                                "failed_attempts": h.failed_attempts} for sid, h in self.hooks.items()}}


async def _cancel(tasks: list[asyncio.Task]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
