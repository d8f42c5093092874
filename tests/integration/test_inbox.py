"""In-app channel: the provider (inbox rows + NATS events) and the inbox routes
(HTTP + WebSocket), against a real PostgreSQL (a throwaway schema, dropped at
the end) and a real NATS (a unique subject prefix per run).

Servers: the session's (tests/conftest.py): TIDINGS_TEST_DATABASE_URL /
TIDINGS_TEST_NATS_URL when set, else embedded ones.
"""

from __future__ import annotations

import asyncio
import json
import random
import types
import uuid

import asyncpg
import nats
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from engine import engaged, migrations
from engine.http import inbox as http_inbox
from engine.http.common import ENGINE
from infra import db
from policy.types import Content, DeliveryTask
from providers.errors import ConfigurationError, InvalidMessage, NetworkError
from providers.inapp import InAppProvider
from providers.inapp.messages import inbox_subject

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def env(database_url, nats_url):
    DATABASE_URL, NATS_URL = database_url, nats_url  # the session's servers (embedded unless TIDINGS_TEST_*)
    schema = "test_inapp_" + uuid.uuid4().hex[:12]
    prefix = "tinbox" + uuid.uuid4().hex[:10]
    await migrations.migrate_url(DATABASE_URL, schema)
    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=1)
    pool = await db.create_pool(DATABASE_URL, schema)
    settings = {"database_url": DATABASE_URL, "schema": schema, "nats_url": NATS_URL, "prefix": prefix}
    # Two providers: two writers (as two ChannelShards would be), each with its own connections.
    providers = [InAppProvider("inapp-a", settings), InAppProvider("inapp-b", {**settings, "pool_size": 3})]
    for p in providers:
        await p.start()
    engine = types.SimpleNamespace(
        pool=pool, nc=nc, feed=engaged.Feed(list),  # no UserShards here: events are dropped
        cfg=types.SimpleNamespace(nats=types.SimpleNamespace(prefix=prefix),
                                  database=types.SimpleNamespace(schema=schema),
                                  http=types.SimpleNamespace(max_body_bytes=1 << 20, allowed_origins=[],
                                                            ws_per_user=5, ws_total=100),
                                  engagement=types.SimpleNamespace(base_url="", secret="")))
    app = web.Application()
    app[ENGINE] = engine
    http_inbox.add_routes(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield types.SimpleNamespace(providers=providers, provider=providers[0], pool=pool, nc=nc, engine=engine,
                                    client=client, prefix=prefix, schema=schema, database_url=DATABASE_URL,
                                    nats_url=NATS_URL)
    finally:
        await client.close()
        for p in providers:
            await p.close()
        await nc.close()
        await pool.close()
        conn = await asyncpg.connect(DATABASE_URL)
        try:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await conn.close()


def task(user: str, text: str = "hello", *, nid: str | None = None, subject: str | None = "Hi",
         data: dict | None = None, category: str = "messages") -> DeliveryTask:
    return DeliveryTask(nid or str(uuid.uuid4()), user, "in_app", category, "",
                        Content(subject=subject, text=text, data=data or {}), priority="normal")


def new_user() -> str:
    return "u-" + uuid.uuid4().hex[:12]


async def frame(ws, timeout: float = 5.0) -> dict:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def inbox(env, user: str, **query) -> dict:
    resp = await env.client.get(f"/v1/users/{user}/inbox", params={k: str(v) for k, v in query.items()})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_send_then_get_inbox(env):
    user = new_user()
    receipts = [await env.provider.send(task(user, f"m{i}", data={"i": i, "link": "/jobs/1"})) for i in range(3)]
    seqs = [int(r.message_id) for r in receipts]
    assert seqs == sorted(seqs)

    doc = await inbox(env, user)
    assert [m["seq"] for m in doc["messages"]] == seqs
    assert doc["next"] == seqs[-1] and doc["unread"] == 3 and doc["unseen"] == 3
    first = doc["messages"][0]
    assert first["title"] == "Hi" and first["body"] == "m0" and first["data"] == {"i": 0, "link": "/jobs/1"}
    assert first["category"] == "messages" and first["priority"] == "normal"
    assert first["seen_at"] is None and first["read_at"] is None and first["created_at"] > 0

    page = await inbox(env, user, after=seqs[0], limit=1)
    assert [m["seq"] for m in page["messages"]] == [seqs[1]] and page["next"] == seqs[1]
    empty = await inbox(env, new_user(), after=5)
    assert empty == {"messages": [], "next": 5, "unread": 0, "unseen": 0, "preference_center": None}


async def test_html_only_and_data_only(env):
    user = new_user()
    await env.provider.send(DeliveryTask(str(uuid.uuid4()), user, "in_app", "messages", "",
                                         Content(subject=None, html="<b>x</b>")))
    await env.provider.send(task(user, None, subject=None, data={"badge": 1}))
    msgs = (await inbox(env, user))["messages"]
    assert [(m["title"], m["body"], m["data"]) for m in msgs] == [(None, "<b>x</b>", {}), (None, None, {"badge": 1})]


async def test_redelivered_send_inserts_once(env):
    user = new_user()
    t = task(user)
    first = await env.providers[0].send(t)
    again = await env.providers[1].send(t)
    assert first.message_id == again.message_id
    other = task(user, "second")
    # a batch holding the same notification twice and one already stored
    await env.provider.send_batch([other, other, t])
    n = await env.pool.fetchval("SELECT count(*) FROM inbox_messages WHERE user_id = $1", user)
    assert n == 2


async def test_read_and_seen(env):
    user, stranger = new_user(), new_user()
    seqs = [int((await env.provider.send(task(user, str(i)))).message_id) for i in range(4)]
    theirs = int((await env.provider.send(task(stranger))).message_id)
    c = env.client

    resp = await c.post(f"/v1/users/{user}/inbox/seen", json={"seqs": [seqs[0], theirs]})
    assert await resp.json() == {"seen": 1, "unread": 4, "unseen": 3}
    resp = await c.post(f"/v1/users/{user}/inbox/read", json={"seqs": [seqs[1], seqs[1], theirs]})
    assert await resp.json() == {"read": 1, "unread": 3, "unseen": 2}  # read implies seen
    unread = await inbox(env, user, unread="true")
    assert [m["seq"] for m in unread["messages"]] == [seqs[0], seqs[2], seqs[3]]
    resp = await c.post(f"/v1/users/{user}/inbox/read", json={"all": True})
    assert await resp.json() == {"read": 3, "unread": 0, "unseen": 0}
    msgs = (await inbox(env, user))["messages"]
    assert all(m["read_at"] and m["seen_at"] for m in msgs)
    # the stranger's message was never touched
    assert (await inbox(env, stranger))["unseen"] == 1


async def test_bad_input(env):
    c = env.client
    user = new_user()
    for body, status in [(b"{", 400), (b"", 400), (b"{}", 422), (b'{"seqs": [1], "all": true}', 422),
                         (b'{"seqs": "x"}', 422), (b'{"seqs": [0]}', 422), (b'{"all": true, "x": 1}', 422)]:
        resp = await c.post(f"/v1/users/{user}/inbox/read", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == status, (body, await resp.text())
        assert "error" in await resp.json()
    resp = await c.post(f"/v1/users/{user}/inbox/read", data=b'{"all": true}')  # no JSON content type
    assert resp.status == 415
    resp = await c.get("/v1/users/a%01b/inbox")
    assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "user_id"
    resp = await c.get(f"/v1/users/{'x' * 129}/inbox/ws")
    assert resp.status == 422
    for query in ("after=-1", "after=x", "limit=0", "limit=501", "unread=maybe"):
        resp = await c.get(f"/v1/users/{user}/inbox?{query}")
        assert resp.status == 400, query
    resp = await c.get(f"/v1/users/{user}/inbox/ws?after=abc")
    assert resp.status == 400


async def test_websocket_backlog_then_live_and_ack(env):
    user = "someone@example.com"  # not a plain token: the subject uses "~" + base64url
    assert inbox_subject(env.prefix, user).startswith(f"{env.prefix}.inbox.~")
    before = [int((await env.provider.send(task(user, f"b{i}"))).message_id) for i in range(2)]
    subscriptions = len(env.nc._subs)
    async with env.client.ws_connect(f"/v1/users/{user}/inbox/ws?after=0") as ws:
        assert len(env.nc._subs) == subscriptions + 1
        assert [(await frame(ws))["message"]["seq"] for _ in before] == before
        assert await frame(ws) == {"type": "synced", "next": before[-1]}
        live = int((await env.providers[1].send(task(user, "live"))).message_id)
        f = await frame(ws)
        assert f["type"] == "message" and f["message"]["seq"] == live and f["message"]["body"] == "live"
        await ws.send_json({"ack": before[-1]})
        assert await frame(ws) == {"type": "ack", "seq": before[-1], "seen": 2}
        await ws.send_str("not json")
        assert (await frame(ws))["type"] == "error"
    assert (await inbox(env, user))["unseen"] == 1
    async with asyncio.timeout(2):  # the server side unsubscribed once the socket closed
        while len(env.nc._subs) != subscriptions:
            await asyncio.sleep(0.01)


class SlowPool:
    """The engine's pool, slower to read: sends land while the backlog is read."""

    def __init__(self, pool, delay: float):
        self.pool, self.delay = pool, delay

    async def fetch(self, *args):
        await asyncio.sleep(self.delay)
        return await self.pool.fetch(*args)

    def __getattr__(self, name):
        return getattr(self.pool, name)


async def collect(ws, n: int, timeout: float = 8.0, on_synced=None) -> tuple[list[int], int | None]:
    """The seqs of the next ``n`` message frames, and how many came before ``synced``."""
    seqs: list[int] = []
    synced_at = None
    async with asyncio.timeout(timeout):
        while len(seqs) < n:
            f = await frame(ws, timeout)
            if f["type"] == "message":
                seqs.append(f["message"]["seq"])
            elif f["type"] == "synced":
                synced_at = len(seqs)
                if on_synced is not None:
                    on_synced()
    return seqs, synced_at


async def test_concurrent_sends_reach_the_websocket_exactly_once(env, monkeypatch):
    """300 sends through two providers, 10 at a time, while a WebSocket connects
    (after=0) and reads its backlog in small, slow pages: every seq arrives once,
    in increasing order. Then: disconnect, send more, reconnect with the last
    seq: exactly the missed ones."""
    monkeypatch.setattr(http_inbox, "PAGE", 7)
    monkeypatch.setattr(env.engine, "pool", SlowPool(env.pool, 0.005))
    # One writer publishes late (a slow process): its events overtake and are
    # overtaken by the other's, so events arrive out of seq order.
    rng = random.Random(7)
    slow = env.providers[1]
    publish = slow._publish

    async def late_publish(nc, rows):
        await asyncio.sleep(rng.uniform(0, 0.015))
        await publish(nc, rows)

    monkeypatch.setattr(slow, "_publish", late_publish)
    user = new_user()
    total, done = 300, 0
    connect_now = asyncio.Event()
    sent_tasks: list[DeliveryTask] = []

    async def one(i: int, t: DeliveryTask) -> None:
        await env.providers[i % 2].send(t)

    async def sender() -> None:
        nonlocal done
        i = 0
        while i < total:
            if i % 50 == 40:  # a batch call: one content, one user, 10 notifications
                batch = [task(user, "batch") for _ in range(10)]
                await env.providers[1].send_batch(batch)
                sent_tasks.extend(batch)
            else:
                group = [task(user, f"m{i + k}") for k in range(10)]
                sent_tasks.extend(group)
                # a few redeliveries of earlier notifications ride along (no new row)
                again = sent_tasks[i - 15:i - 13] if i >= 20 else []
                await asyncio.gather(*(one(i + k, t) for k, t in enumerate(group + again)))
            i += 10
            done = i
            if done >= 100:
                connect_now.set()
            await asyncio.sleep(0.02 if connect_now.is_set() else 0.002)

    sending = asyncio.create_task(sender())
    await connect_now.wait()
    at_connect = done
    at_synced = []
    async with env.client.ws_connect(f"/v1/users/{user}/inbox/ws?after=0") as ws:
        seqs, synced_at = await collect(ws, total, on_synced=lambda: at_synced.append(done))
        await sending
    assert len(seqs) == total, f"got {len(seqs)} of {total}"
    assert seqs == sorted(set(seqs)), "not strictly increasing (a duplicate or out of order)"
    stored = [r[0] for r in await env.pool.fetch(
        "SELECT seq FROM inbox_messages WHERE user_id = $1 ORDER BY seq", user)]
    assert seqs == stored
    # sent before the connect, while the backlog was read, and after it
    assert at_connect >= 100 and at_synced and at_connect < at_synced[0] < total, (at_connect, at_synced)
    assert synced_at is not None and at_connect < synced_at < total

    # Disconnected: 25 more; reconnect from the last seq it got.
    last = seqs[-1]
    await asyncio.gather(*(env.providers[k % 2].send(task(user, f"late{k}")) for k in range(25)))
    missed = [r[0] for r in await env.pool.fetch(
        "SELECT seq FROM inbox_messages WHERE user_id = $1 AND seq > $2 ORDER BY seq", user, last)]
    assert len(missed) == 25
    async with env.client.ws_connect(f"/v1/users/{user}/inbox/ws?after={last}") as ws:
        again, synced_at = await collect(ws, 25)
        if synced_at is None:
            assert await frame(ws) == {"type": "synced", "next": missed[-1]}
        assert again == missed
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.3)


async def test_lost_event_is_recovered(env, monkeypatch):
    """NATS is only a hint: an event that never arrives is found in PostgreSQL
    when the next event shows a gap (its ``prev``), or by the idle re-read."""
    monkeypatch.setattr(http_inbox, "RESYNC_S", 0.3)
    user = new_user()
    p = env.provider
    publish = p._publish

    async def lost(nc, rows):
        return None

    async with env.client.ws_connect(f"/v1/users/{user}/inbox/ws") as ws:
        assert await frame(ws) == {"type": "synced", "next": 0}
        monkeypatch.setattr(p, "_publish", lost)
        a = int((await p.send(task(user, "lost"))).message_id)
        monkeypatch.setattr(p, "_publish", publish)
        b = int((await p.send(task(user, "next"))).message_id)
        got = [(await frame(ws))["message"] for _ in range(2)]
        assert [(m["seq"], m["body"]) for m in got] == [(a, "lost"), (b, "next")]

        monkeypatch.setattr(p, "_publish", lost)
        c = int((await p.send(task(user, "quiet"))).message_id)
        monkeypatch.setattr(p, "_publish", publish)
        f = await frame(ws, timeout=3)
        assert f["message"]["seq"] == c

        # too big for one NATS message: the event goes without it, the socket reads it
        monkeypatch.setattr(p._nc, "_max_payload", 300)
        big = int((await p.send(task(user, "x" * 1000))).message_id)
        f = await frame(ws)
        assert f["message"]["seq"] == big and f["message"]["body"] == "x" * 1000


async def test_event_published_on_the_user_subject(env):
    user = new_user()
    got: asyncio.Queue = asyncio.Queue()
    sub = await env.nc.subscribe(inbox_subject(env.prefix, user), cb=got.put)
    await env.nc.flush()
    try:
        first = int((await env.provider.send(task(user, "one"))).message_id)
        second = int((await env.provider.send(task(user, "two"))).message_id)
        events = [json.loads((await asyncio.wait_for(got.get(), 5)).data) for _ in range(2)]
    finally:
        await sub.unsubscribe()
    assert [(e["seq"], e["prev"]) for e in events] == [(first, None), (second, first)]
    assert events[1]["message"]["body"] == "two" and events[1]["user_id"] == user


async def test_refused_values_are_invalid_and_batches_atomic(env):
    user = new_user()
    p = env.provider
    with pytest.raises(InvalidMessage):
        await p.send(task(user, "nul \x00 inside"))
    with pytest.raises(InvalidMessage):
        await p.send(task(user, data={"k": "\u0000"}))
    with pytest.raises(InvalidMessage):
        await p.send(task(user, nid="not-a-uuid"))
    with pytest.raises(InvalidMessage):
        await p.send(task(user, None, subject=None))
    with pytest.raises(InvalidMessage):
        await p.send_batch([task(user) for _ in range(p.max_batch + 1)])
    with pytest.raises(InvalidMessage):
        await p.send_batch([task(user, "fine"), task(user, "bad \x00")])
    assert await env.pool.fetchval("SELECT count(*) FROM inbox_messages WHERE user_id = $1", user) == 0


async def test_unreachable_servers_are_network_errors(env):
    base = {"database_url": env.database_url, "schema": env.schema, "nats_url": env.nats_url, "prefix": env.prefix,
            "connect_timeout_s": 0.5}
    for broken in ({"database_url": "postgresql://postgres@127.0.0.1:1/postgres"},
                   {"nats_url": "nats://127.0.0.1:1"}):
        p = InAppProvider("broken", {**base, **broken})
        await p.start()  # logs, does not raise
        try:
            with pytest.raises(NetworkError) as info:
                await p.send(task(new_user()))
            assert info.value.retryable
        finally:
            await p.close()


def test_settings_are_checked():
    DATABASE_URL, NATS_URL = "postgresql://postgres@127.0.0.1:5432/postgres", "nats://127.0.0.1:4222"  # not dialled
    with pytest.raises(ConfigurationError):
        InAppProvider("x", {"nats_url": NATS_URL})
    with pytest.raises(ConfigurationError):
        InAppProvider("x", {"database_url": DATABASE_URL})
    with pytest.raises(ConfigurationError):
        InAppProvider("x", {"database_url": DATABASE_URL, "nats_url": NATS_URL, "schema": "Bad-Schema"})
    p = InAppProvider("x", {"database_url": DATABASE_URL, "nats_url": NATS_URL, "max_batch": 5000})
    assert p.max_batch == 1000 and p.channel == "in_app"
