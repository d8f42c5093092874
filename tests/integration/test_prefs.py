"""Preferences through a running engine: the versioned document over HTTP and
NATS, the change feed, templates, quiet hours that defer and release, digests
that go out once with every item, and bulk import/export."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest

from engine import prefs_bus
from infra import streams
from policy.types import UserProfile
from tests.integration.helpers import engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

POLICY = {
    "categories": ["job_alerts", "marketing", "security", "messages"],
    "rules": [{"name": "security_mandatory", "kind": "mandatory", "category": "security"},
              {"name": "critical_passes_quiet", "kind": "bypass_quiet_hours", "priorities": ["critical"]}],
}


def quiet_now() -> list[dict]:
    """A quiet window in Berlin from an hour ago to two hours from now."""
    now = datetime.now(ZoneInfo("Europe/Berlin"))
    return [{"start": (now - timedelta(hours=1)).strftime("%H:%M"), "end": (now + timedelta(hours=2)).strftime("%H:%M")}]


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, smtp, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        channels=("email",), overrides={"preferences": POLICY, "scheduler": {"interval_s": 0.2}})
    people = [UserProfile(user_id=f"p{i}", addresses={"email": f"p{i}@example.test"}, timezone="Europe/Berlin")
              for i in range(50)]
    async with serving(cfg, database_url, people) as eng:
        yield eng


async def test_versioned_document_etag_conflict_and_change_feed(engine, client):
    url = f"{engine.base_url}/v1/users/p1/preferences"
    events = []

    async def heard(m):
        events.append(orjson.loads(m.data))

    sub = await engine.nc.subscribe(prefs_bus.changed_subject(engine.cfg.nats.prefix, "p1"), cb=heard)
    async with client.get(url) as r:
        assert r.status == 200 and r.headers["ETag"] == '"0"'
    doc = {"preferences": [{"channel": "email", "category": "marketing", "enabled": False},
                           {"category": "job_alerts", "frequency": "daily"}], "timezone": "America/New_York"}
    async with client.put(url, json=doc, headers={"If-Match": '"0"'}) as r:
        body = await r.json()
        assert r.status == 200, body
        assert r.headers["ETag"] == '"1"' and body["version"] == 1 and body["timezone"] == "America/New_York"
    # a second device still holding version 0 loses, and is told the current state
    async with client.patch(url, json={"set": [{"channel": "email", "enabled": False}]},
                            headers={"If-Match": '"0"'}) as r:
        body = await r.json()
        assert r.status == 409 and body["current_version"] == 1 and len(body["current"]["preferences"]) == 2
    async with client.patch(url, json={"remove": [{"channel": "email", "category": "marketing"}]},
                            headers={"If-Match": '"1"'}) as r:
        assert r.status == 200 and (await r.json())["preferences"] == [
            {"category": "job_alerts", "frequency": "daily"}]
    async with client.get(f"{url}/changes?since=0") as r:
        feed = await r.json()
    assert [c["version"] for c in feed["changes"]] == [1, 2] and feed["next"] == 2
    assert [c["type"] for c in feed["changes"]] == ["put", "patch"]
    for _ in range(50):
        if len(events) == 2:
            break
        await asyncio.sleep(0.05)
    await sub.unsubscribe()
    assert [e["version"] for e in events] == [1, 2]
    async with client.get(f"{url}/effective") as r:
        eff = {(e["channel"], e["category"]): e for e in (await r.json())["effective"]}
    assert eff[("email", "job_alerts")]["frequency"] == "daily"
    assert eff[("email", "job_alerts")]["why"]["frequency"] == "category"
    assert eff[("email", "marketing")]["why"]["enabled"] == "builtin"


async def test_bad_documents_are_422_with_every_field_and_change_nothing(engine, client):
    url = f"{engine.base_url}/v1/users/p2/preferences"
    bad = {"preferences": [{"channel": "pigeon", "enabled": True},
                           {"category": "nonsense", "enabled": False},
                           {"channel": "email", "quiet_hours": [{"start": "22:00", "end": "07:00"},
                                                                {"start": "23:00", "end": "23:30"}]},
                           {"channel": "sms", "time_windows": [{"start": "17:00", "end": "09:00"}]}],
           "timezone": "Nowhere/Land"}
    async with client.put(url, json=bad) as r:
        body = await r.json()
    assert r.status == 422
    assert {e["field"] for e in body["errors"]} == {
        "preferences[0].channel", "preferences[1].category", "preferences[2].quiet_hours[1]",
        "preferences[3].time_windows[0].end", "timezone"}
    async with client.put(url, json={"preferences": [{"enabled": False}]}) as r:
        body = await r.json()
    assert r.status == 422 and "security_mandatory" in body["errors"][0]["reason"]
    async with client.put(url, json={"preferences": [{"frequency": "sometimes"}]}) as r:
        assert r.status == 422 and "frequency" in (await r.json())["errors"][0]["field"]
    async with client.get(url) as r:
        assert (await r.json())["version"] == 0
    async with client.post(f"{engine.base_url}/v1/preferences/validate", json=bad) as r:
        body = await r.json()
    assert r.status == 200 and body["valid"] is False and len(body["errors"]) == 5


async def test_changes_over_nats_and_bad_ones_dead_lettered(engine, client):
    cfg = engine.cfg.nats
    dlq = await engine.js.pull_subscribe(streams.dlq_subject(cfg), durable=f"dlq-{uuid.uuid4().hex[:6]}",
                                         stream=streams.dlq_stream(cfg))
    odd = "user with spaces.and.dots"
    await engine.js.publish(prefs_bus.set_subject(cfg.prefix, "p3"),
                            orjson.dumps({"patch": {"set": [{"channel": "email", "category": "marketing",
                                                             "enabled": False}]}}))
    await engine.js.publish(prefs_bus.set_subject(cfg.prefix, odd),
                            orjson.dumps({"put": {"preferences": [{"frequency": "weekly"}]}}))
    await engine.js.publish(prefs_bus.set_subject(cfg.prefix, "p4"), b'{"put": {"preferences": [{"channel": 7}]}}')
    await engine.js.publish(prefs_bus.set_subject(cfg.prefix, "p5"),
                            orjson.dumps({"put": {"preferences": [{"enabled": True}]}, "if_match": 9}))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with client.get(f"{engine.base_url}/v1/users/{odd}/preferences") as r:
            if (await r.json())["version"] == 1:
                break
        await asyncio.sleep(0.2)
    async with client.get(f"{engine.base_url}/v1/users/p3/preferences") as r:
        assert (await r.json())["version"] == 1
    reasons = []
    while len(reasons) < 2 and time.monotonic() < deadline:
        for m in await dlq.fetch(2, timeout=5):
            reasons.append(m.headers["Tidings-Reason"])
            await m.ack()
    await dlq.unsubscribe()
    assert any(r.startswith("invalid") and "channel" in r for r in reasons)
    assert any(r.startswith("conflict") for r in reasons)


async def test_templates_inherit_and_apply(engine, client):
    base = {"id": "jobseeker", "name": "Job seeker", "preferences": [
        {"category": "marketing", "frequency": "weekly"}, {"category": "messages", "enabled": True}]}
    child = {"id": "quiet-jobseeker", "extends": "jobseeker",
             "preferences": [{"quiet_hours": [{"start": "21:00", "end": "08:00"}]}]}
    for t in (base, child):
        async with client.post(f"{engine.base_url}/v1/preference-templates", json=t) as r:
            assert r.status == 201 and (await r.json())["version"] == 1
    async with client.post(f"{engine.base_url}/v1/preference-templates",
                           json={"id": "loop", "extends": "nope", "preferences": []}) as r:
        assert r.status == 422
    async with client.post(f"{engine.base_url}/v1/preference-templates/quiet-jobseeker/apply",
                           json={"user_ids": ["p10", "p11"]}) as r:
        assert (await r.json())["applied"] == 2
    async with client.get(f"{engine.base_url}/v1/users/p10/preferences/effective") as r:
        eff = {(e["channel"], e["category"]): e for e in (await r.json())["effective"]}
    assert eff[("email", "marketing")]["frequency"] == "weekly"
    assert eff[("email", "marketing")]["why"]["frequency"] == "template:jobseeker"
    assert eff[("email", "marketing")]["why"]["quiet_hours"] == "template:quiet-jobseeker"
    # a new version of the parent reaches followers; the user's own row still wins
    base["preferences"][0]["frequency"] = "monthly"
    async with client.post(f"{engine.base_url}/v1/preference-templates", json=base) as r:
        assert (await r.json())["version"] == 2
    async with client.patch(f"{engine.base_url}/v1/users/p11/preferences",
                            json={"set": [{"category": "marketing", "frequency": "daily"}]}) as r:
        assert r.status == 200
    for uid, expected in (("p10", "monthly"), ("p11", "daily")):
        async with client.get(f"{engine.base_url}/v1/users/{uid}/preferences/effective") as r:
            eff = {(e["channel"], e["category"]): e for e in (await r.json())["effective"]}
        assert eff[("email", "marketing")]["frequency"] == expected


async def send(engine, client, user: str, n: int, category: str = "job_alerts", **extra) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    batch = [{"id": i, "user_id": user, "category": category, "channels": ["email"],
              "content": {"subject": f"item {k} for {user}", "text": "t"}, **extra} for k, i in enumerate(ids)]
    async with client.post(f"{engine.base_url}/v1/notifications", json=batch) as r:
        assert r.status == 202, await r.text()
    return ids


async def test_quiet_hours_defer_then_release(engine, client, smtp):
    async with client.put(f"{engine.base_url}/v1/users/p20/preferences",
                          json={"preferences": [{"quiet_hours": quiet_now()}]}) as r:
        assert r.status == 200, await r.text()
    ids = await send(engine, client, "p20", 3)
    critical = await send(engine, client, "p20", 1, priority="critical")
    await wait_rows(engine.pool, ids + critical, 4)
    rows = await engine.pool.fetch("SELECT status, reason FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])",
                                   ids)
    assert {(r["status"], r["reason"]) for r in rows} == {("deferred", "quiet_hours")}
    assert await engine.pool.fetchval(
        "SELECT status FROM delivery_tracking WHERE notification_id = $1::uuid", critical[0]) == "sent"
    # the night ends (the user clears quiet hours, and the clock reaches due_at)
    async with client.put(f"{engine.base_url}/v1/users/p20/preferences", json={"preferences": []}) as r:
        assert r.status == 200
    await engine.pool.execute("UPDATE scheduled_notifications SET due_at = now() WHERE notification_id = ANY($1::uuid[])",
                              ids)
    await wait_status(engine, ids, "sent")
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM scheduled_notifications WHERE notification_id = ANY($1::uuid[]) AND status = 'done'",
        ids) == 3


async def wait_status(engine, ids, status, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = await engine.pool.fetchval("SELECT count(*) FROM delivery_tracking WHERE notification_id = "
                                       "ANY($1::uuid[]) AND status = $2", ids, status)
        if n == len(ids):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not all {status}")


async def test_a_digested_broadcast_recipient_names_both_its_broadcast_and_its_digest(engine, client):
    async with client.put(f"{engine.base_url}/v1/users/p31/preferences",
                          json={"preferences": [{"category": "messages", "frequency": "weekly"}]}) as r:
        assert r.status == 200
    async with client.post(f"{engine.base_url}/v1/broadcasts", json={
            "category": "messages", "channels": ["email"],
            "content": {"subject": "Your applications this week", "text": "t"}}) as r:
        assert r.status == 202, await r.text()
        bid = (await r.json())["id"]
    row = None
    for _ in range(150):
        row = await engine.pool.fetchrow("SELECT notification_id::text, status, digest_id::text FROM delivery_tracking "
                                         "WHERE parent_id = $1 AND user_id = 'p31'", uuid.UUID(bid))
        if row is not None:
            break
        await asyncio.sleep(0.2)
    assert row is not None and row["status"] == "digested" and row["digest_id"] is not None
    async with client.get(f"{engine.base_url}/v1/notifications/{row['notification_id']}") as r:
        (email,) = (await r.json())["channels"]
    assert (email["broadcast_id"], email["digest_id"]) == (bid, row["digest_id"])
    async with client.get(f"{engine.base_url}/v1/broadcasts/{bid}") as r:
        counts = {(c["channel"], c["status"], c["reason"]): c["count"] for c in (await r.json())["outcomes"]}
    assert counts[("email", "digested", "digest.weekly")] >= 1


async def test_digest_goes_out_once_with_every_item(engine, client, smtp):
    async with client.put(f"{engine.base_url}/v1/users/p30/preferences",
                          json={"preferences": [{"category": "job_alerts", "frequency": "daily"}]}) as r:
        assert r.status == 200
    ids = await send(engine, client, "p30", 5)
    await wait_rows(engine.pool, ids, 5)
    # a redelivered copy of the same notifications adds nothing
    async with client.post(f"{engine.base_url}/v1/notifications", json=[
            {"id": i, "user_id": "p30", "category": "job_alerts", "channels": ["email"],
             "content": {"subject": "again", "text": "t"}} for i in ids]) as r:
        assert r.status == 202
    await asyncio.sleep(1)
    rows = await engine.pool.fetch("SELECT status, reason, digest_id::text, parent_id FROM delivery_tracking "
                                   "WHERE notification_id = ANY($1::uuid[])", ids)
    assert {(r["status"], r["reason"], r["parent_id"]) for r in rows} == {("digested", "digest.daily", None)}
    (digest_id,) = {r["digest_id"] for r in rows}
    assert await engine.pool.fetchval("SELECT count(*) FROM scheduled_notifications WHERE digest_key IS NOT NULL "
                                      "AND user_id = 'p30'") == 5
    before = smtp.count
    await engine.pool.execute("UPDATE digest_buckets SET due_at = now() WHERE user_id = 'p30'")
    await wait_status(engine, [digest_id], "sent")
    await asyncio.sleep(1)  # room for a wrong second digest
    digests = [m for m in smtp.messages[before:] if "digest" in (m.subject or "")]
    assert len(digests) == 1 and "5 job alerts updates" in digests[0].subject
    assert digests[0].notification_id == digest_id and digests[0].rcpt_tos == ("p30@example.test",)
    assert await engine.pool.fetchval("SELECT count(*) FROM scheduled_notifications WHERE user_id = 'p30' "
                                      "AND status = 'done'") == 5
    assert await engine.pool.fetchval("SELECT status FROM digest_buckets WHERE user_id = 'p30'") == "sent"


async def test_bulk_import_all_or_nothing_and_export(engine, client):
    good = b"".join(orjson.dumps({"user_id": f"bulk{i}", "channel": "email", "category": "marketing",
                                  "enabled": False}) + b"\n" for i in range(2000))
    job = await run_job(engine, client, good, "ndjson")
    assert job["status"] == "succeeded" and job["result"] == {"rows": 2000, "users": 2000} and job["done"] == 2000
    async with client.get(f"{engine.base_url}/v1/users/bulk7/preferences") as r:
        body = await r.json()
    assert body["version"] == 1 and body["preferences"] == [
        {"channel": "email", "category": "marketing", "enabled": False}]
    bad = good.replace(b'"bulk5","channel":"email"', b'"bulk5","channel":"fax"') + b"not json\n"
    job = await run_job(engine, client, bad.replace(b"marketing", b"job_alerts"), "ndjson")
    assert job["status"] == "failed" and [e["field"] for e in job["errors"]] == ["line 6.channel", "line 2001"]
    assert await engine.pool.fetchval("SELECT count(*) FROM user_preferences WHERE category = 'job_alerts' "
                                      "AND user_id LIKE 'bulk%'") == 0
    csv_body = b"user_id,channel,category,frequency\ncsv1,*,job_alerts,weekly\ncsv2,email,*,daily\n"
    job = await run_job(engine, client, csv_body, "csv")
    assert job["status"] == "succeeded", job
    async with client.get(f"{engine.base_url}/v1/preferences/export?format=ndjson") as r:
        lines = [orjson.loads(x) for x in (await r.read()).splitlines()]
    assert sum(1 for x in lines if x["user_id"].startswith("bulk")) == 2000
    assert {"user_id": "csv1", "category": "job_alerts", "frequency": "weekly"} in lines
    async with client.get(f"{engine.base_url}/v1/preferences/export?format=csv") as r:
        text = (await r.read()).decode()
    assert text.splitlines()[0].startswith("user_id,channel,category") and "csv2,email,,,,,daily" in text


async def run_job(engine, client, body: bytes, fmt: str) -> dict:
    async with client.post(f"{engine.base_url}/v1/preferences/import?format={fmt}", data=body) as r:
        assert r.status == 202, await r.text()
        job_id = (await r.json())["job_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with client.get(f"{engine.base_url}/v1/jobs/{job_id}") as r:
            job = await r.json()
        if job["status"] != "running":
            return job
        await asyncio.sleep(0.1)
    raise AssertionError("job did not finish")



async def test_stored_state_matches_the_tables_and_preload_reads_it(engine, client):
    """users.state is kept by every writer (NULL after an import until read), and a
    warm start (preload) holds the same users as lazy loading does."""
    from stores.state import assemble_states, from_stored, open_state
    async with client.put(f"{engine.base_url}/v1/users/p40/preferences",
                          json={"preferences": [{"channel": "email", "frequency": "weekly"}],
                                "consent": {"sms": "granted"}}) as r:
        assert r.status == 200
    async with engine.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT state, master_id, wrapped FROM users JOIN user_keys USING (user_id) "
                                  "WHERE user_id = 'p40'")
        assert b"example" not in row["state"]  # sealed: p40's address is not in it as text
        ring = engine.ring
        assembled = (await assemble_states(conn, ring, ["p40"]))["p40"]
        assert from_stored("p40", open_state(ring, "p40", row["state"], row["master_id"], row["wrapped"])) == assembled
        # the import set them NULL; the shards' reload, which runs after the job says
        # succeeded (engine/http/bulk.py), read them back and stored them again
        deadline = time.monotonic() + 60
        while (imported_null := await conn.fetchval("SELECT count(*) FROM users WHERE user_id LIKE 'bulk%' "
                                                    "AND state IS NULL")) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    assert imported_null == 0
    shard = engine.actors.user_shards[0]
    held = await shard.preload.remote()
    assert held >= 25


async def test_a_starting_shard_reads_its_users_in_the_background_and_writes_meanwhile_win(engine):
    """engine.preload_users: a UserShard that starts (or that Ray restarts) holds
    the users it owns before anyone asks for them; a profile written while the
    warm start runs keeps what was written."""
    from actors.user_shard import UserShard
    from infra import config
    from policy import wire
    from policy.sharding import shard_of, stable_hash
    from stores.state import refresh_states
    from stores.users import suppress
    from tests import sealing
    n = engine.cfg.engine.user_shards
    ours = [f"warm{i}" for i in range(200) if shard_of(f"warm{i}", n) == 0][:3]  # users no other test has
    uid, bounced, templated = ours
    async with engine.pool.acquire() as conn:
        await conn.execute("INSERT INTO preference_templates (id, version, name, preferences) "
                           "VALUES ('warm-t', 1, 'warm', '[]') ON CONFLICT DO NOTHING")
        await conn.execute("INSERT INTO users (user_id, shard_key, template_id) VALUES ($1, $2, 'warm-t'), "
                           "($3, $4, NULL) ON CONFLICT DO NOTHING", templated, stable_hash(templated),
                           bounced, stable_hash(bounced))
        ring = await sealing.ring(conn)
        await sealing.add_address(conn, ring, bounced, "email", f"{bounced}@example.test")
        await suppress(conn, ring, "email", f"{bounced}@example.test", "bounce", None)
        await refresh_states(conn, ring, [bounced, templated])  # stored: the scan puts their users.state
    shard = UserShard(0, config.encode(engine.cfg), engine.database_url, {}, None)
    try:
        await shard._ready()  # what every call does first: the warm start begins here
        written = UserProfile(user_id=uid, addresses={"email": "written@example.test"})
        await shard.upsert_users(wire.encode([written]), "test")
        await asyncio.wait_for(shard._preloading, 30)
        owned = {f"p{i}" for i in range(50) if shard_of(f"p{i}", n) == 0}
        assert owned and owned <= set(shard.users)
        assert shard.users[uid].addresses == {"email": "written@example.test"}
        assert shard.users[bounced].suppressed == {"email": "bounce"}
        chain = shard.users[templated].templates
        assert chain and chain == shard.template_cache["warm-t"]  # its template's rules from the first read
    finally:
        await shard.close()


async def test_a_redelivered_nats_change_is_applied_once_and_unstorable_values_are_422(engine, client):
    from actors.user_prefs import PrefCommand
    from engine.prefs_bus import run_commands
    from policy.prefs import Preference
    from policy.validate import PreferencesPatch
    cmd = PrefCommand(user_id="p45", patch=PreferencesPatch(set=[Preference(channel="email", enabled=False)]),
                      source="nats", source_id="TEST:1")
    first, again = (await run_commands(engine, [cmd]))[0], (await run_commands(engine, [cmd]))[0]
    assert (first.status, first.version) == ("ok", 1) and (again.status, again.version) == ("ok", 1)
    url = f"{engine.base_url}/v1/users/p46/preferences"
    async with client.put(url, json={"preferences": [{"custom": {"note": "a\u0000b"}}]}) as r:
        assert r.status == 422 and (await r.json())["errors"][0]["field"] == "preferences[0].custom.note"
    async with client.put(url, json={"preferences": [{"enabled": True, "priority": 2 ** 40}]}) as r:
        assert r.status == 422
    async with client.get(f"{engine.base_url}/v1/users/{'x' * 200}/preferences") as r:
        assert r.status == 422 and (await r.json())["errors"][0]["field"] == "user_id"


async def test_cli_import_and_export(engine, client, tmp_path):
    import argparse

    from engine.cli import prefs as cli_prefs
    source = tmp_path / "prefs.csv"
    source.write_text("user_id,channel,category,enabled\ncli1,email,marketing,false\ncli2,*,job_alerts,false\n")
    args = argparse.Namespace(action="import", file=str(source), format=None, url=engine.base_url)
    assert await cli_prefs.cmd_prefs(engine.cfg, args) == 0
    async with client.get(f"{engine.base_url}/v1/users/cli2/preferences") as r:
        assert (await r.json())["preferences"] == [{"category": "job_alerts", "enabled": False}]
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"user_id": "cli3", "channel": "fax", "enabled": false}\n')
    args = argparse.Namespace(action="import", file=str(bad), format=None, url=engine.base_url)
    assert await cli_prefs.cmd_prefs(engine.cfg, args) == 1
    out = tmp_path / "out.ndjson"
    args = argparse.Namespace(action="export", file=str(out), format=None, url=engine.base_url)
    assert await cli_prefs.cmd_prefs(engine.cfg, args) == 0
    assert '"user_id":"cli1"' in out.read_text() and "cli3" not in out.read_text()
