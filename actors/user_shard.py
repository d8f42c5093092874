"""UserShard: owns the users with ``shard_of(user_id, N) == index``.

It keeps their state in memory (loaded from PostgreSQL on first use, written
through on change), runs ``policy.decide`` for each request, hands the sends to
the ChannelShards in one batch per channel, and records every outcome before it
answers — so when ``handle`` returns, the batch is durable and may be acked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Mapping

import msgspec

from actors import prefs_store, user_store
from actors.prefs_store import Change
from actors.user_cache import UserCache
from actors.user_links import tracker
from actors.user_prefs import PrefsMixin
from actors.user_release import ReleaseMixin, fallback_check, held
from actors.user_templates import TemplatesMixin
from engine import db
from engine.config import Config, decode as decode_config
from policy import wire
from policy.decide import decide
from policy.rules import Policy
from policy.types import (BroadcastRequest, Content, DeliveryTask, Message, Outcome, UserProfile, UserState,
                          recipient_id)
from policy.validate import rule_errors

log = logging.getLogger(__name__)

BROADCAST_CHUNK = 5000  # users decided, sent and recorded together
BROADCAST_INFLIGHT = 4  # chunks between decide and record at once
SEND_BATCH = 1000  # tasks per ChannelShard call


def suppressed(nid: str, user_id: str, r: Message, channel: str, status: str, reason: str, now: float,
               parent_id: str | None = None) -> Outcome:
    return Outcome(nid, user_id, channel, r.category, status, reason, r.accepted_at or now, now,
                   priority=r.priority, parent_id=parent_id)


def task_for(nid: str, user_id: str, r: Message, channel: str, state: UserState | None,
             content: Content) -> DeliveryTask:
    address = state.addresses.get(channel, "") if state is not None else ""
    locale = state.locale if state is not None else "en"
    return DeliveryTask(nid, user_id, channel, r.category, address,
                        content, r.priority, r.accepted_at or 0.0, r.metadata, locale)


class UserShard(PrefsMixin, ReleaseMixin, TemplatesMixin):
    def __init__(self, index: int, cfg: bytes, database_url: str, channel_shards: dict, recorder):
        self.index = index
        self.cfg: Config = decode_config(cfg)
        self.url = database_url
        self.channel_shards = channel_shards
        self.recorder = recorder
        self.available = frozenset(channel_shards) & self.cfg.enabled_channels()
        self.template_cache: dict[str, tuple] = {}  # template id -> its chain (child first)
        self.template_generation = 0  # counts template saves
        self.users = UserCache(self.template_cache)
        self.message_templates: dict = {}  # (template id, version) -> channel -> locale -> Compiled
        self.policy = Policy(self.cfg.preferences)
        self.links = tracker(self.cfg)  # None: no pixel or click redirect, nothing done per task
        self.clock = time.time  # what decide() is told the time is; tests set their own
        self.recent: dict[str, None] = {}  # committed ids, insertion-ordered: oldest first
        self.inflight: dict[str, asyncio.Future] = {}  # ids being handled now -> done when committed
        self.running: dict[str, asyncio.Task] = {}  # broadcasts being handled now
        self.pool = None
        self.rr = 0
        self.stats = {"decided": 0, "duplicates": 0, "outcomes": 0}
        self._start_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()

    async def _ready(self) -> None:
        if self.pool is None:
            async with self._start_lock:
                if self.pool is None:
                    self.pool = await db.create_pool(self.url, self.cfg.database.schema,
                                                     min_size=1, max_size=4)

    # -- notifications ---------------------------------------------------------

    async def handle(self, payload: bytes) -> dict:
        """Decide, deliver and record a batch (MessagePack list[Inbound]); returns
        once every item is committed — including copies of items another batch is
        handling right now (it waits for that batch, and fails if that one fails)."""
        await self._ready()
        items = wire.decode(payload, list[wire.Inbound])
        fresh, waits = self._claim(items)
        done = asyncio.get_running_loop().create_future()
        for inb in fresh:
            self.inflight[inb.id] = done
        try:
            outcomes, error = await self._process(fresh)
            await self.recorder.record.remote(wire.encode(outcomes))
            if error is not None:
                raise error
        except BaseException as e:
            done.set_exception(e)
            done.exception()  # retrieved here: copies that wait on it re-raise it themselves
            raise
        else:
            done.set_result(None)
            self._remember(fresh)
        finally:
            for inb in fresh:
                self.inflight.pop(inb.id, None)
        if waits:
            await asyncio.gather(*waits)
        dups = len(items) - len(fresh)
        self.stats["decided"] += len(fresh)
        self.stats["duplicates"] += dups
        self.stats["outcomes"] += len(outcomes)
        return {"decided": len(fresh), "duplicates": dups, "outcomes": len(outcomes)}

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

    def _remember(self, committed: list[wire.Inbound]) -> None:
        for inb in committed:
            self.recent[inb.id] = None
        while len(self.recent) > self.cfg.engine.recent_ids:
            del self.recent[next(iter(self.recent))]

    async def _process(self, items: list[wire.Inbound]) -> tuple[list[Outcome], BaseException | None]:
        async with self.pool.acquire() as conn:
            done = await user_store.recorded(conn, [i.id for i in items])
            await self._load_missing(conn, [i.request.user_id for i in items])
        return await self._decide_and_send(
            [(inb.id, inb.request.user_id, inb.request) for inb in items], done, self.users)

    async def _decide_and_send(self, items: list[tuple[str, str, Message]], done: set[tuple[str, str]],
                               states: Mapping[str, UserState], parent_id: str | None = None,
                               digest: bool = True,
                               ) -> tuple[list[Outcome], BaseException | None]:
        """Decide each (notification id, user, request), deliver the sends in one
        batch per channel, hold the deferred and digest ones (committed here).
        A request none of whose channels was sent or held tries its ``fallback``
        channels, one at a time, in order. Returns every outcome there is, and the
        first error of a channel that failed: the caller records what there is,
        then raises, so a redelivery does not send the channels that succeeded
        again. ``digest=False``: nothing is collected into a digest (a released or
        digest notification)."""
        refs = {(r.template.id, r.template.version) for _, _, r in items if r.template is not None}
        if refs:
            await self._load_templates(refs)
        outcomes, kept, error = await self._round(items, done, states, parent_id, digest)
        # recorded channels mean the notification was handled before, fallbacks included
        handled = kept | {nid for nid, _ in done}
        sent = {o.notification_id for o in outcomes if o.status == "sent"}
        checks = [fallback_check(nid, uid, req, self.clock()) for nid, uid, req in items
                  if req.fallback and req.fallback_after_s and nid in sent and nid not in {n for n, _ in done}]
        if checks and error is None:
            try:
                await self._hold(checks)
            except Exception as e:  # noqa: BLE001 - recorded with the rest, then raised: redelivered
                error = e
        pending = [(nid, uid, req, 0) for nid, uid, req in items if req.fallback and nid not in handled]
        while pending and error is None:
            attempt, nxt = [], []
            for nid, uid, req, at in pending:
                while at < len(req.fallback) and req.fallback[at] in req.channels:
                    at += 1
                if at < len(req.fallback):
                    attempt.append((nid, uid, msgspec.structs.replace(req, channels=[req.fallback[at]])))
                    nxt.append((nid, uid, req, at + 1))
            if not attempt:
                break
            more, kept, error = await self._round(attempt, done, states, parent_id, digest)
            outcomes += more
            pending = [p for p in nxt if p[0] not in kept]
        return outcomes, error

    async def _round(self, items, done, states, parent_id, digest) -> tuple[list[Outcome], set[str], BaseException | None]:
        """One decide-and-deliver pass over ``items``' channels: the outcomes, the
        ids with a channel sent or held, and the first error."""
        now = self.clock()
        outcomes: list[Outcome] = []
        sends: dict[str, list[DeliveryTask]] = defaultdict(list)
        holds = []
        for nid, user_id, req in items:
            state = states.get(user_id)
            for d in decide(req, state, self.available, self.policy, now, digest):
                if (nid, d.channel) in done:
                    continue
                if d.action == "defer" or d.action == "digest":
                    holds.append(held(nid, user_id, req, d, parent_id))
                    continue
                if d.action != "send":
                    outcomes.append(suppressed(nid, user_id, req, d.channel, "suppressed", d.reason, now, parent_id))
                    continue
                content, why, detail = self._content(req, d.channel, state)
                if content is None:
                    o = suppressed(nid, user_id, req, d.channel, "rejected", why, now, parent_id)
                    o.detail = detail
                    outcomes.append(o)
                else:
                    task = task_for(nid, user_id, req, d.channel, state, content)
                    if self.links is not None and content.html and d.channel in self.links.channels:
                        task = self.links.apply(task)
                    sends[d.channel].append(task)
        error = None
        results = await asyncio.gather(self._hold(holds), *(self._send(ch, t) for ch, t in sends.items()),
                                       return_exceptions=True)
        if isinstance(results[0], BaseException):
            error = results[0]
        for delivered in results[1:]:
            if isinstance(delivered, BaseException):
                error = error or delivered
                continue
            if parent_id is not None:
                for o in delivered:
                    o.parent_id = parent_id
            outcomes.extend(delivered)
        kept = {h.notification_id for h in holds} | {o.notification_id for o in outcomes if o.status == "sent"}
        gone_keys = {(o.notification_id, o.channel) for o in outcomes if o.reason == "address_gone"}
        if gone_keys:
            await self._forget_addresses([(t.user_id, t.channel, t.address) for ts in sends.values() for t in ts
                                          if (t.notification_id, t.channel) in gone_keys])
        return outcomes, kept, error

    def _content(self, req: Message, channel: str, state: UserState | None) -> tuple[Content | None, str, str | None]:
        """The channel's content: given in the request, else rendered from its
        template in the user's locale; else None with the reason and detail."""
        content = req.content_for(channel)
        if content is not None:
            return content, "ok", None
        if req.template is None:
            return None, "content.missing", None
        return self._render(req.template, channel, state.locale if state is not None else "en")

    async def _send(self, channel: str, tasks: list[DeliveryTask]) -> list[Outcome]:
        """One call per ChannelShard of this channel, the tasks dealt round robin."""
        shards = self.channel_shards[channel]
        k = len(shards)
        self.rr += 1
        parts = [tasks[i:i + SEND_BATCH] for i in range(0, len(tasks), SEND_BATCH)] if len(tasks) > SEND_BATCH \
            else [tasks[i::k] for i in range(k)]
        replies = await asyncio.gather(*(
            shards[(self.rr + i) % k].deliver.remote(wire.encode(part)) for i, part in enumerate(parts) if part
        ))
        return [o for reply in replies for o in wire.decode(reply, list[Outcome])]

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
        async with self.pool.acquire() as conn:
            user_ids = await user_store.shard_users(conn, self.index, self.cfg.engine.user_shards)
        gate = asyncio.Semaphore(BROADCAST_INFLIGHT)
        counts = {"users": len(user_ids), "outcomes": 0}

        async def chunk(ids: list[str]) -> None:
            async with gate:
                outcomes, error = await self._broadcast_chunk(job, ids)
                await self.recorder.record.remote(wire.encode(outcomes))
                counts["outcomes"] += len(outcomes)
                if error is not None:
                    raise error

        await asyncio.gather(*(chunk(user_ids[i:i + BROADCAST_CHUNK])
                               for i in range(0, len(user_ids), BROADCAST_CHUNK)))
        return counts

    async def _broadcast_chunk(self, job: wire.Broadcast, user_ids: list[str]):
        """One chunk of a broadcast. Users are looked up in the cache but those
        loaded here are not kept: a broadcast would otherwise pull the whole
        audience into memory for good."""
        req: BroadcastRequest = job.request
        items = [(recipient_id(job.id, uid), uid, req) for uid in user_ids]
        states = {uid: self.users[uid] for uid in user_ids if uid in self.users}
        async with self.pool.acquire() as conn:
            missing = [uid for uid in user_ids if uid not in states]
            if missing:
                loaded = await user_store.load_states(conn, missing)
                await self._attach_templates(conn, loaded.values())
                states.update(loaded)
            done = await user_store.recorded(conn, [nid for nid, _, _ in items])
        return await self._decide_and_send(items, done, states, parent_id=job.id)

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
        async with self._write_lock, self.pool.acquire() as conn:
            await self._load_missing(conn, ids)
            errors = []
            for p in profiles:
                if p.opt_outs is not None:
                    state = self.users.get(p.user_id)
                    chain = state.templates if state else ()
                    consent = state.consent if state else frozenset()
                    errors += [(p.user_id, "opt_outs", why) for _, why in rule_errors(
                        user_store.opt_out_rows(p.opt_outs), chain, self.policy, time.time(), "opt_outs", consent)]
            if errors:
                return errors
            async with conn.transaction():
                await user_store.save_profiles(conn, profiles, self.users, actor)
                versions = {r[0]: r[1] for r in await conn.fetch(
                    "SELECT user_id, prefs_version FROM users WHERE user_id = ANY($1::text[]) FOR UPDATE", ids)}
                for p in profiles:
                    state = self.users.get(p.user_id)
                    moved = state is not None and state.timezone != p.timezone  # quiet hours move with it
                    if p.opt_outs is None and not moved:
                        continue
                    rows = user_store.opt_out_rows(p.opt_outs) if p.opt_outs is not None else list(state.prefs)
                    change = Change(user_id=p.user_id, version=0, type="profile", source="profile",
                                    preferences=rows,
                                    consent={c: "granted" for c in (state.consent if state else ())},
                                    timezone=p.timezone, template=state.template if state else None, actor=actor)
                    await prefs_store.write_change(conn, change, versions[p.user_id], None, {})
            fresh = await user_store.load_states(conn, ids)
            await self._attach_templates(conn, fresh.values())
        self.users.update(fresh)
        return []

    async def get_user(self, user_id: str) -> bytes | None:
        await self._ready()
        if user_id not in self.users:
            async with self.pool.acquire() as conn:
                await self._load_missing(conn, [user_id])
        state = self.users.get(user_id)
        return None if state is None else wire.encode(state)

    async def reload(self, user_ids: list[str]) -> int:
        """Re-read users whose rows changed elsewhere (a suppression, a bulk
        import). Under the write lock: a write in between would otherwise be
        overwritten by what this read before it."""
        await self._ready()
        async with self._write_lock, self.pool.acquire() as conn:
            return await self._reload(conn, user_ids)

    async def _reload(self, conn, user_ids: list[str]) -> int:
        fresh = await user_store.load_states(conn, user_ids)
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
        async with self._write_lock, self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.executemany(
                    "DELETE FROM user_addresses WHERE user_id = $1 AND channel = $2 AND address = $3", gone)
                await user_store.refresh_states(conn, list({u for u, _, _ in gone}))
            await self._reload(conn, list({u for u, _, _ in gone}))
        self.stats["addresses_removed"] = self.stats.get("addresses_removed", 0) + len(gone)

    async def preload(self) -> int:
        """Load every user this shard owns (a warm start); returns how many."""
        await self._ready()
        async with self.pool.acquire() as conn:
            n = await user_store.scan_shard(conn, self.index, self.cfg.engine.user_shards, self.users)
            for tid in self.users.template_ids() - set(self.template_cache):
                await self._chain(conn, tid)
        return n

    async def _load_missing(self, conn, user_ids) -> None:
        """Cache users not cached yet. Never overwrites: a write that committed
        while this read ran has already put the newer state in place."""
        missing = {uid for uid in user_ids if uid not in self.users}
        if missing:
            loaded = await user_store.load_states(conn, missing)
            await self._attach_templates(conn, loaded.values())
            for uid, state in loaded.items():
                self.users.setdefault(uid, state)

    async def info(self) -> dict:
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        return {"index": self.index, "users": len(self.users), "recent_ids": len(self.recent), "loop": loop,
                **self.stats}
