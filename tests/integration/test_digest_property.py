"""Digests exactly once, property-tested against real PostgreSQL.

Hypothesis generates interleavings of arrivals (several in the same second, on
and around period boundaries), redeliveries of the same notification, shard
restarts (memory lost), Scheduler rounds that succeed, fail at the provider, or
crash after the provider accepted but before the commit, arrivals racing a seal,
and arrivals decided before a boundary but written after their bucket went out. The code under test is the real one: UserShard.handle / release and the
SQL in stores/schedules.py; only the provider and the Recorder are fakes.

After every run, with the clock moved on and all due work drained:
- every item is in exactly one digest (no loss, no item in two digests);
- a digest id always carries the same items (a retry never merges or regroups);
- a digest is sent more than once only after a crash between the provider's
  accept and the commit (the at-least-once window: the resend is identical and
  carries the same notification id, which receivers can dedupe on);
- the grouping is exact: one user per digest, every item decided before the
  digest's period ended, never moved to an earlier period.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from actors.user_shard import UserShard
from engine import migrations, settings as engine_settings
from infra import config
from policy import wire
from policy.types import Content, DeliveryTask, NotificationRequest, Outcome
from policy.windows import period_bounds
from stores import schedules as schedule_store
from tests import sealing

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Europe/Berlin")
USERS = ("da", "db")
START = datetime(2026, 3, 29, 0, 30, tzinfo=TZ).timestamp()  # the night Berlin springs forward


class Remote:
    """Stands in for an actor method: ``.remote(...)`` returns an awaitable."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


class World:
    def __init__(self, url: str, schema: str):
        self.url, self.schema = url, schema
        self.clock = START
        self.sent: list[tuple[str, str, tuple[str, ...]]] = []  # (digest id, user, item ids)
        self.plain: list[tuple[str, str]] = []  # (notification id, channel) of other sends
        self.decided: dict[str, tuple[str, float]] = {}  # item id -> (user, decision time)
        self.crashed_after_send: set[str] = set()
        self.fail_send = False
        self.crash_after_send = False
        self.channel = type("Channel", (), {"deliver": Remote(self._deliver)})()
        self.recorder = type("Recorder", (), {"record": Remote(self._record)})()
        self.cfg = config.encode(engine_settings.load("development", env={}, overrides={
            "database": {"url": url, "schema": schema}, "engine": {"user_shards": 1, "preload_users": False},
            "privacy": {"master_keys": sealing.MASTER_KEYS}}))
        self.shard = self.new_shard()

    def new_shard(self) -> UserShard:
        shard = UserShard(0, self.cfg, self.url, {"email": [self.channel], "webhook": [self.channel]}, self.recorder)
        shard.clock = lambda: self.clock
        return shard

    async def _deliver(self, payload: bytes) -> bytes:
        if self.fail_send:
            raise RuntimeError("provider unavailable")
        out = []
        for t in wire.decode(payload, list[DeliveryTask]):
            if "digest" not in t.content.data:
                self.plain.append((t.notification_id, t.channel))
                out.append(Outcome(t.notification_id, t.user_id, t.channel, t.category, "sent", "ok", 0.0,
                                   self.clock, provider="fake"))
                continue
            items = tuple(i["id"] for i in t.content.data["digest"]["items"])
            self.sent.append((t.notification_id, t.user_id, items))
            if self.crash_after_send:
                self.crashed_after_send.add(t.notification_id)
            out.append(Outcome(t.notification_id, t.user_id, t.channel, t.category, "sent", "ok", 0.0, self.clock,
                               provider="fake"))
        return wire.encode(out)

    async def _record(self, payload: bytes) -> int:
        return len(wire.decode(payload, list[Outcome]))  # held items' rows are written by hold() itself

    async def arrive(self, user: str, nid: str | None = None, at: float | None = None) -> None:
        nid = nid or str(uuid.uuid4())
        when = self.clock if at is None else at
        self.decided.setdefault(nid, (user, when))
        req = NotificationRequest(id=uuid.UUID(nid), user_id=user, category="jobs", channels=["email"],
                                  content=Content(subject=f"item {nid[:8]}", text="t"))
        saved, self.shard.clock = self.shard.clock, (lambda: when)
        try:
            await self.shard.handle(wire.encode([wire.Inbound(nid, req)]))
        finally:
            self.shard.clock = saved

    async def flush(self, mode: str = "ok", at: float | None = None) -> None:
        conn = await asyncpg.connect(self.url, server_settings={"search_path": self.schema})
        try:
            dues = await schedule_store.claim_due(conn, 1000, 0.0, self.clock if at is None else at)
        finally:
            await conn.close()
        if not dues:
            return
        self.fail_send = mode == "fail_send"
        self.crash_after_send = mode == "crash_after_send"
        real_finish = schedule_store.finish

        async def crash(*args, **kw):
            raise RuntimeError("crashed before the commit")

        if mode == "crash_after_send":
            schedule_store.finish = crash
        try:
            await self.shard.release(wire.encode(dues))
        except Exception:
            if mode == "ok":
                raise
        finally:
            schedule_store.finish = real_finish
            self.fail_send = self.crash_after_send = False
        if mode != "ok":
            self.clock += 1  # the lease (0 s here) has run out by the next round


OPS = st.one_of(
    st.tuples(st.just("arrive"), st.sampled_from(USERS), st.sampled_from([0, 0, 0, 1, 59, 900, 1799, 3600])),
    st.tuples(st.just("redeliver"), st.integers(0, 1000)),
    st.tuples(st.just("restart")),
    st.tuples(st.just("flush"), st.sampled_from(["ok", "ok", "fail_send", "crash_after_send"])),
    st.tuples(st.just("race"), st.sampled_from(USERS)),
    st.tuples(st.just("late"), st.sampled_from(USERS)),
)


async def setup_schema(url: str, schema: str) -> None:
    await migrations.migrate_url(url, schema)
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        ring = await sealing.ring(conn)
        for u in USERS:
            await conn.execute("INSERT INTO users (user_id, timezone) VALUES ($1, 'Europe/Berlin')", u)
            await sealing.add_address(conn, ring, u, "email", f"{u}@example.test")
            await conn.execute("INSERT INTO user_preferences (user_id, preference_type, channel, category, value) "
                               "VALUES ($1, 'global', '*', '*', '{\"frequency\": \"hourly\"}')", u)
    finally:
        await conn.close()


async def reset(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        await conn.execute("TRUNCATE scheduled_notifications, digest_buckets, delivery_tracking")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def schema(database_url):
    name = f"digest_{uuid.uuid4().hex[:8]}"
    asyncio.run(setup_schema(database_url, name))
    yield name
    from tests.integration.helpers import drop_schema
    asyncio.run(drop_schema(database_url, name))


async def scenario(url: str, schema_name: str, ops) -> World:
    await reset(url, schema_name)
    w = World(url, schema_name)
    for op in ops:
        kind = op[0]
        if kind == "arrive":
            w.clock += op[2]
            await w.arrive(op[1])
        elif kind == "redeliver" and w.decided:
            nid = list(w.decided)[op[1] % len(w.decided)]
            await w.arrive(w.decided[nid][0], nid)
        elif kind == "restart":
            w.shard = w.new_shard()
        elif kind == "flush":
            await w.flush(op[1])
        elif kind == "race":
            _, end = period_bounds("hourly", TZ, w.clock)
            # decided a second before the boundary, written while the bucket is being sealed
            await asyncio.gather(w.arrive(op[1], at=end - 1), w.flush("ok", at=end))
            w.clock = end
        elif kind == "late":
            _, end = period_bounds("hourly", TZ, w.clock)
            # decided a second before the boundary, written only after the bucket went out
            await w.arrive(op[1], at=end - 2)
            await w.flush("ok", at=end)
            await w.arrive(op[1], at=end - 1)
            w.clock = end
    for _ in range(6):  # the clock moves on; every due bucket goes out
        w.clock += 2 * 3600
        await w.flush("ok")
    if w.shard.pool is not None:
        await w.shard.pool.close()
    return w


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(OPS, min_size=1, max_size=25))
def test_every_item_in_exactly_one_digest(database_url, schema, ops):
    w = asyncio.run(scenario(database_url, schema, ops))
    by_digest: dict[str, set[tuple[str, ...]]] = {}
    sends: dict[str, int] = {}
    for did, _user, items in w.sent:
        by_digest.setdefault(did, set()).add(items)
        sends[did] = sends.get(did, 0) + 1
    # a digest id always carries the same items
    assert all(len(v) == 1 for v in by_digest.values()), by_digest
    # resent only after a crash between the provider's accept and the commit
    assert all(n == 1 or did in w.crashed_after_send for did, n in sends.items())
    holder: dict[str, str] = {}
    for did, variants in by_digest.items():
        (items,) = variants
        for item in items:
            assert holder.setdefault(item, did) == did, f"{item} in two digests"
    assert set(holder) == set(w.decided), "items lost"
    for _did, user, items in w.sent:
        assert {w.decided[i][0] for i in items} == {user}
    asyncio.run(check_buckets(database_url, schema, w))


async def check_buckets(url: str, schema: str, w: World) -> None:
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        buckets = {str(r[0]): r[1].timestamp() for r in await conn.fetch(
            "SELECT digest_id, due_at FROM digest_buckets WHERE status = 'sent'")}
        assert await conn.fetchval("SELECT count(*) FROM digest_buckets WHERE status <> 'sent'") == 0
        assert await conn.fetchval("SELECT count(*) FROM scheduled_notifications WHERE status <> 'done'") == 0
    finally:
        await conn.close()
    for did, _, items in w.sent:
        due = buckets[did]
        for i in items:
            decided = w.decided[i][1]
            assert decided < due  # decided within (or before) the digest's period
            assert period_bounds("hourly", TZ, decided)[1] <= due  # never moved to an earlier period


def test_a_deferred_notification_is_sent_once_per_channel(database_url, schema):
    """Both channels of one notification deferred by the same quiet hours, released
    in one Scheduler round: each channel is sent once."""
    async def run() -> World:
        await reset(database_url, schema)
        w = World(database_url, schema)
        conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
        try:
            await conn.execute("DELETE FROM user_preferences WHERE user_id = 'da'")
            await conn.execute("INSERT INTO user_preferences (user_id, preference_type, channel, category, value) "
                               "VALUES ('da', 'global', '*', '*', '{\"quiet_hours\": [{\"start\": \"22:00\", "
                               "\"end\": \"07:00\"}]}')")
            await conn.execute("UPDATE users SET state = NULL WHERE user_id = 'da'")
        finally:
            await conn.close()
        w.clock = datetime(2026, 11, 20, 23, 0, tzinfo=TZ).timestamp()
        nid = str(uuid.uuid4())
        req = NotificationRequest(id=uuid.UUID(nid), user_id="da", category="jobs", channels=["email", "webhook"],
                                  content=Content(subject="s", text="t"))
        await w.shard.handle(wire.encode([wire.Inbound(nid, req)]))
        assert w.plain == []
        w.clock = datetime(2026, 11, 21, 7, 0, tzinfo=TZ).timestamp()
        await w.flush("ok")
        await w.flush("ok")
        await w.shard.pool.close()
        return w

    try:
        w = asyncio.run(run())
    finally:
        asyncio.run(setup_prefs(database_url, schema))
    assert sorted(w.plain) == sorted([(w.plain[0][0], "email"), (w.plain[0][0], "webhook")])


async def setup_prefs(url: str, schema: str) -> None:
    """Back to hourly digests for 'da' (the property test's setup)."""
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        await conn.execute("DELETE FROM user_preferences WHERE user_id = 'da'")
        await conn.execute("INSERT INTO user_preferences (user_id, preference_type, channel, category, value) "
                           "VALUES ('da', 'global', '*', '*', '{\"frequency\": \"hourly\"}')")
        await conn.execute("UPDATE users SET state = NULL WHERE user_id = 'da'")
    finally:
        await conn.close()
