"""End to end through a running engine: NATS and HTTP in, real SMTP and webhook
servers on loopback out, tracking rows in PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest

from infra import streams
from policy.types import UserProfile, derive_id
from sandbox import SmtpSink, WebhookSink
from tests.integration.helpers import drop_schema, engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

USERS = 200


@pytest.fixture(scope="module")
async def sinks():
    smtp = SmtpSink(port=0, keep_messages=True)
    smtp.start()
    hook = WebhookSink("test-secret", port=0, keep_bodies=True)
    await hook.start()
    yield smtp, hook
    smtp.stop()
    await hook.stop()


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, sinks, tmp_path_factory):
    smtp, hook = sinks
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")),
                      smtp_port=smtp.port, webhook_url=hook.url)
    # Every 10th user has marketing off on email; every 25th has no email address.
    people = [UserProfile(user_id=f"u{i}", addresses={} if i % 25 == 0 else {"email": f"u{i}@example.test"},
                          opt_outs=["email:marketing"] if i % 10 == 0 else [])
              for i in range(USERS)]
    async with serving(cfg, database_url, people) as eng:
        yield eng


def note(i: int, category: str = "job_alerts", **extra) -> dict:
    return {"user_id": f"u{i % USERS}", "category": category, "channels": ["email", "webhook"],
            "content": {"subject": f"subject {i}", "text": f"body {i}"}, **extra}


async def test_end_to_end_nats_and_http(engine, sinks, client):
    smtp, hook = sinks
    before_mail, before_hooks = smtp.count, hook.received
    cfg = engine.cfg.nats
    # 1,000 straight onto JetStream, as a producer would.
    nats_ids = []
    for i in range(1000):
        nid = str(uuid.uuid4())
        nats_ids.append(nid)
        body = note(i, "marketing" if i % 2 else "job_alerts", id=nid)
        await engine.js.publish(streams.notify_subject(cfg, body["category"]), msgspec.json.encode(body))
    # 1,000 through HTTP, in batches.
    http_ids = []
    for start in range(0, 1000, 250):
        batch = [note(i, "marketing" if i % 2 else "job_alerts") for i in range(start, start + 250)]
        async with client.post(f"{engine.base_url}/v1/notifications", json=batch) as r:
            assert r.status == 202, await r.text()
            http_ids += [n["id"] for n in (await r.json())["notifications"]]
    ids = nats_ids + http_ids
    assert len(set(ids)) == 2000
    assert await wait_rows(engine.pool, ids, 4000) == 4000

    rows = await engine.pool.fetch(
        "SELECT notification_id::text AS id, user_id, channel, category, status, reason "
        "FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])", ids)
    by_key = {(r["id"], r["channel"]): r for r in rows}
    assert len(by_key) == 4000  # one terminal row per (notification, channel)
    for r in rows:
        n = int(r["user_id"][1:])
        if r["channel"] == "webhook":
            assert (r["status"], r["reason"]) == ("sent", "ok")
        elif n % 25 == 0:
            assert (r["status"], r["reason"]) == ("suppressed", "address.missing_email")
        elif n % 10 == 0 and r["category"] == "marketing":
            assert (r["status"], r["reason"]) == ("suppressed", "pref.category_off")
        else:
            assert (r["status"], r["reason"]) == ("sent", "ok"), dict(r)

    sent_email = {r["id"]: r for r in rows if r["channel"] == "email" and r["status"] == "sent"}
    mails = {m.notification_id: m for m in smtp.messages[before_mail:]}
    assert set(mails) == set(sent_email)
    for nid, mail in mails.items():
        assert mail.rcpt_tos == (f"{sent_email[nid]['user_id']}@example.test",)
        assert mail.subject.startswith("subject ")
        assert mail.has_text
    # every webhook once, every signature valid
    assert hook.received - before_hooks == 2000
    assert hook.duplicates == 0 and hook.bad_signatures == 0


async def test_status_endpoint(engine, client):
    async with client.post(f"{engine.base_url}/v1/notifications", json=note(3)) as r:
        assert r.status == 202
        nid = (await r.json())["id"]
    assert await wait_rows(engine.pool, [nid], 2) == 2
    async with client.get(f"{engine.base_url}/v1/notifications/{nid}") as r:
        assert r.status == 200
        body = await r.json()
    channels = {c["channel"]: c for c in body["channels"]}
    assert channels["email"]["status"] == "sent" and channels["email"]["attempts"] == 1
    assert channels["email"]["timeline"][0]["provider"] == "smtp-local"
    assert channels["email"]["timeline"][0]["ok"] is True
    async with client.get(f"{engine.base_url}/v1/notifications/{uuid.uuid4()}") as r:
        assert r.status == 404
    async with client.get(f"{engine.base_url}/v1/notifications/not-a-uuid") as r:
        assert r.status == 400
        assert (await r.json())["errors"][0]["field"] == "id"


async def test_idempotency_key_yields_one_delivery(engine, sinks, client):
    _, hook = sinks
    key = f"key-{uuid.uuid4()}"
    body = note(7, idempotency_key=key)
    body["channels"] = ["webhook"]
    answers = []
    for _ in range(2):
        async with client.post(f"{engine.base_url}/v1/notifications", json=body) as r:
            assert r.status == 202
            answers.append(await r.json())
    key_id = engine.headers["Authorization"].split("_")[1]  # tdk_<id>_<secret>: the caller's key
    assert answers[0]["id"] == answers[1]["id"] == derive_id(f"key:{key_id}:{key}")  # scoped to the caller
    assert [a["duplicate"] for a in answers] == [False, True]
    # Past JetStream's dedupe window (a different Nats-Msg-Id), the same notification
    # (its id, as the front door resolved it) is recorded once.
    await wait_rows(engine.pool, [answers[0]["id"]], 1)
    received_before = hook.received
    await engine.js.publish(streams.notify_subject(engine.cfg.nats, "job_alerts"),
                            msgspec.json.encode({**body, "id": answers[0]["id"]}),
                            headers={"Nats-Msg-Id": str(uuid.uuid4())})
    marker = note(8)
    marker["channels"] = ["webhook"]
    async with client.post(f"{engine.base_url}/v1/notifications", json=marker) as r:
        marker_id = (await r.json())["id"]
    await wait_rows(engine.pool, [marker_id], 1)
    await asyncio.sleep(0.5)
    assert hook.received - received_before == 1  # only the marker
    n = await engine.pool.fetchval("SELECT count(*) FROM delivery_tracking WHERE notification_id = $1",
                                   uuid.UUID(answers[0]["id"]))
    assert n == 1


@pytest.mark.parametrize("payload, status, field", [
    (b"{not json", 400, "$"),
    (b"", 400, "$"),
    (b'{"category": "job_alerts", "channels": ["email"]}', 422, "$.user_id"),
    (b'{"user_id": "u1", "category": "job_alerts", "channels": ["fax"]}', 422, "$.channels[0]"),
    (b'{"user_id": "u1", "category": "job_alerts", "channels": ["sms"], "content": {"text": "x"}}', 422,
     "$.channels[0]"),
    (b'{"user_id": "u1", "category": "Job Alerts!", "channels": ["email"]}', 422, "$.category"),
    (b'{"user_id": "u1", "category": "job_alerts", "channels": ["email"]}', 422, "$.content"),
    (b'{"user_id": "u1", "category": "job_alerts", "channels": ["email"], "content": {"text": "no subject"}}',
     422, "$.content"),
    (b'{"user_id": "u1", "category": "job_alerts", "channels": [], "content": {"text": "x"}}', 422, "$.channels"),
    (b'{"user_id": "u1", "category": "job_alerts", "channels": ["webhook"], "content": {"text": "x"}, "colour": 1}',
     422, "$.colour"),
    (b'[]', 422, "$"),
    (b'{"user_id": "a\\u0000b", "category": "job_alerts", "channels": ["webhook"], "content": {"text": "x"}}',
     422, "$.user_id"),
    (b'{"user_id": "u1", "category": "jobs..daily", "channels": ["webhook"], "content": {"text": "x"}}', 422,
     "$.category"),
    (b'[{"user_id": "u1", "category": "job_alerts", "channels": ["webhook"], "content": {"text": "x"}}, {"user_id": 5}]',
     422, "$[1].user_id"),
])
async def test_bad_http_input_is_answered_with_field_and_reason(engine, client, payload, status, field):
    async with client.post(f"{engine.base_url}/v1/notifications", data=payload,
                           headers={"Content-Type": "application/json"}) as r:
        assert r.status == status, await r.text()
        body = await r.json()
    assert field in [e["field"] for e in body["errors"]]  # every violation is listed, this one among them
    assert all(e["reason"] for e in body["errors"])


@pytest.mark.parametrize("body, field", [
    ({"channel": "email", "address": "a@b.test", "reason": "hard-bounce"}, "$.reason"),
    ({"channel": "fax", "address": "a@b.test"}, "$.channel"),
    ({"channel": "email", "address": ""}, "$.address"),
])
async def test_bad_suppression_is_422(engine, client, body, field):
    async with client.post(f"{engine.base_url}/v1/suppressions", json=body) as r:
        assert r.status == 422, await r.text()
        assert (await r.json())["errors"][0]["field"] == field


async def test_oversize_body_is_413(engine, client):
    big = b'{"user_id": "u1", "pad": "' + b"x" * (engine.cfg.http.max_body_bytes + 10) + b'"}'
    async with client.post(f"{engine.base_url}/v1/notifications", data=big) as r:
        assert r.status == 413
        assert (await r.json())["errors"][0]["field"] == "$"


async def test_a_notification_nats_cannot_carry_is_413_and_nothing_is_published(engine, client):
    limit = engine.nc.max_payload
    assert engine.cfg.http.max_body_bytes >= limit  # the defaults: the body limit alone lets it through
    text = "x" * (limit - 300)  # the body fits; the message (id, defaults, headers added) does not
    small = {"user_id": "u1", "category": "job_alerts", "channels": ["email"],
             "content": {"subject": "s", "text": "fits"}}
    before = (await engine.js.stream_info(engine.cfg.nats.stream)).state.messages
    async with client.post(f"{engine.base_url}/v1/notifications", json=[
            small, {**small, "content": {"subject": "s", "text": text}}]) as r:
        assert r.status == 413, await r.text()
        body = await r.json()
        assert body["error"] == "notification too large" and [e["field"] for e in body["errors"]] == ["$[1]"]
    assert (await engine.js.stream_info(engine.cfg.nats.stream)).state.messages == before


async def test_bad_nats_payload_goes_to_dlq_with_a_rejected_row(engine, sinks, client):
    cfg = engine.cfg.nats
    dlq = await engine.js.pull_subscribe(streams.dlq_subject(cfg), stream=streams.dlq_stream(cfg))
    ack = await engine.js.publish(streams.notify_subject(cfg, "job_alerts"), b'{"user_id": 42}')
    rejected_id = derive_id(f"{cfg.stream}:{ack.seq}")
    assert await wait_rows(engine.pool, [rejected_id], 1) == 1
    row = await engine.pool.fetchrow("SELECT channel, status, reason, errors FROM delivery_tracking "
                                     "WHERE notification_id = $1", uuid.UUID(rejected_id))
    assert (row["channel"], row["status"], row["reason"]) == ("*", "rejected", "payload.invalid")
    assert "user_id" in row["errors"]
    msgs = await dlq.fetch(10, timeout=5)
    mine = [m for m in msgs if m.headers.get("Tidings-Stream-Seq") == str(ack.seq)]
    assert len(mine) == 1
    assert mine[0].data == b'{"user_id": 42}'
    assert mine[0].headers["Tidings-Reason"] == "payload.invalid"
    assert "$.user_id" in mine[0].headers["Tidings-Error"]
    # The engine carries on: a good message after the bad one is delivered.
    async with client.post(f"{engine.base_url}/v1/notifications", json=note(5)) as r:
        good = (await r.json())["id"]
    assert await wait_rows(engine.pool, [good], 2) == 2


async def test_users_api_and_suppression(engine, client):
    url = engine.base_url
    async with client.put(f"{url}/v1/users/alice", json={"addresses": {"email": "alice@example.test"},
                                                         "timezone": "Europe/Berlin"}) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["addresses"] == {"email": "alice@example.test"}
    async with client.put(f"{url}/v1/users/bob", json={"timezone": "Mars/Olympus"}) as r:
        assert r.status == 422
        assert (await r.json())["errors"][0]["field"] == "$.timezone"
    async with client.post(f"{url}/v1/suppressions",
                           json={"channel": "email", "address": "alice@example.test", "reason": "bounce"}) as r:
        assert r.status == 201
        assert (await r.json())["users"] == ["alice"]
    body = {"user_id": "alice", "category": "job_alerts", "channels": ["email"],
            "content": {"subject": "s", "text": "t"}}
    async with client.post(f"{url}/v1/notifications", json=body) as r:
        nid = (await r.json())["id"]
    await wait_rows(engine.pool, [nid], 1)
    async with client.get(f"{url}/v1/notifications/{nid}") as r:
        ch = (await r.json())["channels"][0]
    assert (ch["status"], ch["reason"]) == ("suppressed", "suppression.bounce")
    chain = await engine.pool.fetch("SELECT prev_hash, hash FROM preference_audit_log WHERE user_id = 'alice' ORDER BY id")
    assert len(chain) == 1 and chain[0]["prev_hash"] is None


async def test_health_ready_metrics(engine, client):
    async with client.get(f"{engine.base_url}/healthz") as r:
        assert r.status == 200
    async with client.get(f"{engine.base_url}/readyz") as r:
        body = await r.json()
        assert r.status == 200, body
        assert body["checks"] == {"nats": True, "postgres": True, "ray": True, "ingestors": True, "scheduler": True,
                                  "events": True, "deployment": True}
    async with client.get(f"{engine.base_url}/metrics") as r:
        text = await r.text()
    assert "tidings_notifications_accepted_total" in text
    assert "tidings_http_requests_total" in text


async def test_actors_run_on_uvloop(engine):
    infos = await asyncio.gather(*(s.info.remote() for s in engine.actors.user_shards))
    assert {i["loop"] for i in infos} == {"uvloop"}


async def test_the_hot_calls_go_over_actor_links(engine):
    """After the tests above delivered through the engine, every batch to a
    UserShard, every delivery and every record went over a link (actors/link.py),
    none through Ray (the peers were linked at warm-up)."""
    ingestors = await asyncio.gather(*(i.info.remote() for i in engine.actors.ingestors))
    shards = await asyncio.gather(*(s.info.remote() for s in engine.actors.user_shards))
    for info in [*ingestors, *shards]:
        assert info["calls"]["through_ray"] == 0, info
    assert sum(i["calls"]["linked"] for i in ingestors) > 0
    assert sum(s["calls"]["linked"] for s in shards) > 0


async def test_cli_send_and_status(engine):
    """What a user types: `tidings send …` then `tidings status <id>`."""
    import sys

    async def tidings(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.cli", *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**__import__("os").environ, "COLUMNS": "200", "TIDINGS_API_KEY": engine.headers["Authorization"][7:]})
        out, _ = await proc.communicate()
        return proc.returncode, out.decode()

    code, out = await tidings("send", "--url", engine.base_url, "--user", "u11", "--category", "job_alerts",
                              "--channel", "email", "--channel", "webhook", "--subject", "From the CLI",
                              "--text", "hello")
    assert code == 0, out
    nid = out.split()[0]
    assert str(uuid.UUID(nid)) == nid
    assert await wait_rows(engine.pool, [nid], 2) == 2
    code, out = await tidings("status", nid, "--url", engine.base_url, "--json")
    assert code == 0, out
    import json
    body = json.loads(out)
    assert {(c["channel"], c["status"]) for c in body["channels"]} == {("email", "sent"), ("webhook", "sent")}
    code, out = await tidings("send", "--url", engine.base_url, "--user", "u11", "--category", "job_alerts",
                              "--channel", "fax", "--text", "x")
    assert code == 1 and "$[0].channels[0]" in out


async def test_broadcast_reaches_every_user_once_with_their_preferences(engine, sinks, client):
    smtp, hook = sinks
    n_users = await engine.pool.fetchval("SELECT count(*) FROM users")
    body = {"category": "marketing", "channels": ["email", "webhook"], "idempotency_key": f"bc-{uuid.uuid4()}",
            "content": {"subject": "Job fair next week", "text": "Come along."}}
    hooks_before = hook.received
    async with client.post(f"{engine.base_url}/v1/broadcasts", json=body) as r:
        assert r.status == 202, await r.text()
        bid = (await r.json())["id"]
    expected = n_users * 2

    async def recorded() -> int:
        return await engine.pool.fetchval("SELECT count(*) FROM delivery_tracking WHERE parent_id = $1",
                                          uuid.UUID(bid))
    for _ in range(300):
        if await recorded() >= expected:
            break
        await asyncio.sleep(0.2)
    assert await recorded() == expected
    rows = await engine.pool.fetch("SELECT user_id, channel, status, reason FROM delivery_tracking "
                                   "WHERE parent_id = $1", uuid.UUID(bid))
    for r in rows:
        if r["channel"] == "email" and r["user_id"].startswith("u") and r["user_id"][1:].isdigit():
            n = int(r["user_id"][1:])
            if n % 10 == 0:  # opt-outs are checked before addresses
                assert (r["status"], r["reason"]) == ("suppressed", "pref.category_off")
            elif n % 25 == 0:
                assert r["reason"] == "address.missing_email"
            else:
                assert r["status"] == "sent"
    assert hook.received - hooks_before == n_users
    async with client.get(f"{engine.base_url}/v1/broadcasts/{bid}") as r:
        summary = await r.json()
    assert summary["recorded"] == expected

    # The same broadcast again past the dedupe window: every recipient is already recorded.
    await engine.js.publish(streams.broadcast_subject(engine.cfg.nats, "marketing"),
                            msgspec.json.encode({**body, "id": bid}), headers={"Nats-Msg-Id": str(uuid.uuid4())})
    for _ in range(50):
        info = await asyncio.gather(*(i.info.remote() for i in engine.actors.ingestors))
        if sum(i["broadcasts"] for i in info) >= 2:
            break
        await asyncio.sleep(0.1)
    assert sum(i["broadcasts"] for i in info) >= 2
    assert await recorded() == expected
    assert hook.received - hooks_before == n_users


async def test_bad_broadcast_is_422(engine, client):
    async with client.post(f"{engine.base_url}/v1/broadcasts",
                           json={"category": "marketing", "channels": ["email"], "user_id": "x"}) as r:
        assert r.status == 422
        assert (await r.json())["errors"][0]["field"] == "$.user_id"


async def test_cli_send_via_nats_and_migrate(engine, database_url, tmp_path):
    """`tidings send --via nats` publishes straight to JetStream; `tidings migrate`
    brings a new schema up to date and is a no-op the second time."""
    import os
    import sys

    env = {**os.environ, "COLUMNS": "200", "TIDINGS_NATS_URL": engine.nats_url,
           "TIDINGS_NATS_PREFIX": engine.cfg.nats.prefix, "TIDINGS_DATABASE_URL": database_url,
           "TIDINGS_DATABASE_SCHEMA": f"m_{uuid.uuid4().hex[:8]}", "TIDINGS_ENGINE_HOME": str(tmp_path)}

    async def tidings(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "engine.cli", *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode, out.decode()

    code, out = await tidings("send", "--via", "nats", "--user", "u12", "--category", "job_alerts",
                              "--channel", "webhook", "--text", "over NATS")
    assert code == 0, out
    nid = out.split()[0]
    assert await wait_rows(engine.pool, [nid], 1) == 1
    code, out = await tidings("migrate")
    assert code == 0 and "001_core" in out and "002_broadcasts" in out, out
    code, out = await tidings("migrate")
    assert code == 0 and "up to date" in out, out
    await drop_schema(database_url, env["TIDINGS_DATABASE_SCHEMA"])


async def test_recorder_keeps_one_bad_caller_from_failing_the_others(engine):
    """Rows PostgreSQL refuses (NUL in text) fail only the caller that sent them."""
    from policy import wire
    from policy.types import Outcome

    def outcome(user: str) -> Outcome:
        return Outcome(str(uuid.uuid4()), user, "webhook", "job_alerts", "sent", "ok", 1.0, 2.0)

    good, bad = outcome("fine"), outcome("bad\x00user")
    rec = engine.actors.recorder
    results = await asyncio.gather(rec.record.remote(wire.encode([good])), rec.record.remote(wire.encode([bad])),
                                   return_exceptions=True)
    assert isinstance(results[0], float)  # committed, and when
    assert isinstance(results[1], Exception)
    assert await wait_rows(engine.pool, [good.notification_id], 1) == 1


async def test_copies_of_one_notification_in_flight_deliver_once(engine, sinks):
    """The same id published several times at once (different Nats-Msg-Ids, so
    JetStream keeps them all): one delivery, one row, every copy acked."""
    _, hook = sinks
    before = hook.received
    nid = str(uuid.uuid4())
    body = msgspec.json.encode({"id": nid, "user_id": "u21", "category": "job_alerts", "channels": ["webhook"],
                                "content": {"text": "once"}})
    subject = streams.notify_subject(engine.cfg.nats, "job_alerts")
    await asyncio.gather(*(engine.js.publish(subject, body, headers={"Nats-Msg-Id": str(uuid.uuid4())})
                           for _ in range(5)))
    assert await wait_rows(engine.pool, [nid], 1) == 1
    for _ in range(100):
        info = await engine.js.consumer_info(engine.cfg.nats.stream, engine.cfg.nats.consumer)
        if info.num_ack_pending == 0 and info.num_pending == 0:
            break
        await asyncio.sleep(0.1)
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert hook.received - before == 1
