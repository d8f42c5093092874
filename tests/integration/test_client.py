"""The Python client (engine/client.py) against a running engine, and its retries and
pages against a loopback server that answers as the engine does when it is busy."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import pytest
from aiohttp import web

from engine.client import Client, SyncClient, TidingsError, Unreachable
from policy.types import Content, NotificationRequest, UserProfile
from tests.integration.helpers import engine_config, serving, wait_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, smtp, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        channels=("email",))
    async with serving(cfg, database_url, [UserProfile(user_id="cl1", addresses={"email": "cl1@example.com"})]) as e:
        yield e


def key_of(engine) -> str:
    return engine.headers["Authorization"].removeprefix("Bearer ")


async def test_send_status_and_errors_through_the_engine(engine):
    async with Client(engine.base_url, key_of(engine)) as tidings:
        request = NotificationRequest(user_id="cl1", category="orders", channels=["email"],
                                      content=Content(subject="Shipped", text="Your order shipped"))
        [first] = await tidings.send(request)
        assert not first.duplicate
        await wait_rows(engine.pool, [first.id], 1)
        status = await tidings.notification(first.id)
        assert [(c.channel, c.status) for c in status.channels] == [("email", "sent")]
        # a retry carrying the same idempotency key is the same notification
        keyed = {"user_id": "cl1", "category": "orders", "channels": ["email"], "idempotency_key": "order-77",
                 "content": {"subject": "Shipped", "text": "Your order shipped"}}
        a, b = await tidings.send(keyed), await tidings.send(keyed)
        assert a[0].id == b[0].id and b[0].duplicate
        with pytest.raises(TidingsError) as err:
            await tidings.send({"user_id": "cl1", "category": "orders", "channels": ["fax"],
                                "content": {"text": "x"}})
        assert err.value.status == 422 and "$[0].channels[0]" in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(TidingsError) as err:
            await tidings.notification(str(uuid.uuid4()))
        assert err.value.status == 404
    async with Client(engine.base_url, "tk_wrong") as stranger:
        with pytest.raises(TidingsError) as err:
            await stranger.user("cl1")
        assert err.value.status == 401


async def test_the_sync_client(engine):
    def use() -> None:  # in a thread: the engine's API is served by this test's event loop
        with SyncClient(engine.base_url, key_of(engine)) as tidings:
            assert tidings.user("cl1")["user_id"] == "cl1"
            [accepted] = tidings.send({"user_id": "cl1", "category": "orders", "channels": ["email"],
                                       "content": {"subject": "Hi", "text": "Hello"}})
            assert uuid.UUID(accepted.id)
    await asyncio.to_thread(use)


async def test_retries_honour_retry_after_and_keep_the_idempotency_key():
    seen: list[dict] = []

    async def busy_then_ok(request: web.Request) -> web.Response:
        seen.append((await request.json())[0])
        if len(seen) < 3:
            return web.json_response({"error": "stream full", "errors": []}, status=503, headers={"Retry-After": "0"})
        return web.json_response({"notifications": [{"id": "n1", "duplicate": False}]}, status=202)

    async def pages(request: web.Request) -> web.Response:
        after = int(request.query["after"])
        messages = [{"seq": s} for s in range(after + 1, min(after + int(request.query["limit"]), 7) + 1)]
        return web.json_response({"messages": messages, "next": messages[-1]["seq"] if messages else after,
                                  "unread": 0, "unseen": 0})

    puts: list[str] = []

    async def put_user(request: web.Request) -> web.Response:
        puts.append(request.match_info["user"])
        if len(puts) == 1:
            return web.json_response({"error": "rate limited", "errors": []}, status=429, headers={"Retry-After": "nan"})
        return web.json_response({"error": "unavailable", "errors": []}, status=503, headers={"Retry-After": "0"})

    async def get_user(request: web.Request) -> web.Response:
        return web.json_response({"user_id": request.match_info["user"]})

    app = web.Application()
    app.router.add_post("/v1/notifications", busy_then_ok)
    app.router.add_get("/v1/users/{user}/inbox", pages)
    app.router.add_put("/v1/users/{user}", put_user)
    app.router.add_get("/v1/users/{user}", get_user)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with Client(url, "k", backoff_s=0.01) as tidings:
            [accepted] = await tidings.send({"user_id": "u", "category": "c", "channels": ["email"]})
            assert accepted.id == "n1" and len(seen) == 3
            keys = {s["idempotency_key"] for s in seen}
            assert len(keys) == 1 and uuid.UUID(keys.pop())  # one key, every try: never a second notification
            assert [m["seq"] async for m in tidings.inbox("u", page_size=3)] == [1, 2, 3, 4, 5, 6, 7]
            # an id is one path segment, whatever it holds
            assert (await tidings.user("a?b#c"))["user_id"] == "a?b#c"
            # a write is retried after the rate limiter's 429 (it never arrived; a NaN Retry-After
            # is the backoff), not after a 503 (it may have been applied)
            with pytest.raises(TidingsError) as err:
                await tidings.put_user("u", {"timezone": "UTC"})
            assert err.value.status == 503 and len(puts) == 2
        async with Client(url, "k", retries=1, backoff_s=0.01) as impatient:
            seen.clear()
            with pytest.raises(TidingsError) as err:
                await impatient.send({"user_id": "u", "category": "c", "channels": ["email"]})
            assert err.value.status == 503 and len(seen) == 2
    finally:
        await runner.cleanup()


async def test_an_unreachable_engine_is_one_error():
    async with Client("http://127.0.0.1:1", retries=1, backoff_s=0.01) as tidings:
        with pytest.raises(Unreachable) as err:
            await tidings.notification(str(uuid.uuid4()))
    assert str(err.value).startswith("cannot reach the engine at http://127.0.0.1:1")


def test_the_cli_answers_an_unreachable_engine_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(TIDINGS_ENGINE_HOME=str(tmp_path), COLUMNS="300")
    out = subprocess.run([sys.executable, "-m", "engine.cli", "status", str(uuid.uuid4()), "--url",
                          "http://127.0.0.1:1"], capture_output=True, text=True, timeout=120, env=env)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode == 1 and len(lines) == 1 and "cannot reach the engine" in lines[0], out
    assert "Traceback" not in out.stderr


async def test_the_cli_sends_and_reads_through_the_client(engine):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(TIDINGS_API_KEY=key_of(engine), COLUMNS="300")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "engine.cli", *args, "--url", engine.base_url],
                              capture_output=True, text=True, timeout=120, env=env)

    sent = await asyncio.to_thread(cli, "send", "--user", "cl1", "--category", "orders", "--channel", "email",
                                   "--subject", "From the CLI", "--text", "Hello")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    nid = sent.stdout.split()[0]
    await wait_rows(engine.pool, [nid], 1)
    shown = await asyncio.to_thread(cli, "status", nid, "--json")
    assert shown.returncode == 0 and '"status": "sent"' in shown.stdout, shown.stdout + shown.stderr
    bad = await asyncio.to_thread(cli, "send", "--user", "cl1", "--category", "orders", "--channel", "fax",
                                  "--text", "x")
    lines = [line for line in (bad.stdout + bad.stderr).splitlines() if line.strip()]
    assert bad.returncode == 1 and len(lines) == 1 and "422" in lines[0] and "channels[0]" in lines[0], lines
