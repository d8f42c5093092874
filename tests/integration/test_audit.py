"""The audit log is verifiable: every column is in the hash, the log refuses
UPDATE, DELETE and TRUNCATE, and signed checkpoints catch what a chain walk
cannot (a tail removed, a chain dropped). Each tampering here is done the way an
intruder with the database's superuser would: the guard triggers switched off."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine import audit as signed
from stores import audit
from stores.audit import Entry, chain_hash
from tests import sealing
from tests.integration.helpers import migrated_schema


@pytest.fixture
async def conn(database_url):
    async with migrated_schema(database_url, "t_audit_") as name:
        c = await asyncpg.connect(database_url, server_settings={"search_path": name})
        yield c
        await c.close()


async def add(conn, entries: list[Entry]) -> None:
    """Append as the engine does: the users exist, their values sealed under their keys."""
    await conn.executemany("INSERT INTO users (user_id) VALUES ($1) ON CONFLICT DO NOTHING",
                           [(e.user_id,) for e in entries])
    await audit.append(conn, await sealing.ring(conn), entries)


async def history(conn) -> None:
    """Three users' chains, with values that print differently in Python and PostgreSQL."""
    for step in range(3):
        async with conn.transaction():
            await add(conn, [
                Entry("alice", "preferences.patch", {"n": step}, {"n": step + 1, "x": 1e16, "t": "é\u2028"},
                      actor="key:ops", reason="test", user_agent="pytest"),
                Entry("bob", "profile.upsert", None, {"addresses": {"email": f"b{step}@example.test"}}, actor="user:bob"),
                Entry("carol", "preferences.put", {"a": [1, 2.5]}, {"a": []}),
            ])


async def tamper(conn, sql: str, *args, table: str = "preference_audit_log") -> None:
    await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
    await conn.execute(sql, *args)
    await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


async def test_an_untouched_log_verifies_and_the_application_cannot_change_it(conn):
    await history(conn)
    report = await audit.verify(conn)
    assert report.ok and (report.chains, report.rows) == (3, 9), report.as_dict()
    for sql in ("UPDATE preference_audit_log SET performed_by = 'x'",
                "DELETE FROM preference_audit_log WHERE user_id = 'bob'", "TRUNCATE preference_audit_log"):
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute(sql)
    assert (await audit.verify(conn)).rows == 9


@pytest.mark.parametrize("column, value", [("performed_by", "key:someone-else"), ("old_value", '{"n": 7}'),
                                           ("new_value", '{"n": 1}'), ("reason", None), ("user_agent", "curl"),
                                           ("created_at", "2020-01-01T00:00:00Z"), ("action", "preferences.put"),
                                           ("sealed", None)])
async def test_changing_any_column_of_a_row_is_found_at_that_row(conn, column, value):
    await history(conn)
    target = await conn.fetchval("SELECT id FROM preference_audit_log WHERE user_id = 'alice' ORDER BY id OFFSET 1 LIMIT 1")
    cast = {"old_value": "::jsonb", "new_value": "::jsonb", "created_at": "::text::timestamptz"}.get(column, "")
    await tamper(conn, f"UPDATE preference_audit_log SET {column} = $1{cast} WHERE id = $2", value, target)
    report = await audit.verify(conn)
    assert [(b.user_id, b.row_id) for b in report.broken] == [("alice", target)]
    assert "hash" in report.broken[0].problem


async def test_a_row_removed_inside_a_chain_breaks_the_next_link(conn):
    await history(conn)
    ids = [r[0] for r in await conn.fetch("SELECT id FROM preference_audit_log WHERE user_id = 'carol' ORDER BY id")]
    await tamper(conn, "DELETE FROM preference_audit_log WHERE id = $1", ids[1])
    report = await audit.verify(conn)
    assert [(b.user_id, b.row_id) for b in report.broken] == [("carol", ids[2])]


async def test_checkpoints_catch_a_cut_tail_and_a_dropped_chain_and_rows_after_them_still_chain(conn):
    key = Ed25519PrivateKey.generate()
    await history(conn)
    done = await signed.checkpoint(conn, key)
    assert done["chains"] == 3
    await add(conn, [Entry("alice", "preferences.patch", None, {"after": True})])  # after the checkpoint
    assert (await signed.verify(conn, [key.public_key()])).ok

    bob_last = await conn.fetchval("SELECT max(id) FROM preference_audit_log WHERE user_id = 'bob'")
    await tamper(conn, "DELETE FROM preference_audit_log WHERE id = $1", bob_last)
    await tamper(conn, "DELETE FROM preference_audit_log WHERE user_id = 'carol'")
    assert (await audit.verify(conn)).ok  # what the chains alone cannot see
    report = await signed.verify(conn, [key.public_key()])
    found = {b.user_id: b for b in report.broken}
    assert set(found) == {"bob", "carol"}, report.as_dict()
    assert found["bob"].row_id == bob_last and "gone" in found["bob"].problem
    assert "whole chain" in found["carol"].problem
    assert report.checkpoint["id"] == done["id"] and report.checkpoint["valid"]


async def test_a_checkpoint_altered_or_signed_by_another_key_is_reported(conn):
    key = Ed25519PrivateKey.generate()
    await history(conn)
    done = await signed.checkpoint(conn, key)
    report = await signed.verify(conn, [Ed25519PrivateKey.generate().public_key()])
    assert not report.ok and report.broken[0].user_id == "*" and "not one given" in report.broken[0].problem

    # an intruder moves a head back to hide a cut tail: the heads no longer match what was signed
    first = await conn.fetchval("SELECT min(id) FROM preference_audit_log WHERE user_id = 'bob'")
    first_hash = await conn.fetchval("SELECT hash FROM preference_audit_log WHERE id = $1", first)
    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):  # the application cannot
        await conn.execute("UPDATE audit_checkpoint_heads SET head_id = $1", first)
    await tamper(conn, "UPDATE audit_checkpoint_heads SET head_id = $1, head_hash = $2 "
                       "WHERE checkpoint_id = $3 AND user_id = 'bob'", first, first_hash, done["id"],
                 table="audit_checkpoint_heads")
    report = await signed.verify(conn, [key.public_key()])
    assert not report.ok and "not the ones signed" in report.broken[0].problem


async def test_checkpoints_chain_so_none_can_be_removed_unseen_and_old_heads_go(conn):
    key = Ed25519PrivateKey.generate()
    ids = []
    for step in range(3):
        await add(conn, [Entry(f"u{step}", "preferences.put", None, {"step": step})])
        ids.append((await signed.checkpoint(conn, key))["id"])
    assert await conn.fetchval("SELECT array_agg(DISTINCT checkpoint_id) FROM audit_checkpoint_heads") == [ids[-1]]
    for sql in ("DELETE FROM audit_checkpoints", "UPDATE audit_checkpoints SET chains = 0",
                "TRUNCATE audit_checkpoints CASCADE", f"DELETE FROM audit_checkpoint_heads WHERE checkpoint_id = {ids[-1]}"):
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute(sql)
    assert (await signed.verify(conn, [key.public_key()], max_age_s=3600)).ok

    await tamper(conn, "DELETE FROM audit_checkpoints WHERE id = $1", ids[1], table="audit_checkpoints")
    report = await signed.verify(conn, [key.public_key()])
    assert [b.problem for b in report.broken] == [f"checkpoint {ids[2]}: does not follow checkpoint {ids[0]} "
                                                  "(checkpoints removed or inserted between them)"]
    # the newest removed (its heads first): what it covered is now uncovered, and old
    await tamper(conn, "DELETE FROM audit_checkpoint_heads", table="audit_checkpoint_heads")
    await tamper(conn, "DELETE FROM audit_checkpoints WHERE id = $1", ids[2], table="audit_checkpoints")
    await conn.execute("SELECT pg_sleep(0.05)")
    report = await signed.verify(conn, [key.public_key()], max_age_s=0.01)
    assert any("in no checkpoint" in b.problem for b in report.broken), report.as_dict()


async def test_a_forgotten_key_is_refused_and_a_rotation_verifies_with_both_keys(conn):
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    await history(conn)
    await signed.checkpoint(conn, old)
    with pytest.raises(signed.KeyMismatch):
        await signed.checkpoint(conn, new)
    await signed.checkpoint(conn, new, rotate=True)
    both = await signed.verify(conn, [old.public_key(), new.public_key()])
    assert both.ok and both.checkpoint["unchecked_older"] == 0
    only_new = await signed.verify(conn, [new.public_key()])
    assert only_new.ok and only_new.checkpoint["unchecked_older"] == 1


async def test_ip_addresses_are_hashed_as_stored(conn):
    await add(conn, [Entry("ip", "preferences.put", None, {"v": 1}, ip="2001:DB8:0:0::1"),
                              Entry("ip", "preferences.put", None, {"v": 2}, ip="10.0.0.1/32")])
    assert (await audit.verify(conn, "ip")).ok


async def test_rows_written_under_the_first_hash_rule_still_verify(conn):
    """Rows from before every column was hashed (hash_version 1) keep their rule;
    a new row chains onto them."""
    digest = chain_hash(None, "dave", "preferences.put", {"v": 1})
    await conn.execute("INSERT INTO preference_audit_log (user_id, action, new_value, hash, hash_version) "
                       "VALUES ('dave', 'preferences.put', '{\"v\": 1}', $1, 1)", digest)
    await add(conn, [Entry("dave", "preferences.patch", {"v": 1}, {"v": 2})])
    assert (await audit.verify(conn, "dave")).ok
    await tamper(conn, "UPDATE preference_audit_log SET new_value = '{\"v\": 9}' WHERE hash_version = 1")
    assert [b.user_id for b in (await audit.verify(conn)).broken] == ["dave"]


async def test_verify_and_checkpoint_over_http_and_the_cli(nats_url, database_url, ray_address, smtp, tmp_path):
    """Writes through the API are audited under the full hash; an admin verifies
    and signs over HTTP; the CLI finds a tampered row (exit 1, one line per break)
    with the engine's key or an auditor's copy of the public key."""
    import json
    import subprocess
    import sys

    from policy.types import UserProfile
    from tests.integration.helpers import api_session, engine_config, serving

    cfg = engine_config(nats_url, database_url, str(tmp_path / "home"), smtp_port=smtp.port, channels=("email",),
                        overrides={"audit": {"checkpoint_every_s": 0.5}})
    people = [UserProfile(user_id=f"au{i}", addresses={"email": f"au{i}@example.test"}) for i in range(3)]
    config_path = tmp_path / "tidings.toml"
    config_path.write_text(f'[engine]\nhome = "{cfg.engine.home}"\n[database]\nurl = "{cfg.database.url}"\n'
                           f'schema = "{cfg.database.schema}"\n')

    def tidings(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "engine.cli", "--config", str(config_path), "audit", *args],
                              capture_output=True, text=True, timeout=120)

    async with serving(cfg, database_url, people) as engine, api_session() as client:
        for uid in ("au0", "au1"):
            async with client.patch(f"{engine.base_url}/v1/users/{uid}/preferences",
                                    json={"set": [{"channel": "email", "category": "marketing", "enabled": False}]}) as r:
                assert r.status == 200, await r.text()
        last = await engine.pool.fetchval("SELECT max(id) FROM preference_audit_log")
        for _ in range(100):  # the engine signs on its own (audit.checkpoint_every_s)
            if await engine.pool.fetchval("SELECT max(max_id) FROM audit_checkpoints") == last:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no checkpoint of the latest rows")
        async with client.get(f"{engine.base_url}/v1/audit/verify") as r:
            body = await r.json()
            assert r.status == 200 and body["ok"] and body["chains"] == 3 and body["checkpoint"]["valid"], body
        async with client.post(f"{engine.base_url}/v1/audit/checkpoints") as r:
            assert r.status == 201 and (await r.json())["chains"] == 3
        versions = {r[0] for r in await engine.pool.fetch("SELECT DISTINCT hash_version FROM preference_audit_log")}
        assert versions == {audit.HASH_VERSION}
        # what is personal is sealed: no address, IP address or user agent in the clear
        assert await engine.pool.fetchval("SELECT count(*) FROM preference_audit_log WHERE sealed IS NULL "
                                          "OR old_value IS NOT NULL OR new_value IS NOT NULL") == 0
        async with client.get(f"{engine.base_url}/v1/audit/verify?user_id=au1") as r:
            body = await r.json()
            assert body["ok"] and body["chains"] == 1 and body["checkpoint"]["valid"], body
        async with client.get(f"{engine.base_url}/v1/audit/verify?user_id=%01") as r:
            assert r.status == 400 and (await r.json())["errors"][0]["field"] == "user_id"

        ok = tidings("verify", "--json")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert json.loads(ok.stdout)["checkpoint"]["valid"]
        async with engine.pool.acquire() as conn:
            row = await conn.fetchval("SELECT max(id) FROM preference_audit_log WHERE user_id = 'au0'")
            await tamper(conn, "UPDATE preference_audit_log SET performed_by = 'someone' WHERE id = $1", row)
        bad = tidings("verify")
        assert bad.returncode == 1 and "au0" in bad.stdout and "Traceback" not in bad.stderr, bad.stdout + bad.stderr
        public = tmp_path / "audit.pub"
        public.write_text(tidings("public-key").stdout)
        again = tidings("verify", "--json", "--public-key", str(public))
        report = json.loads(again.stdout)
        assert again.returncode == 1 and [b["row_id"] for b in report["broken"]] == [row]
        missing = tidings("verify", "--public-key", str(tmp_path / "nope.pem"))
        assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) <= 1
