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

from actors import user_store
from engine import db
from engine.config import Config, decode as decode_config
from policy import wire
from policy.decide import decide
from policy.types import BroadcastRequest, DeliveryTask, Message, Outcome, UserProfile, UserState, recipient_id

log = logging.getLogger(__name__)

BROADCAST_CHUNK = 5000  # users decided, sent and recorded together
BROADCAST_INFLIGHT = 4  # chunks between decide and record at once
SEND_BATCH = 1000  # tasks per ChannelShard call


def suppressed(nid: str, user_id: str, r: Message, channel: str, status: str, reason: str, now: float,
               parent_id: str | None = None) -> Outcome:
    return Outcome(nid, user_id, channel, r.category, status, reason, r.accepted_at or now, now,
                   priority=r.priority, parent_id=parent_id)


def task_for(nid: str, user_id: str, r: Message, channel: str, state: UserState | None) -> DeliveryTask | None:
    content = r.content_for(channel)
    if content is None:
        return None
    address = state.addresses.get(channel, "") if state is not None else ""
    locale = state.locale if state is not None else "en"
    return DeliveryTask(nid, user_id, channel, r.category, address,
                        content, r.priority, r.accepted_at or 0.0, r.metadata, locale)


class UserShard:
    def __init__(self, index: int, cfg: bytes, database_url: str, channel_shards: dict, recorder):
        self.index = index
        self.cfg: Config = decode_config(cfg)
        self.url = database_url
        self.channel_shards = channel_shards
        self.recorder = recorder
        self.available = frozenset(channel_shards) & self.cfg.enabled_channels()
        self.users: dict[str, UserState] = {}
        self.recent: dict[str, None] = {}  # insertion-ordered: oldest first
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
        """Decide, deliver and record a batch (MessagePack list[Inbound])."""
        await self._ready()
        items = wire.decode(payload, list[wire.Inbound])
        fresh = self._claim(items)
        try:
            outcomes = await self._process(fresh)
            await self.recorder.record.remote(wire.encode(outcomes))
        except BaseException:
            for inb in fresh:  # not done: a redelivery must be able to claim them again
                self.recent.pop(inb.id, None)
            raise
        self.stats["decided"] += len(fresh)
        self.stats["duplicates"] += len(items) - len(fresh)
        self.stats["outcomes"] += len(outcomes)
        return {"decided": len(fresh), "duplicates": len(items) - len(fresh), "outcomes": len(outcomes)}

    def _claim(self, items: list[wire.Inbound]) -> list[wire.Inbound]:
        """Items not seen recently (nor twice in this batch), now marked as seen."""
        fresh = []
        for inb in items:
            if inb.id not in self.recent:
                self.recent[inb.id] = None
                fresh.append(inb)
        while len(self.recent) > self.cfg.engine.recent_ids:
            del self.recent[next(iter(self.recent))]
        return fresh

    async def _process(self, items: list[wire.Inbound]) -> list[Outcome]:
        async with self.pool.acquire() as conn:
            done = await user_store.recorded(conn, [i.id for i in items])
            missing = {i.request.user_id for i in items} - self.users.keys()
            if missing:
                self.users.update(await user_store.load_states(conn, missing))
        return await self._decide_and_send(
            [(inb.id, inb.request.user_id, inb.request) for inb in items], done)

    async def _decide_and_send(self, items: list[tuple[str, str, Message]], done: set[tuple[str, str]],
                               parent_id: str | None = None) -> list[Outcome]:
        """Decide each (notification id, user, request), deliver the sends in one
        batch per channel, and return every outcome."""
        now = time.time()
        outcomes: list[Outcome] = []
        sends: dict[str, list[DeliveryTask]] = defaultdict(list)
        for nid, user_id, req in items:
            state = self.users.get(user_id)
            for d in decide(req, state, self.available):
                if (nid, d.channel) in done:
                    continue
                if d.action != "send":
                    outcomes.append(suppressed(nid, user_id, req, d.channel, "suppressed", d.reason, now, parent_id))
                    continue
                task = task_for(nid, user_id, req, d.channel, state)
                if task is None:
                    outcomes.append(suppressed(nid, user_id, req, d.channel, "rejected", "content.missing", now,
                                               parent_id))
                else:
                    sends[d.channel].append(task)
        for delivered in await asyncio.gather(*(self._send(ch, t) for ch, t in sends.items())):
            if parent_id is not None:
                for o in delivered:
                    o.parent_id = parent_id
            outcomes.extend(delivered)
        return outcomes

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
        Recipients already recorded (a redelivered broadcast) are skipped."""
        await self._ready()
        job = wire.decode(payload, wire.Broadcast)
        async with self.pool.acquire() as conn:
            user_ids = await user_store.shard_users(conn, self.index, self.cfg.engine.user_shards)
        gate = asyncio.Semaphore(BROADCAST_INFLIGHT)
        counts = {"users": len(user_ids), "outcomes": 0}

        async def chunk(ids: list[str]) -> None:
            async with gate:
                outcomes = await self._broadcast_chunk(job, ids)
                await self.recorder.record.remote(wire.encode(outcomes))
                counts["outcomes"] += len(outcomes)

        await asyncio.gather(*(chunk(user_ids[i:i + BROADCAST_CHUNK])
                               for i in range(0, len(user_ids), BROADCAST_CHUNK)))
        return counts

    async def _broadcast_chunk(self, job: wire.Broadcast, user_ids: list[str]) -> list[Outcome]:
        req: BroadcastRequest = job.request
        items = [(recipient_id(job.id, uid), uid, req) for uid in user_ids]
        async with self.pool.acquire() as conn:
            await self._load_missing(conn, user_ids)
            done = await user_store.recorded(conn, [nid for nid, _, _ in items])
        return await self._decide_and_send(items, done, parent_id=job.id)

    # -- users -----------------------------------------------------------------

    async def upsert_users(self, payload: bytes, actor: str | None = None) -> int:
        """Write profiles to PostgreSQL (committed first), then to memory."""
        await self._ready()
        profiles = wire.decode(payload, list[UserProfile])
        async with self._write_lock, self.pool.acquire() as conn:
            await self._load_missing(conn, [p.user_id for p in profiles])
            await user_store.save_profiles(conn, profiles, self.users, actor)
            fresh = await user_store.load_states(conn, [p.user_id for p in profiles])
        self.users.update(fresh)
        return len(profiles)

    async def get_user(self, user_id: str) -> bytes | None:
        await self._ready()
        if user_id not in self.users:
            async with self.pool.acquire() as conn:
                await self._load_missing(conn, [user_id])
        state = self.users.get(user_id)
        return None if state is None else wire.encode(state)

    async def reload(self, user_ids: list[str]) -> int:
        """Drop and reload users whose rows changed elsewhere (e.g. a suppression)."""
        await self._ready()
        for uid in user_ids:
            self.users.pop(uid, None)
        async with self.pool.acquire() as conn:
            await self._load_missing(conn, user_ids)
        return len(user_ids)

    async def _load_missing(self, conn, user_ids: list[str]) -> None:
        missing = set(user_ids) - self.users.keys()
        if missing:
            self.users.update(await user_store.load_states(conn, missing))

    async def info(self) -> dict:
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        return {"index": self.index, "users": len(self.users), "recent_ids": len(self.recent), "loop": loop,
                **self.stats}
