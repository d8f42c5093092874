"""Provider credentials stored encrypted in PostgreSQL, through the CLI and a
running engine: `tidings credentials set` keeps no plaintext in the table, a
webhook provider whose ``secret`` is ``secret:hook`` signs with the stored value,
`rotate` re-encrypts under a new key, and a start with a credential missing or
under a key not configured fails naming the provider and the credential."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid

import asyncpg
import msgspec
import pytest
from cryptography.fernet import Fernet

from engine import credentials, migrations
from engine.credentials import KEY_ENV, CredentialError, Keyring
from engine.runtime import Engine
from infra import streams
from infra.tuning import with_provider_settings
from policy.types import UserProfile
from sandbox import WebhookSink
from tests.integration.helpers import drop_schema, engine_config, wait_rows

pytestmark = pytest.mark.integration

VALUE = "whsec_integration-7c1e9a"


def cli(database_url: str, schema: str, key: str | None, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(TIDINGS_DATABASE_URL=database_url, TIDINGS_DATABASE_SCHEMA=schema)
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run([sys.executable, "-m", "engine.cli", "credentials", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
async def hook():
    sink = WebhookSink(VALUE, port=0)
    await sink.start()
    yield sink
    await sink.stop()


@pytest.fixture
async def cfg(nats_url, database_url, hook, tmp_path):
    cfg = engine_config(nats_url, database_url, str(tmp_path), webhook_url=hook.url, secret="secret:hook",
                        channels=("webhook",))
    yield cfg
    await drop_schema(database_url, cfg.database.schema)


async def test_a_stored_credential_reaches_the_provider_and_never_the_table(cfg, database_url, hook, ray_address,
                                                                          monkeypatch):
    schema = cfg.database.schema
    old = cli(database_url, schema, None, "gen-key").stdout.strip()
    Fernet(old)  # a usable key
    done = cli(database_url, schema, old, "set", "hook", stdin=VALUE + "\n")
    assert done.returncode == 0, done.stderr
    assert VALUE not in done.stdout + done.stderr
    listed = cli(database_url, schema, None, "list")
    assert listed.returncode == 0 and "hook" in listed.stdout and credentials.key_id(old) in listed.stdout
    assert VALUE not in listed.stdout

    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        row = await conn.fetchrow("SELECT * FROM provider_credentials")
        dump = await conn.fetchval("SELECT string_agg(t::text, '') FROM provider_credentials t")
    finally:
        await conn.close()
    assert row["name"] == "hook" and row["key_id"] == credentials.key_id(old)
    for haystack in (bytes(row["ciphertext"]), base64.urlsafe_b64decode(bytes(row["ciphertext"])), dump.encode()):
        assert VALUE.encode() not in haystack

    # Rotate to a new key; the old one alone no longer opens the row.
    new = Fernet.generate_key().decode()
    done = cli(database_url, schema, f"{new},{old}", "rotate")
    assert done.returncode == 0 and "re-encrypted 1" in done.stderr, done.stderr
    monkeypatch.setenv(KEY_ENV, old)
    with pytest.raises(CredentialError) as e:
        await Engine(cfg).start()
    assert "provider 'webhook-local'" in str(e.value) and "'hook'" in str(e.value)
    assert credentials.key_id(new) in str(e.value) and VALUE not in str(e.value)

    monkeypatch.setenv(KEY_ENV, new)
    eng = await Engine(cfg).start()
    try:
        await eng.save_profiles([UserProfile(user_id="c1")], "test")
        nid = str(uuid.uuid4())
        body = {"id": nid, "user_id": "c1", "category": "job_alerts", "channels": ["webhook"],
                "content": {"subject": "s", "text": "t"}}
        await eng.js.publish(streams.notify_subject(cfg.nats, "job_alerts"), msgspec.json.encode(body))
        await wait_rows(eng.pool, [nid], 1)
        status = await eng.pool.fetchval("SELECT status FROM delivery_tracking WHERE notification_id = $1",
                                         uuid.UUID(nid))
    finally:
        await eng.stop()
    assert status == "sent"
    assert hook.received == 1 and hook.bad_signatures == 0  # signed with the stored value


async def test_a_missing_credential_fails_the_start_naming_provider_and_credential(cfg, ray_address, monkeypatch):
    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode())
    bad = with_provider_settings(cfg, "webhook", secret="secret:nope")
    eng = Engine(bad)
    with pytest.raises(CredentialError) as e:
        await eng.start()
    assert e.value.name == "nope"
    assert "provider 'webhook-local' (channel webhook, setting 'secret')" in str(e.value)
    assert "credential 'nope' is not stored" in str(e.value)
    assert eng.pool is None and eng.actors is None  # closed again, no actors made

    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(CredentialError, match=f"secret:nope.*{KEY_ENV} is not set"):
        await Engine(bad).start()


async def test_rotate_changes_nothing_when_a_row_does_not_decrypt(cfg, database_url):
    old, new, lost = (Fernet.generate_key() for _ in range(3))
    await migrations.migrate_url(database_url, cfg.database.schema)
    conn = await asyncpg.connect(database_url, server_settings={"search_path": cfg.database.schema})
    try:
        await credentials.put(conn, Keyring([old]), "a", "value-a")
        await credentials.put(conn, Keyring([lost]), "b", "value-b")
        before = await conn.fetch("SELECT name, ciphertext, key_id FROM provider_credentials ORDER BY name")
        with pytest.raises(CredentialError, match="'b'.*" + credentials.key_id(lost)):
            await credentials.rotate(conn, Keyring([new, old]))
        assert await conn.fetch("SELECT name, ciphertext, key_id FROM provider_credentials ORDER BY name") == before

        assert await credentials.delete(conn, "b") and not await credentials.delete(conn, "b")
        assert await credentials.rotate(conn, Keyring([new, old])) == 1
        assert await credentials.get(conn, Keyring([new]), "a") == "value-a"
        assert [(e.name, e.key_id) for e in await credentials.entries(conn)] == [("a", credentials.key_id(new))]
        with pytest.raises(CredentialError, match="'c' is not stored"):
            await credentials.get(conn, Keyring([new]), "c")
    finally:
        await conn.close()
