"""Personal data at rest (docs/privacy.md): a dump of a database the engine has
worked on holds no email address or phone number; master keys rotate while the
engine runs and an engine with only the new key reads everything; erasure
destroys the person's key, deletes their rows, forgets them in the shard's
memory, honours a legal hold, returns a receipt and leaves the audit chain
verifiable."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest

from infra.pii import Keyring
from policy.types import UserProfile
from stores import audit, pii
from stores.state import load_states
from tests import sealing
from tests.integration.helpers import api_session, engine_config, send_email, serving

pytestmark = pytest.mark.integration

EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@(example|privacy)\.test")
PHONE = re.compile(rb"\+1555\d{7}")
PEOPLE = [UserProfile(user_id=f"pv{i}", addresses={"email": f"person{i}@privacy.test", "sms": f"+1555000{i:04d}"},
                      timezone="Europe/Berlin") for i in range(6)]


def pg_dump(database_url: str, schema: str, *extra: str) -> bytes:
    """The schema as ``pg_dump`` writes it (the pgserver wheel's, which dumps any
    server up to its own version)."""
    import pgserver
    binary = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"
    out = subprocess.run([str(binary), "--dbname", database_url, "--schema", schema, *extra],
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, smtp, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        channels=("email",))
    async with serving(cfg, database_url, PEOPLE) as eng:
        yield eng


async def test_a_dump_of_a_working_database_holds_no_address(engine, database_url):
    """Profiles, a change of address, a preference change, a delivery, a bounce's
    suppression, an export and a legal hold: then pg_dump, and neither an email
    address nor a phone number is in it; the engine still reads them back."""
    async with api_session() as client:
        async with client.put(f"{engine.base_url}/v1/users/pv1", json={
                "addresses": {"email": "Person1.New@privacy.test", "sms": "+15550009999"}}) as r:
            assert r.status == 200, await r.text()
        async with client.patch(f"{engine.base_url}/v1/users/pv0/preferences", json={
                "set": [{"channel": "email", "category": "marketing", "enabled": False,
                         "custom": {"note": "or write to person0.private@privacy.test, +15550007777"}}]}) as r:
            assert r.status == 200, await r.text()
        async with client.get(f"{engine.base_url}/v1/users/pv0/preferences") as r:  # opened where it is read
            rows = (await r.json())["preferences"]
            assert rows[0]["custom"] == {"note": "or write to person0.private@privacy.test, +15550007777"}
        async with client.get(f"{engine.base_url}/v1/users/pv0/preferences/changes?since=0") as r:
            assert "person0.private@privacy.test" in await r.text()
        # a bulk import's custom values are sealed before they reach the table (and its WAL)
        from tests.integration.test_prefs import run_job
        row = {"user_id": "pv3", "channel": "email", "category": "job_alerts", "custom": {"cc": "boss3@privacy.test"}}
        assert (await run_job(engine, client, orjson.dumps(row) + b"\n", "ndjson"))["status"] == "succeeded"
        async with client.get(f"{engine.base_url}/v1/preferences/export?format=ndjson") as r:
            assert "boss3@privacy.test" in await r.text()  # opened where it is read
        await send_email(engine, "pv0", "security", "Sign-in code", "123456")
        async with client.post(f"{engine.base_url}/v1/suppressions", json={
                "channel": "email", "address": "PERSON2@privacy.test", "reason": "manual"}) as r:
            assert r.status == 201 and (await r.json())["users"] == ["pv2"]  # found by the blind index, any case
        async with client.get(f"{engine.base_url}/v1/users/pv3/export") as r:
            assert r.status == 200
        async with client.get(f"{engine.base_url}/v1/users/pv1") as r:
            body = await r.json()
            assert body["addresses"] == {"email": "Person1.New@privacy.test", "sms": "+15550009999"}
        async with client.get(f"{engine.base_url}/v1/users/pv2") as r:
            assert (await r.json())["suppressed"] == {"email": "manual"}

    dump = pg_dump(database_url, engine.cfg.database.schema)
    assert b"user_addresses" in dump and b"preference_audit_log" in dump  # the data is there, sealed
    assert EMAIL.findall(dump) == [] and PHONE.findall(dump) == []
    # and what a restarted shard reads (users.state) opens to the same addresses
    shard = engine.shard_for("pv4")
    await shard.reload.remote(["pv4"])
    state = await shard.get_user.remote("pv4")
    assert b"person4@privacy.test" in state


async def test_erasure_shreds_the_key_honours_a_hold_and_leaves_the_chain_verifiable(engine):
    uid = "pv5"
    async with api_session() as client:
        await send_email(engine, uid, "security", "Code", "1")
        async with client.get(f"{engine.base_url}/v1/users/{uid}") as r:
            assert r.status == 200  # held in the shard's memory from here on
        sealed_before = await engine.pool.fetch("SELECT sealed FROM preference_audit_log WHERE user_id = $1 "
                                                "AND sealed IS NOT NULL", uid)
        assert sealed_before

        async with client.put(f"{engine.base_url}/v1/users/{uid}/legal-hold", json={"reason": "case 2026-7"}) as r:
            assert r.status == 200
        async with client.delete(f"{engine.base_url}/v1/users/{uid}") as r:
            assert r.status == 409 and (await r.json())["errors"][0]["field"] == "user_id"
        assert await engine.pool.fetchval("SELECT count(*) FROM user_keys WHERE user_id = $1", uid) == 1
        async with client.put(f"{engine.base_url}/v1/users/{uid}/legal-hold", json={"reason": ""}) as r:
            assert r.status == 422 and (await r.json())["errors"][0]["field"].endswith("reason")
        async with client.delete(f"{engine.base_url}/v1/users/{uid}/legal-hold") as r:
            assert r.status == 200

        async with client.delete(f"{engine.base_url}/v1/users/{uid}") as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            receipt = await r.json()
        assert receipt["user_id"] == uid and receipt["key_destroyed"] is True
        assert receipt["deleted"]["delivery_tracking"] == 1 and receipt["deleted"]["user_addresses"] == 2
        async with client.delete(f"{engine.base_url}/v1/users/{uid}") as r:
            assert r.status == 200 and (await r.json())["id"] == receipt["id"]  # the same receipt again
        async with client.get(f"{engine.base_url}/v1/users/{uid}") as r:
            assert r.status == 404  # gone from the shard's memory too, not only from PostgreSQL
        async with client.get(f"{engine.base_url}/v1/users/{uid}/export") as r:
            assert r.status == 404
        async with client.delete(f"{engine.base_url}/v1/users/never-{uuid.uuid4().hex[:6]}") as r:
            assert r.status == 404

    async with engine.pool.acquire() as conn:
        for table in ("users", "user_keys", "user_addresses", "delivery_tracking", "preference_sync_log"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1", uid) == 0, table
        # the audit rows stay, still verify, and the receipt names the chain's last row
        report = await audit.verify(conn, uid)
        assert report.ok and report.rows >= 4, report.as_dict()
        head = await conn.fetchrow("SELECT id, hash, action, new_value::text FROM preference_audit_log "
                                   "WHERE user_id = $1 ORDER BY id DESC LIMIT 1", uid)
        assert (head["id"], head["hash"].hex(), head["action"]) == (receipt["audit_row"], receipt["audit_hash"],
                                                                     "gdpr.erase")
        assert receipt["id"] in head["new_value"] and "privacy.test" not in head["new_value"]
        # what was sealed before is still there, and no key left anywhere opens it
        assert await conn.fetchval("SELECT count(*) FROM preference_audit_log WHERE user_id = $1 "
                                   "AND sealed IS NOT NULL", uid) == len(sealed_before)
        assert await pii.data_keys(conn, engine.ring, [uid]) == {}
    # a new profile under the same id starts afresh, with a new key
    async with api_session() as client:
        async with client.put(f"{engine.base_url}/v1/users/{uid}", json={"addresses": {"email": "back@privacy.test"}}) as r:
            assert r.status == 200
        async with client.get(f"{engine.base_url}/v1/users/{uid}") as r:
            assert (await r.json())["addresses"] == {"email": "back@privacy.test"}


async def test_a_person_erases_themselves_and_no_one_else(engine):
    async with api_session() as client:
        tokens = {}
        for uid in ("pv3", "pv4"):
            async with client.post(f"{engine.base_url}/v1/tokens", json={"user_id": uid}) as r:
                tokens[uid] = (await r.json())["token"]
    async with aiohttp.ClientSession() as person:
        async with person.delete(f"{engine.base_url}/v1/users/pv4",
                                 headers={"Authorization": f"Bearer {tokens['pv3']}"}) as r:
            assert r.status == 403
        async with person.delete(f"{engine.base_url}/v1/users/pv3",
                                 headers={"Authorization": f"Bearer {tokens['pv3']}"}) as r:
            assert r.status == 200 and (await r.json())["requested_by"].startswith("user:")
        async with person.put(f"{engine.base_url}/v1/users/pv4/legal-hold", json={"reason": "x"},
                              headers={"Authorization": f"Bearer {tokens['pv4']}"}) as r:
            assert r.status == 403  # holds are for keys with users:hold


async def test_master_keys_rotate_while_the_engine_runs_and_the_new_key_alone_reads_everything(
        nats_url, database_url, ray_address, smtp, tmp_path):
    """Data written under the old master key; the new key put first; the CLI
    re-wraps every key while the engine runs (the old one still configured, so
    nothing is unreadable meanwhile); then only the new key reads every address
    from its row, and the blind index still finds an address (its key was
    re-wrapped, not changed)."""
    old = sealing.MASTER_KEYS
    new = "new:" + base64.b64encode(bytes(range(100, 132))).decode()
    cfg = engine_config(nats_url, database_url, str(tmp_path / "home"), smtp_port=smtp.port, channels=("email",))
    schema = cfg.database.schema
    async with serving(cfg, database_url, PEOPLE[:3]) as eng:
        blind_before = await eng.pool.fetchval("SELECT blind FROM user_addresses WHERE user_id = 'pv0' "
                                               "AND channel = 'email'")
        config_path = tmp_path / "tidings.toml"
        config_path.write_text(f'[engine]\nhome = "{cfg.engine.home}"\n[database]\nurl = "{database_url}"\n'
                               f'schema = "{schema}"\n')
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}, "COLUMNS": "200"}
        run = subprocess.run([sys.executable, "-m", "engine.cli", "--config", str(config_path), "keys",
                              "rotate-master"], capture_output=True, text=True, timeout=120,
                             env={**env, "TIDINGS_PRIVACY_MASTER_KEYS": f"{new},{old}"})
        assert run.returncode == 0 and "re-wrapped 4 key(s) under master key new" in run.stdout, run.stdout + run.stderr
        assert "Traceback" not in run.stderr
        assert {r[0] for r in await eng.pool.fetch("SELECT master_id FROM user_keys")} == {"new"}
        bad = subprocess.run([sys.executable, "-m", "engine.cli", "--config", str(config_path), "keys",
                              "rotate-master"], capture_output=True, text=True, timeout=120,
                             env={**env, "TIDINGS_PRIVACY_MASTER_KEYS": "nope"})
        assert bad.returncode == 2 and len(bad.stdout.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
        # the engine's own data, read under only the new key, from PostgreSQL (not from memory)
        async with eng.pool.acquire() as conn:
            ring = await pii.keyring(conn, Keyring.parse(new))
            await conn.execute("UPDATE users SET state = NULL")  # nothing from before: every address from its row
            states = await load_states(conn, ring, ["pv0", "pv1", "pv2"])
            assert {u: s.addresses["email"] for u, s in states.items()} == {
                f"pv{i}": f"person{i}@privacy.test" for i in range(3)}
            assert ring.blind("email", "person0@privacy.test") == blind_before
            report = await audit.verify(conn)
            assert report.ok


async def test_the_migration_is_not_reversed_over_sealed_data(database_url):
    """Reversing 021 would lose every sealed address and suppression and break
    the version-3 audit chains: with anything sealed, it refuses."""
    import asyncpg

    from engine import migrations
    from tests.integration.helpers import drop_schema
    schema = f"t_seal_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.migrate(conn, schema)
        await conn.execute(f'SET search_path TO "{schema}"')
        await sealing.add_address(conn, await sealing.ring(conn), "s1", "email", "s1@privacy.test")
        with pytest.raises(asyncpg.RaiseError, match="cannot be reversed"):
            await migrations.rollback(conn, 20, schema)
        assert await conn.fetchval("SELECT count(*) FROM user_addresses WHERE sealed IS NOT NULL") == 1
    finally:
        await conn.close()
        await drop_schema(database_url, schema)
