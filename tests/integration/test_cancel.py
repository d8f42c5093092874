"""Cancelling a notification (issue 16, item 4) through the HTTP API of a live
engine: a channel held for quiet hours or in an open digest is cancelled and
the Scheduler's release then sends nothing; a channel already sent stays sent;
cancel and release racing end every channel one way, sent or cancelled; ids
and idempotency keys the caller does not know are 404."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import msgspec
import pytest

from engine import auth, migrations
from engine.client import Client, TidingsError
from policy.types import Outcome, UserProfile
from stores import schedules
from tests.integration.helpers import drop_schema, engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

POLICY = {"categories": ["job_alerts", "messages"]}
ZONE = "Europe/Berlin"


def quiet_now() -> list[dict]:
    """A quiet window in the users' zone from an hour ago to two hours from now."""
    now = datetime.now(ZoneInfo(ZONE))
    return [{"start": (now - timedelta(hours=1)).strftime("%H:%M"), "end": (now + timedelta(hours=2)).strftime("%H:%M")}]


@pytest.fixture(scope="module")
def hook(webhook_sink):
    return webhook_sink


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, smtp, hook, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("cancel")), smtp_port=smtp.port,
                        webhook_url=hook.url, channels=("email", "webhook"),
                        overrides={"preferences": POLICY, "scheduler": {"interval_s": 0.2}})
    people = [UserProfile(user_id=f"c{i}", addresses={"email": f"c{i}@example.test"}, timezone=ZONE)
              for i in range(10)]
    async with serving(cfg, database_url, people) as eng:
        yield eng


async def prefs(engine, client, user: str, doc: dict) -> None:
    async with client.put(f"{engine.base_url}/v1/users/{user}/preferences", json=doc) as r:
        assert r.status == 200, await r.text()


async def send(engine, client, user: str, n: int, **extra) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    async with client.post(f"{engine.base_url}/v1/notifications", json=[
            {"id": i, "user_id": user, "category": "job_alerts", "channels": ["email"],
             "content": {"subject": f"item {k} for {user}", "text": "t"}, **extra} for k, i in enumerate(ids)]) as r:
        assert r.status == 202, await r.text()
    assert await wait_rows(engine.pool, ids, n) == n
    return ids


async def statuses(engine, ids) -> dict[str, tuple[str, str]]:
    return {r[0]: (r[1], r[2]) for r in await engine.pool.fetch(
        "SELECT notification_id::text, status, reason FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])",
        ids)}


async def settle(engine, ids, timeout_s: float = 60) -> dict[str, tuple[str, str]]:
    """Each one's (status, reason) once none is held any more."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await statuses(engine, ids)
        if all(s not in ("deferred", "digested") for s, _ in found.values()) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


def mailed(smtp, nid: str) -> int:
    return sum(1 for m in smtp.messages if m.notification_id == nid)


async def delete(client, url: str) -> tuple[int, dict]:
    async with client.delete(url) as r:
        return r.status, await r.json()


async def test_a_channel_held_for_quiet_hours_is_cancelled_and_never_released(engine, client, smtp):
    await prefs(engine, client, "c1", {"preferences": [{"quiet_hours": quiet_now()}]})
    nid, kept = await send(engine, client, "c1", 2)
    assert (await statuses(engine, [nid]))[nid] == ("deferred", "quiet_hours")
    events: list[bytes] = []

    async def heard(m) -> None:
        events.append(m.data)

    sub = await engine.nc.subscribe(f"{engine.cfg.nats.prefix}.events.email.cancelled", cb=heard)
    try:
        status, body = await delete(client, f"{engine.base_url}/v1/notifications/{nid}")
        assert status == 200, body
        assert body == {"id": nid, "channels": [{"channel": "email", "result": "cancelled", "status": "cancelled"}]}
        # its status event, as any other status change's
        deadline = time.monotonic() + 30
        while not any(msgspec.json.decode(e)["notification_id"] == nid for e in events):
            assert time.monotonic() < deadline, "no cancelled event"
            await asyncio.sleep(0.1)
    finally:
        await sub.unsubscribe()
    (event,) = [e for e in map(msgspec.json.decode, events) if e["notification_id"] == nid]
    assert (event["type"], event["status"], event["reason"]) == ("notification.cancelled", "cancelled", "cancelled")
    # again: the same answer, nothing changes
    status, body = await delete(client, f"{engine.base_url}/v1/notifications/{nid}")
    assert status == 200 and body["channels"][0]["result"] == "already_cancelled"
    # the night ends: the other one is released and sent, the cancelled one is not
    await prefs(engine, client, "c1", {"preferences": []})
    await engine.pool.execute("UPDATE scheduled_notifications SET due_at = now() WHERE notification_id = "
                              "ANY($1::uuid[])", [nid, kept])
    assert (await settle(engine, [kept]))[kept] == ("sent", "ok")
    await asyncio.sleep(1)  # rounds enough for a wrong release
    assert (await statuses(engine, [nid]))[nid] == ("cancelled", "cancelled")
    assert mailed(smtp, nid) == 0 and mailed(smtp, kept) == 1
    async with client.get(f"{engine.base_url}/v1/notifications/{nid}") as r:
        (email,) = (await r.json())["channels"]
    assert (email["status"], email["reason"]) == ("cancelled", "cancelled")
    async with client.get(f"{engine.base_url}/metrics") as r:
        assert 'tidings_channels_cancelled_total{channel="email"}' in await r.text()


async def test_a_sent_channel_is_not_cancellable_and_stays_sent(engine, client, smtp):
    (nid,) = await send(engine, client, "c2", 1)
    assert (await settle(engine, [nid]))[nid] == ("sent", "ok")
    status, body = await delete(client, f"{engine.base_url}/v1/notifications/{nid}")
    assert status == 409, body
    assert body["errors"] == [{"field": "channels.email", "reason": "not held: sent"}]
    assert (await statuses(engine, [nid]))[nid] == ("sent", "ok") and mailed(smtp, nid) == 1


async def test_a_digest_item_is_cancelled_and_the_digest_goes_without_it(engine, client, smtp):
    await prefs(engine, client, "c3", {"preferences": [{"category": "job_alerts", "frequency": "daily"}]})
    ids = await send(engine, client, "c3", 3)
    assert {s for s, _ in (await statuses(engine, ids)).values()} == {"digested"}
    async with Client(engine.base_url, headers=engine.headers) as tidings:
        done = await tidings.cancel(ids[0])
    assert [(c.channel, c.result) for c in done.channels] == [("email", "cancelled")]
    before = len(smtp.messages)
    await engine.pool.execute("UPDATE digest_buckets SET due_at = now() WHERE user_id = 'c3'")
    deadline = time.monotonic() + 30
    while not any("digest" in (m.subject or "") for m in smtp.messages[before:]):
        assert time.monotonic() < deadline, "no digest"
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)
    (digest,) = [m for m in smtp.messages[before:] if "digest" in (m.subject or "")]
    assert "2 job alerts updates" in digest.subject
    assert (await statuses(engine, ids))[ids[0]] == ("cancelled", "cancelled")
    # sent in the digest: final now
    status, body = await delete(client, f"{engine.base_url}/v1/notifications/{ids[1]}")
    assert status == 409 and body["errors"] == [{"field": "channels.email", "reason": "not held: digested"}]


async def test_a_waiting_fallback_check_is_cancelled_and_its_fallbacks_never_tried(engine, client, smtp):
    nid = str(uuid.uuid4())
    async with client.post(f"{engine.base_url}/v1/notifications", json={
            "id": nid, "user_id": "c8", "category": "job_alerts", "channels": ["webhook"], "fallback": ["email"],
            "fallback_after_s": 600, "content": {"subject": "s", "text": "t"}}) as r:
        assert r.status == 202, await r.text()
    assert await wait_rows(engine.pool, [nid], 1) == 1
    assert (await settle(engine, [nid]))[nid] == ("sent", "ok")
    deadline = time.monotonic() + 30
    while not await engine.pool.fetchval("SELECT count(*) FROM scheduled_notifications WHERE notification_id = $1 "
                                         "AND kind = 'fallback' AND status = 'pending'", uuid.UUID(nid)):
        assert time.monotonic() < deadline, "no fallback check held"
        await asyncio.sleep(0.1)
    status, body = await delete(client, f"{engine.base_url}/v1/notifications/{nid}")
    assert status == 200, body
    assert body["channels"] == [{"channel": "fallback", "result": "cancelled", "status": None},
                                {"channel": "webhook", "result": "final", "status": "sent"}]
    # a retried cancel answers as the first did (the check has no tracking row: its held row says so)
    status, body = await delete(client, f"{engine.base_url}/v1/notifications/{nid}")
    assert status == 200, body
    assert body["channels"] == [{"channel": "fallback", "result": "already_cancelled", "status": None},
                                {"channel": "webhook", "result": "final", "status": "sent"}]
    # its time comes: nothing is tried
    await engine.pool.execute("UPDATE scheduled_notifications SET due_at = now() WHERE notification_id = $1",
                              uuid.UUID(nid))
    await asyncio.sleep(1.5)
    assert await statuses(engine, [nid]) == {nid: ("sent", "ok")}  # no email row
    assert await engine.pool.fetchval("SELECT count(*) FROM delivery_tracking WHERE notification_id = $1",
                                      uuid.UUID(nid)) == 1
    assert mailed(smtp, nid) == 0


async def test_a_channel_a_release_holds_is_left_to_it_and_ends_sent(engine, client, smtp):
    await prefs(engine, client, "c4", {"preferences": [{"quiet_hours": quiet_now()}]})
    (nid,) = await send(engine, client, "c4", 1)
    await prefs(engine, client, "c4", {"preferences": []})
    # as the Scheduler claims it (due, leased for 30 s: the Scheduler, every 0.2 s, cannot
    # claim it again before the DELETE): a release may be sending it
    await engine.pool.execute("UPDATE scheduled_notifications SET due_at = now(), "
                              "claimed_until = now() + interval '30 seconds' WHERE notification_id = $1",
                              uuid.UUID(nid))
    status, body = await delete(client, f"{engine.base_url}/v1/notifications/{nid}")
    assert status == 409, body
    assert body["errors"] == [{"field": "channels.email", "reason": "being released by the Scheduler now; read the "
                                                                    "notification for its outcome"}]
    await engine.pool.execute("UPDATE scheduled_notifications SET claimed_until = now() - interval '1 second' "
                              "WHERE notification_id = $1", uuid.UUID(nid))  # the lease runs out
    assert (await settle(engine, [nid]))[nid] == ("sent", "ok")  # claimed again once the lease ends
    assert mailed(smtp, nid) == 1


async def test_cancel_racing_the_release_ends_each_channel_one_way(engine, client, smtp):
    await prefs(engine, client, "c5", {"preferences": [{"quiet_hours": quiet_now()}]})
    ids = await send(engine, client, "c5", 40)
    await prefs(engine, client, "c5", {"preferences": []})
    rng = random.Random(5)

    async def cancel_later(nid: str) -> tuple[int, dict]:
        await asyncio.sleep(rng.uniform(0, 0.8))
        return await delete(client, f"{engine.base_url}/v1/notifications/{nid}")

    release = engine.pool.execute("UPDATE scheduled_notifications SET due_at = now() WHERE notification_id = "
                                  "ANY($1::uuid[])", ids)
    answers = await asyncio.gather(*(cancel_later(n) for n in ids), release)
    final = await settle(engine, ids)
    await asyncio.sleep(1)  # rounds enough for a wrong release
    final = await statuses(engine, ids)
    outcomes = {"cancelled": 0, "sent": 0}
    for nid, (status, body) in zip(ids, answers[:-1], strict=True):
        assert status in (200, 409), body
        ended = final[nid][0]
        assert ended in outcomes, (nid, final[nid])
        outcomes[ended] += 1
        assert mailed(smtp, nid) == (1 if ended == "sent" else 0), (nid, ended)
        if status == 200:
            assert body["channels"] == [{"channel": "email", "result": "cancelled", "status": "cancelled"}]
            assert ended == "cancelled"
        else:
            assert ended == "sent"
    assert await engine.pool.fetchval("SELECT count(*) FROM scheduled_notifications WHERE notification_id = "
                                      "ANY($1::uuid[]) AND status = 'pending'", ids) == 0
    assert sum(outcomes.values()) == len(ids)


async def test_unknown_ids_other_callers_keys_and_bad_input(engine, client):
    status, body = await delete(client, f"{engine.base_url}/v1/notifications/{uuid.uuid4()}")
    assert status == 404 and body["errors"][0]["field"] == "id"
    await prefs(engine, client, "c6", {"preferences": [{"quiet_hours": quiet_now()}]})
    async with client.post(f"{engine.base_url}/v1/notifications", json={
            "user_id": "c6", "category": "job_alerts", "channels": ["email"], "idempotency_key": "order-1",
            "content": {"subject": "s", "text": "t"}}) as r:
        nid = (await r.json())["id"]
    assert await wait_rows(engine.pool, [nid], 1) == 1
    async with engine.pool.acquire() as conn:
        _, other = await auth.create_key(conn, "another product", ["notifications:send", "notifications:cancel"])
        _, reader = await auth.create_key(conn, "a sender", ["notifications:send", "notifications:read"])
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {other}"}) as theirs:
        # their key "order-1" is another notification: not theirs to cancel
        status, body = await delete(theirs, f"{engine.base_url}/v1/notifications?idempotency_key=order-1")
        assert status == 404 and body["errors"][0]["field"] == "idempotency_key", body
    # a notification the Ingestor rejected (its row's channel '*'): no channel named '*'
    rejected = uuid.uuid4()
    await engine.pool.execute("INSERT INTO delivery_tracking (notification_id, user_id, channel, category, status, "
                              "reason) VALUES ($1, 'c6', '*', 'job_alerts', 'rejected', 'invalid')", rejected)
    status, body = await delete(client, f"{engine.base_url}/v1/notifications/{rejected}")
    assert status == 409 and body["errors"] == [{"field": "id", "reason": "not held: rejected"}], body
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {reader}"}) as s:
        status, body = await delete(s, f"{engine.base_url}/v1/notifications/{nid}")
        assert status == 403 and "notifications:cancel" in body["errors"][0]["reason"]  # sending is not cancelling
    for query, field in (("", "idempotency_key"), ("?idempotency_key=" + "k" * 201, "idempotency_key")):
        status, body = await delete(client, f"{engine.base_url}/v1/notifications{query}")
        assert status == 400 and body["errors"][0]["field"] == field, body
    status, body = await delete(client, f"{engine.base_url}/v1/notifications/not-a-uuid")
    assert status == 400 and body["errors"][0]["field"] == "id"
    assert (await statuses(engine, [nid]))[nid][0] == "deferred"  # none of that touched it
    with pytest.raises(TidingsError) as e:
        async with Client(engine.base_url, headers=engine.headers) as tidings:
            await tidings.cancel(str(uuid.uuid4()))
    assert e.value.status == 404
    # the caller's own key names it; GraphQL's mutation answers as the route does
    status, body = await delete(client, f"{engine.base_url}/v1/notifications?idempotency_key=order-1")
    assert status == 200 and body["id"] == nid and body["channels"][0]["result"] == "cancelled"
    async with client.post(f"{engine.base_url}/graphql", json={
            "query": "mutation($id: ID!) { cancel(id: $id) { id channels { channel result status } } }",
            "variables": {"id": nid}}) as r:
        answer = await r.json()
    assert answer["data"]["cancel"] == {"id": nid, "channels": [
        {"channel": "email", "result": "already_cancelled", "status": "cancelled"}]}


async def test_cli_cancels_by_id_and_by_key(engine, client, capsys):
    import argparse
    import importlib

    cli = importlib.import_module("engine.cli.main")  # the package's ``main`` is the function
    assert cli.parser().parse_args(["cancel", "--key", "k"]).key == "k"
    await prefs(engine, client, "c7", {"preferences": [{"quiet_hours": quiet_now()}]})
    (nid,) = await send(engine, client, "c7", 1)
    async with client.post(f"{engine.base_url}/v1/notifications", json={
            "user_id": "c7", "category": "job_alerts", "channels": ["email"], "idempotency_key": "cli-key",
            "content": {"subject": "s", "text": "t"}}) as r:
        keyed = (await r.json())["id"]
    assert await wait_rows(engine.pool, [keyed], 1) == 1
    for args in (argparse.Namespace(id=nid, key=None, url=engine.base_url),
                 argparse.Namespace(id=None, key="cli-key", url=engine.base_url)):
        assert await cli.cmd_cancel(engine.cfg, args) == 0
    assert {s for s, _ in (await statuses(engine, [nid, keyed])).values()} == {"cancelled"}
    assert "cancelled" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        await cli.cmd_cancel(engine.cfg, argparse.Namespace(id=nid, key="cli-key", url=engine.base_url))


@pytest.fixture
async def own_schema(database_url):
    """A schema of its own (migrated), for the tests that claim with ``claim_due``:
    it claims every due row in its schema, so the engine's rows stay out of it."""
    schema = f"cancel_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.migrate(conn, schema)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4, server_settings={"search_path": schema})
    try:
        yield pool
    finally:
        await pool.close()
        await drop_schema(database_url, schema)


async def hold_row(pool, user: str) -> uuid.UUID:
    """A channel held until tomorrow, as a UserShard writes it (no Scheduler claims it today)."""
    nid = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(schedules.SCHEDULE, "deferred", nid, "email", user, "job_alerts", None,
                           time.time() + 86400, b"\x00")
        await conn.execute("INSERT INTO delivery_tracking (notification_id, user_id, channel, category, status, reason) "
                           "VALUES ($1, $2, 'email', 'job_alerts', 'deferred', 'quiet_hours')", nid, user)
    return nid


async def tracked(pool, nid: uuid.UUID) -> tuple[str, str]:
    r = await pool.fetchrow("SELECT status, reason FROM delivery_tracking WHERE notification_id = $1", nid)
    return r["status"], r["reason"]


def claimed_ids(dues) -> set[uuid.UUID]:
    return {uuid.UUID(d.notification_id) for d in dues if hasattr(d, "notification_id")}


async def test_a_claim_and_a_cancel_at_once_are_decided_by_the_row_lock(own_schema):
    """The two interleavings, held open on purpose: a claim not yet committed makes
    the cancel wait and then leave the row to the release; a cancel not yet
    committed makes the claim skip the row, which is done once it commits."""
    pool = own_schema
    tomorrow = time.time() + 2 * 86400
    claimed = await hold_row(pool, "c9")
    async with pool.acquire() as claimer, pool.acquire() as canceller:
        async with claimer.transaction():
            dues = await schedules.claim_due(claimer, 1000, 60, at=tomorrow)
            assert claimed_ids(dues) == {claimed}
            waiting = asyncio.ensure_future(schedules.cancel(canceller, claimed))
            await asyncio.sleep(0.5)
            assert not waiting.done()  # it waits for the claim's row lock
        found = await waiting
    assert (found.cancelled, found.releasing, found.statuses) == (set(), {"email"}, {"email": "deferred"})

    cancelled = await hold_row(pool, "c9")
    async with pool.acquire() as claimer, pool.acquire() as canceller:
        async with canceller.transaction():  # cancel_once's own transaction is a savepoint in this one
            found = await schedules.cancel_once(canceller, cancelled)
            assert found.cancelled == {"email"}
            dues = await schedules.claim_due(claimer, 1000, 60, at=tomorrow)
            assert cancelled not in claimed_ids(dues)
        dues = await schedules.claim_due(claimer, 1000, 60, at=tomorrow)  # committed: done, never claimed
        assert cancelled not in claimed_ids(dues)
    assert await tracked(pool, cancelled) == ("cancelled", "cancelled")


def sent(nid: uuid.UUID, user: str) -> Outcome:
    return Outcome(str(nid), user, "email", "job_alerts", "sent", "ok", accepted_at=time.time(),
                   completed_at=time.time(), provider="smtp")


async def test_a_claim_whose_lease_ran_out_is_not_forgotten_when_a_later_claim_holds_the_row_again(own_schema):
    """R1 claims and is slow past its lease; R2 claims the row again and holds it
    again (rate-limited: claimed_until cleared). R1 may still be sending: the
    cancel leaves the row to it, and R1's sent outcome is what the row records."""
    pool = own_schema
    nid = await hold_row(pool, "c9")
    t = time.time() + 2 * 86400
    async with pool.acquire() as conn:
        assert claimed_ids(await schedules.claim_due(conn, 1000, 120, at=t)) == {nid}  # R1
        assert claimed_ids(await schedules.claim_due(conn, 1000, 120, at=t + 121)) == {nid}  # R2: R1's lease ran out
        await conn.execute(schedules.SCHEDULE, "deferred", nid, "email", "c9", "job_alerts", None,
                           t + 300, b"\x00")  # R2 rate-limited: held again
        found = await schedules.cancel(conn, nid)
        assert (found.cancelled, found.releasing) == (set(), {"email"})
        await schedules.finish(conn, [sent(nid, "c9")], [(str(nid), "email")], [])  # R1's send completes
    assert await tracked(pool, nid) == ("sent", "ok")

    # each claim settled (R1 held it again too): nothing can be sending, the cancel takes it
    again = await hold_row(pool, "c9")
    async with pool.acquire() as conn:
        assert claimed_ids(await schedules.claim_due(conn, 1000, 120, at=t)) == {again}
        await conn.execute(schedules.SCHEDULE, "deferred", again, "email", "c9", "job_alerts", None,
                           t + 300, b"\x00")
        found = await schedules.cancel(conn, again)
        assert found.cancelled == {"email"}
    assert await tracked(pool, again) == ("cancelled", "cancelled")


async def test_a_sent_outcome_replaces_cancelled(own_schema):
    """Whatever window is left (docs/design.md): a release's sent outcome after a
    cancel records the truth, with its status event."""
    pool = own_schema
    nid = await hold_row(pool, "c9")
    async with pool.acquire() as conn:
        assert (await schedules.cancel(conn, nid)).cancelled == {"email"}
        await conn.execute("DELETE FROM status_events")
        await schedules.finish(conn, [sent(nid, "c9")], [(str(nid), "email")], [])
        assert await tracked(pool, nid) == ("sent", "ok")
        assert [r[0] for r in await conn.fetch("SELECT status FROM status_events")] == ["sent"]
        failed = Outcome(str(nid), "c9", "email", "job_alerts", "failed", "smtp_down", accepted_at=time.time(),
                         completed_at=time.time())
        await schedules.finish(conn, [failed], [], [])  # only a sent outcome: 'sent' stays
    assert await tracked(pool, nid) == ("sent", "ok")
