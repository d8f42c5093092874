"""Building test engines and waiting on their results."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable
from contextlib import asynccontextmanager

import aiohttp
import asyncpg
import pytest

from engine import auth, http, migrations, settings
from engine.runtime import Engine
from infra import config
from infra.config import Config
from infra.tuning import with_provider_settings
from policy.types import UserProfile
from tests import sealing


def engine_config(nats_url: str, database_url: str, home: str, *, smtp_port: int | None = None,
                webhook_url: str | None = None, secret: str = "test-secret", channels=("email", "webhook"),
                overrides: dict | None = None, redis_url: str = "") -> Config:
    """The development profile, isolated: its own stream, subjects, consumer and schema.
    Without ``redis_url`` (the ``redis_url`` fixture) the engine starts an embedded
    Redis under ``home``, stopped with it."""
    s = uuid.uuid4().hex[:10]
    base = {
        "engine": {"home": home, "user_shards": 2, "fetch_timeout_s": 0.02},
        "nats": {"url": nats_url, "prefix": f"t{s}", "stream": f"T{s}", "consumer": f"c{s}"},
        "database": {"url": database_url, "schema": f"t_{s}"},
        "redis": {"url": redis_url, "embedded_port": 0},
        "ray": {"address": "", "dashboard": False},
        "http": {"port": 0},
        "recorder": {"linger_ms": 5},
        "privacy": {"master_keys": sealing.MASTER_KEYS},  # rows tests write themselves open under it too
    }
    cfg = settings.load(profile="development", env={}, overrides=config.merge(base, overrides or {}))
    if "email" in channels and smtp_port is not None:
        cfg = with_provider_settings(cfg, "email", host="127.0.0.1", port=smtp_port)
    if "webhook" in channels and webhook_url is not None:
        cfg = with_provider_settings(cfg, "webhook", url=webhook_url, secret=secret)
    keep = {name: ch for name, ch in cfg.channels.items() if name in channels}
    import msgspec
    return msgspec.structs.replace(cfg, channels=keep)


def daytime_zone(now: float | None = None) -> str:
    """A time zone where it is about 13:00 now: a test that sends marketing texts
    must not land outside the TCPA window (08:00-21:00 in the recipient's zone),
    whatever the hour the suite runs at."""
    hour = time.gmtime(time.time() if now is None else now).tm_hour
    offset = (13 - hour + 12) % 24 - 12  # hours east of UTC, -12..11
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"  # the Etc zones' sign is reversed


async def send_email(engine, user_id: str, category: str, subject: str = "News", text: str = "Hello") -> str:
    """Submit one email notification through the API and wait for its tracking row; its id."""
    nid = str(uuid.uuid4())
    async with api_session() as s, s.post(f"{engine.base_url}/v1/notifications", json={
            "id": nid, "user_id": user_id, "category": category, "channels": ["email"],
            "content": {"subject": subject, "text": text, "html": f"<p>{text}</p>"}}) as r:
        assert r.status == 202, await r.text()
    assert await wait_rows(engine.pool, [nid], 1) == 1
    return nid


async def wait_rows(pool: asyncpg.Pool, ids: list[str], expected: int, timeout_s: float = 120) -> int:
    """Poll until ``expected`` tracking rows exist for ``ids``; returns the count seen."""
    deadline = time.monotonic() + timeout_s
    n = 0
    while time.monotonic() < deadline:
        n = await pool.fetchval(
            "SELECT count(*) FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])", ids)
        if n >= expected:
            return n
        await asyncio.sleep(0.2)
    return n


@asynccontextmanager
async def migrated_schema(database_url: str, prefix: str):
    """A new schema (``prefix`` and ten random hex digits) with every migration,
    dropped afterwards."""
    name = prefix + uuid.uuid4().hex[:10]
    await migrations.migrate_url(database_url, name)
    try:
        yield name
    finally:
        await drop_schema(database_url, name)


async def drop_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


# base URL -> the Authorization header of the admin key its engine created (serving())
API_KEYS: dict[str, dict[str, str]] = {}


async def _with_key(request: aiohttp.ClientRequest, handler):
    base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
    for name, value in API_KEYS.get(base, {}).items():
        request.headers.setdefault(name, value)
    return await handler(request)


def api_session(**kw) -> aiohttp.ClientSession:
    """A client session that sends the admin key of whichever test engine it calls."""
    return aiohttp.ClientSession(middlewares=(_with_key,), **kw)


def admin_headers(cfg: Config) -> dict[str, str]:
    return {"Authorization": f"Bearer {auth.read_admin_key(cfg.engine.home, environ={})}"}


@asynccontextmanager
async def serving(cfg: Config, database_url: str, people: Iterable[UserProfile] = (), port: int = 0):
    """An engine for ``cfg`` serving its HTTP API (``engine.base_url``), with
    ``people`` saved; afterwards it is stopped and its schema dropped."""
    eng = await Engine(cfg).start()
    runner = await http.serve(eng, port=port)
    eng.base_url = f"http://127.0.0.1:{http.bound_port(runner)}"
    API_KEYS[eng.base_url] = eng.headers = admin_headers(cfg)
    try:
        people = list(people)
        if people:
            await eng.save_profiles(people, "test")
        yield eng
    finally:
        await runner.cleanup()
        await eng.stop()
        await drop_schema(database_url, cfg.database.schema)


async def send_text(engine, user: str, category: str = "messages", text: str = "A recruiter wrote to you") -> str:
    """Submit one SMS notification over HTTP and wait for its row; its id."""
    nid = str(uuid.uuid4())
    async with api_session() as s, s.post(f"{engine.base_url}/v1/notifications", json={
            "id": nid, "user_id": user, "category": category, "channels": ["sms"], "content": {"text": text}}) as r:
        assert r.status == 202, await r.text()
    await wait_rows(engine.pool, [nid], 1)
    return nid


async def row_status(engine, nid: str, until: str | None = None, timeout_s: float = 15) -> tuple[str, str]:
    """A notification's (status, reason), once it reached ``until`` (a provider's
    receipt comes after the send) or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = await engine.pool.fetchrow("SELECT status, reason FROM delivery_tracking WHERE notification_id = $1",
                                       uuid.UUID(nid))
        if until is None or r["status"] == until or time.monotonic() > deadline:
            return r["status"], r["reason"]
        await asyncio.sleep(0.1)


def somaxconn() -> int:
    """The kernel's cap on any listen backlog; 0 where there is no Linux ``/proc`` to
    say (the backlog tests are then skipped, not failed at collection)."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def needs_ss(least: int):
    """Skip unless ``ss`` can read a listener's backlog and the kernel allows one of
    ``least`` (below aiohttp's default of 128 a test could not tell the two apart)."""
    return pytest.mark.skipif(shutil.which("ss") is None or somaxconn() < least,
                              reason=f"needs ss (iproute2) and net.core.somaxconn >= {least}")


def listen_backlog(port: int) -> int:
    """The backlog of the socket listening on ``port``, as the kernel holds it
    (``ss``: a listener's Send-Q is its backlog); the same on every address."""
    out = subprocess.run(["ss", "-ltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    found = {int(line.split()[2]) for line in out.splitlines() if line.startswith("LISTEN")}
    assert len(found) == 1, f"not one backlog for port {port}: {out!r}"
    return found.pop()
