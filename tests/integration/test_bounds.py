"""Bounds (issue 12, item 4), each against the real servers: database timeouts,
a user cache smaller than the population, imports streamed in chunks, a slow
export reader cut off, WebSockets limited per user and in all, and a full
work stream pushing back with 503 + Retry-After."""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
import uuid

import aiohttp
import asyncpg
import nats
import orjson
import pytest

from engine import http, migrations
from engine.http import bulk as http_bulk
from engine.runtime import Engine
from infra import db, streams
from infra.config import DatabaseConfig
from policy.types import UserProfile
from tests.integration.helpers import (
    API_KEYS,
    admin_headers,
    drop_schema,
    engine_config,
    listen_backlog,
    needs_ss,
    serving,
    wait_rows,
)

pytestmark = pytest.mark.integration

USERS = 20


# -- statement and lock timeouts -------------------------------------------------


@pytest.fixture
async def scratch(database_url):
    schema = "t_bounds_" + uuid.uuid4().hex[:10]
    conn = await asyncpg.connect(database_url)
    await conn.execute(f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".t (x int); '
                       f'INSERT INTO "{schema}".t VALUES (1)')
    try:
        yield schema
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


async def test_a_lock_wait_fails_after_lock_timeout_instead_of_hanging(database_url, scratch):
    pool = await db.create_pool(database_url, scratch, limits=DatabaseConfig(lock_timeout_s=0.3,
                                                                             statement_timeout_s=20))
    holder = await asyncpg.connect(database_url, server_settings={"search_path": scratch})
    try:
        async with holder.transaction():
            await holder.execute("SELECT x FROM t FOR UPDATE")
            with pytest.raises(asyncpg.exceptions.LockNotAvailableError):
                # bounded here only so that a regression fails instead of hanging the suite
                await asyncio.wait_for(pool.execute("UPDATE t SET x = 2"), 15)
        assert await pool.fetchval("SELECT x FROM t") == 1  # the connection is usable afterwards
    finally:
        await holder.close()
        await pool.close()


async def test_a_long_statement_fails_after_statement_timeout(database_url):
    conn = await db.connect(database_url, DatabaseConfig(statement_timeout_s=0.3, idle_in_transaction_timeout_s=0.5))
    try:
        with pytest.raises(asyncpg.exceptions.QueryCanceledError):
            await asyncio.wait_for(conn.execute("SELECT pg_sleep(10)"), 15)
        assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "500ms"
        tr = conn.transaction()
        await tr.start()
        await asyncio.sleep(1.5)  # left idle in its transaction past the bound: PostgreSQL ends the session
        with pytest.raises((asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
                            asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.InterfaceError)):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()


async def test_migrations_get_the_long_statement_timeout_and_wait_for_another_migrator(database_url):
    limits = DatabaseConfig(statement_timeout_s=1, lock_timeout_s=0.2, long_statement_timeout_s=120)
    conn = await migrations.connect(database_url, limits)
    other = await asyncpg.connect(database_url)
    schema = "t_bounds_mig_" + uuid.uuid4().hex[:8]
    try:
        assert await conn.fetchval("SHOW statement_timeout") == "2min"
        assert await conn.fetchval("SHOW lock_timeout") == "200ms"
        await other.execute("SELECT pg_advisory_lock($1)", db._LOCK_ID)  # another migrator, busy for a while
        applying = asyncio.ensure_future(migrations.migrate(conn, schema))
        await asyncio.sleep(1.0)  # far past lock_timeout: the wait for the migrator lock is not bounded by it
        assert not applying.done()
        await other.execute("SELECT pg_advisory_unlock($1)", db._LOCK_ID)
        assert await asyncio.wait_for(applying, 120)  # every migration applied
    finally:
        await other.close()
        await conn.close()
        await drop_schema(database_url, schema)


# -- one engine with small bounds ---------------------------------------------


@pytest.fixture(scope="module")
async def bounded(nats_url, database_url, redis_url, ray_address, smtp, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        channels=("email",), redis_url=redis_url, overrides={
                            "engine": {"user_shards": 2, "max_cached_users": 3},
                            "database": {"lock_timeout_s": 4},
                            "http": {"ws_per_user": 2, "ws_total": 3, "export_stall_s": 1, "backlog": 777},
                            "ratelimit": {"enabled": False}})
    people = [UserProfile(user_id=f"b{i}", addresses={"email": f"b{i}@example.test"}) for i in range(USERS)]
    async with serving(cfg, database_url, people) as eng:
        yield eng


def note(uid: str) -> dict:
    return {"user_id": uid, "category": "marketing", "channels": ["email"],
            "content": {"subject": f"for {uid}", "text": "t"}}


async def submit(client, eng, batch: list[dict]) -> list[str]:
    async with client.post(f"{eng.base_url}/v1/notifications", json=batch) as r:
        assert r.status == 202, await r.text()
        return [n["id"] for n in (await r.json())["notifications"]]


async def test_the_engine_pools_carry_the_configured_bounds(bounded):
    assert await bounded.pool.fetchval("SHOW lock_timeout") == "4s"
    assert await bounded.pool.fetchval("SHOW statement_timeout") == "30s"


@needs_ss(777)
async def test_the_api_listens_with_the_configured_backlog(bounded):
    port = int(bounded.base_url.rsplit(":", 1)[1])
    assert listen_backlog(port) == 777  # aiohttp's own default is 128


async def test_a_cache_smaller_than_the_population_delivers_to_all_and_keeps_evicted_preferences(bounded, client):
    url = f"{bounded.base_url}/v1/users/b7/preferences"
    async with client.put(url, json={"preferences": [{"category": "marketing", "enabled": False}]}) as r:
        assert r.status == 200, await r.text()
    others = [f"b{i}" for i in range(USERS) if i != 7]
    first = await submit(client, bounded, [note(u) for u in others])  # loads 19 users through caches of 3
    assert await wait_rows(bounded.pool, first, len(first)) == len(first)
    infos = await asyncio.gather(*(s.info.remote() for s in bounded.actors.user_shards))
    assert all(i["users"] <= 3 for i in infos) and sum(i["evicted"] for i in infos) > 0
    # b7 (its opt-out written through the cache) is long evicted; alone, then in a batch of everyone
    alone = await submit(client, bounded, [note("b7")])
    everyone = await submit(client, bounded, [note(f"b{i}") for i in range(USERS)])
    ids = alone + everyone
    assert await wait_rows(bounded.pool, ids, len(ids)) == len(ids)
    rows = await bounded.pool.fetch("SELECT user_id, status, reason FROM delivery_tracking "
                                    "WHERE notification_id = ANY($1::uuid[])", ids)
    status = {(r["user_id"], r["status"]) for r in rows}
    assert {s for u, s in status if u == "b7"} == {"suppressed"}
    assert all(s == "sent" for u, s in status if u != "b7") and len(rows) == 1 + USERS, [dict(r) for r in rows]
    assert {r["status"] for r in await bounded.pool.fetch(
        "SELECT status FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])", first)} == {"sent"}
    async with client.get(url) as r:  # the document of an evicted user is read again, intact
        assert (await r.json())["preferences"] == [{"category": "marketing", "enabled": False}]


async def test_an_import_larger_than_a_chunk_streams_through_the_cli(bounded, tmp_path):
    from engine.cli import prefs as cli_prefs
    from stores import bulk, prefs as prefs_store
    n = 3 * bulk.CHUNK_ROWS + 1234  # four staging chunks; the file is more than one upload chunk too
    source = tmp_path / "big.ndjson"
    with open(source, "wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"user_id": f"imp-{i // 2:06d}-{'x' * 40}", "channel": "email",
                                  "category": "job_alerts" if i % 2 else "messages", "frequency": "daily"}) + b"\n")
    assert source.stat().st_size > cli_prefs.CHUNK
    args = argparse.Namespace(action="import", file=str(source), format=None, url=bounded.base_url)
    assert await cli_prefs.cmd_prefs(bounded.cfg, args) == 0
    users = (n + 1) // 2
    assert await bounded.pool.fetchval("SELECT count(*) FROM user_preferences WHERE user_id LIKE 'imp-%'") == n
    assert await bounded.pool.fetchval("SELECT count(*) FROM users WHERE user_id LIKE 'imp-%' "
                                       "AND prefs_version = 1") == users
    async with bounded.pool.acquire() as conn:  # the change feed's documents are sealed (stores/pii.py)
        feed = await prefs_store.changes_since(conn, bounded.ring, f"imp-{1:06d}-{'x' * 40}", 0)
    assert [{"set": f["set"]} for f in feed if f["type"] == "import"] == [{"set": [
        {"channel": "email", "category": "messages", "frequency": "daily"},
        {"channel": "email", "category": "job_alerts", "frequency": "daily"}]}]
    spooled = http_bulk.import_dir(bounded)
    assert spooled.is_dir() and not list(spooled.iterdir())  # the upload was on disk, and is gone with its job

    # errors in several chunks, and a repeated key whose two lines are chunks apart
    bad = tmp_path / "bad.ndjson"
    lines = source.read_bytes().splitlines(keepends=True)
    lines[9000] = b'{"user_id": "imp-x", "channel": "fax", "frequency": "daily"}\n'
    lines.append(lines[1])
    bad.write_bytes(b"".join(lines))
    args = argparse.Namespace(action="import", file=str(bad), format=None, url=bounded.base_url)
    assert await cli_prefs.cmd_prefs(bounded.cfg, args) == 1
    status, errors = await bounded.pool.fetchrow("SELECT status, errors FROM jobs ORDER BY created_at DESC LIMIT 1")
    errors = orjson.loads(errors)
    assert status == "failed" and errors[0]["field"] == "line 9001.channel"
    assert (errors[-1]["field"], errors[-1]["reason"]) == (f"line {n + 1}", "same user and key as line 2")
    assert await bounded.pool.fetchval("SELECT count(*) FROM users WHERE user_id LIKE 'imp-%' "
                                       "AND prefs_version = 1") == users  # nothing of it applied


async def test_an_export_reader_that_stops_reading_is_cut_off_and_its_connection_freed(bounded, database_url):
    async with bounded.pool.acquire() as conn:  # enough rows to fill every buffer between us and the reader
        await conn.execute("INSERT INTO users (user_id) SELECT 'exp-' || g FROM generate_series(1, 25000) g")
        await conn.execute("INSERT INTO user_preferences (user_id, preference_type, channel, category, content_type, "
                           "context_key, value) SELECT 'exp-' || g, 'category', c, 'job_alerts', '*', '', "
                           "'{\"frequency\": \"weekly\", \"enabled\": true}' FROM generate_series(1, 25000) g, "
                           "unnest(ARRAY['email', 'sms']) c")
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader with a small window...
    sock.setblocking(False)
    port = int(bounded.base_url.rsplit(":", 1)[1])
    await loop.sock_connect(sock, ("127.0.0.1", port))
    auth = bounded.headers["Authorization"]
    await loop.sock_sendall(sock, f"GET /v1/preferences/export HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                                  "\r\n".encode())
    head = await asyncio.wait_for(loop.sock_recv(sock, 1024), 30)
    assert head.startswith(b"HTTP/1.1 200")
    watcher = await asyncpg.connect(database_url)
    try:
        # ...that reads nothing more: the export's transaction waits on it, then is ended
        seen = await until(watcher, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tidings-export' "
                                    "AND state = 'idle in transaction'", lambda n: n == 1)
        assert seen == 1
        gone = await until(watcher, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tidings-export'",
                           lambda n: n == 0)
        assert gone == 0
    finally:
        await watcher.close()
    body = b""
    try:  # what was buffered, then the end: the connection was aborted, never finished
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 30):
            body += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert not body.endswith(b"0\r\n\r\n")
    async with aiohttp.ClientSession(headers=bounded.headers) as s:  # a reader that reads gets all of it
        async with s.get(f"{bounded.base_url}/v1/preferences/export") as r:
            assert r.status == 200
            assert sum(1 for line in (await r.read()).splitlines() if b'"exp-' in line) == 50_000


async def until(conn, sql: str, done, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    value = await conn.fetchval(sql)
    while not done(value) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        value = await conn.fetchval(sql)
    return value


async def test_websockets_are_limited_per_user_and_in_all(bounded):
    url = bounded.base_url + "/v1/users/{}/inbox/ws"
    async with aiohttp.ClientSession(headers=bounded.headers) as s:
        first = [await s.ws_connect(url.format("b1")) for _ in range(2)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as over:
            await s.ws_connect(url.format("b1"))
        assert over.value.status == 429 and over.value.headers.get("Retry-After")
        third = await s.ws_connect(url.format("b2"))
        with pytest.raises(aiohttp.WSServerHandshakeError) as full:
            await s.ws_connect(url.format("b3"))
        assert full.value.status == 503 and full.value.headers.get("Retry-After")
        await first[0].close()  # a place is free again once its handler has ended
        deadline, ws = time.monotonic() + 30, None
        while ws is None and time.monotonic() < deadline:
            try:
                ws = await s.ws_connect(url.format("b3"))
            except aiohttp.WSServerHandshakeError as e:
                assert e.status == 503
                await asyncio.sleep(0.1)
        assert ws is not None
        for w in (first[1], third, ws):
            await w.close()


# -- a full work stream ------------------------------------------------------------


async def test_a_full_stream_answers_503_with_retry_after_and_producers_see_the_error(
        nats_url, database_url, ray_address, tmp_path):
    cfg = engine_config(nats_url, database_url, str(tmp_path), channels=("email",), smtp_port=1,
                        overrides={"engine": {"user_shards": 1}, "nats": {"max_msgs": 5},
                                   "ratelimit": {"enabled": False}})
    eng = await Engine(cfg).start(ingest=False)  # nothing consumes: the stream only fills
    runner = await http.serve(eng, port=0)
    base = f"http://127.0.0.1:{http.bound_port(runner)}"
    API_KEYS[base] = admin_headers(cfg)
    try:
        async with aiohttp.ClientSession(headers=API_KEYS[base]) as s:
            for i in range(5):
                async with s.post(f"{base}/v1/notifications", json=note(f"f{i}")) as r:
                    assert r.status == 202, await r.text()
            for body in (note("f5"), [note("f6"), note("f7")]):
                async with s.post(f"{base}/v1/notifications", json=body) as r:
                    assert r.status == 503, await r.text()
                    assert int(r.headers["Retry-After"]) > 0 and (await r.json())["error"] == "stream full"
        nc = await nats.connect(nats_url)
        try:
            with pytest.raises(nats.js.errors.APIError) as refused:
                await nc.jetstream().publish(streams.notify_subject(cfg.nats, "marketing"), b"{}", timeout=10)
            assert streams.is_stream_full(refused.value)
            assert (await nc.jetstream().stream_info(cfg.nats.stream)).state.messages == 5  # none dropped
        finally:
            await nc.close()
    finally:
        await runner.cleanup()
        js = eng.js
        for name in (cfg.nats.stream, streams.dlq_stream(cfg.nats)):
            await js.delete_stream(name)
        await eng.stop()
        await drop_schema(database_url, cfg.database.schema)
