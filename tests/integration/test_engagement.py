"""Engagement events against a real PostgreSQL (a throwaway schema) and NATS:
``POST /v1/notifications/{id}/events`` (its 4xx answers, idempotency, the
status it moves, the timeline of ``GET /v1/notifications/{id}``) and the
in-app inbox's read counting as "opened". The routes run in a bare aiohttp
app over the engine's handlers; tracking rows are written as the Recorder
writes them. Fallback driven by these events runs through the whole engine in
test_fallback.py."""

from __future__ import annotations

import time
import types
import uuid

import nats
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from engine import engaged, migrations
from engine.http import events as http_events, inbox as http_inbox, notifications as http_notifications
from engine.http.common import ENGINE
from infra import db
from policy.types import Content, DeliveryTask
from providers.inapp import InAppProvider
from tests.integration.helpers import drop_schema

pytestmark = pytest.mark.integration

TRACK = ("INSERT INTO delivery_tracking (notification_id, user_id, channel, category, status, reason) "
         "VALUES ($1, $2, $3, 'messages', $4, $5)")


@pytest.fixture(scope="module")
async def env(database_url, nats_url):
    schema = "test_engage_" + uuid.uuid4().hex[:12]
    prefix = "tengage" + uuid.uuid4().hex[:10]
    await migrations.migrate_url(database_url, schema)
    nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=1)
    pool = await db.create_pool(database_url, schema)
    inapp = InAppProvider("inapp", {"database_url": database_url, "schema": schema, "nats_url": nats_url,
                                    "prefix": prefix})
    await inapp.start()
    engine = types.SimpleNamespace(pool=pool, nc=nc, feed=engaged.Feed(list), cfg=types.SimpleNamespace(
        nats=types.SimpleNamespace(prefix=prefix), http=types.SimpleNamespace(max_body_bytes=1 << 20)))
    app = web.Application()
    app[ENGINE] = engine
    app.router.add_get("/v1/notifications/{id}", http_notifications.status)
    http_events.add_routes(app)
    http_inbox.add_routes(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield types.SimpleNamespace(client=client, pool=pool, inapp=inapp)
    finally:
        await client.close()
        await inapp.close()
        await nc.close()
        await pool.close()
        await drop_schema(database_url, schema)


async def sent(env, channel: str = "push", status: str = "sent", reason: str = "ok", user: str = "u1") -> str:
    nid = str(uuid.uuid4())
    await env.pool.execute(TRACK, uuid.UUID(nid), user, channel, status, reason)
    return nid


async def post(env, nid: str, body) -> tuple[int, dict]:
    kwargs = ({"data": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, (bytes, str))
              else {"json": body})
    resp = await env.client.post(f"/v1/notifications/{nid}/events", **kwargs)
    return resp.status, await resp.json()


async def channel_status(env, nid: str) -> dict:
    resp = await env.client.get(f"/v1/notifications/{nid}")
    assert resp.status == 200, await resp.text()
    return {c["channel"]: c for c in (await resp.json())["channels"]}


async def test_an_open_is_stored_once_and_shown(env):
    nid = await sent(env)
    status, first = await post(env, nid, {"channel": "push", "type": "opened", "at": time.time() - 5})
    assert status == 201 and first["duplicate"] is False and first["channel"] == "push"
    status, again = await post(env, nid, {"channel": "push", "type": "opened"})
    assert status == 200 and again["duplicate"] is True
    assert again["at"] == pytest.approx(first["at"])  # the first report's time stays
    status, click = await post(env, nid, {"channel": "push", "type": "clicked"})
    assert status == 201 and click["at"] >= first["at"]
    assert await env.pool.fetchval("SELECT count(*) FROM engagement_events WHERE notification_id = $1",
                                   uuid.UUID(nid)) == 2
    push = (await channel_status(env, nid))["push"]
    assert (push["status"], push["reason"]) == ("delivered", "opened")  # opening implies delivered
    assert [(e["event"], e["source"]) for e in push["timeline"]] == [("opened", "api"), ("clicked", "api")]
    assert push["timeline"][0]["at"] == pytest.approx(first["at"])


async def test_an_open_is_never_dated_before_the_notification_was_accepted(env):
    nid = await sent(env)
    accepted = time.time() - 60
    await env.pool.execute("UPDATE delivery_tracking SET accepted_at = to_timestamp($2) WHERE notification_id = $1",
                           uuid.UUID(nid), accepted)
    status, body = await post(env, nid, {"channel": "push", "type": "opened", "at": 0})
    assert status == 201 and body["at"] == pytest.approx(accepted, abs=1e-3)
    push = (await channel_status(env, nid))["push"]
    assert push["timeline"][0]["at"] == pytest.approx(accepted, abs=1e-3)


async def test_an_open_never_moves_a_status_back(env):
    delivered = await sent(env, "email", "delivered", "delivered")
    complained = await sent(env, "email", "complained", "spamreport")
    for nid in (delivered, complained):
        status, _ = await post(env, nid, {"channel": "email", "type": "opened"})
        assert status == 201
    assert (await channel_status(env, delivered))["email"]["reason"] == "delivered"
    assert (await channel_status(env, complained))["email"]["status"] == "complained"


@pytest.mark.parametrize("nid, body, status, field", [
    ("not-a-uuid", {"channel": "push", "type": "opened"}, 400, "id"),
    (None, b"{not json", 400, "$"),
    (None, b"", 400, "$"),
    (None, {"channel": "push", "type": "read"}, 422, "$.type"),
    (None, {"channel": "pager", "type": "opened"}, 422, "$.channel"),
    (None, {"channel": "push"}, 422, "$.type"),
    (None, {"channel": "push", "type": "opened", "url": "/x"}, 422, "$.url"),
    (None, {"channel": "push", "type": "opened", "at": "yesterday"}, 422, "$.at"),
    (None, {"channel": "push", "type": "opened", "at": time.time() + 3600}, 422, "$.at"),
    (str(uuid.uuid4()), {"channel": "push", "type": "opened"}, 404, "id"),
    (None, {"channel": "sms", "type": "opened"}, 404, "$.channel"),
])
async def test_bad_reports_are_answered(env, nid, body, status, field):
    nid = nid or await sent(env)
    got, answer = await post(env, nid, body)
    assert (got, [e["field"] for e in answer["errors"]]) == (status, [field]), answer
    assert await env.pool.fetchval("SELECT count(*) FROM engagement_events WHERE notification_id::text = $1",
                                   nid) == 0


@pytest.mark.parametrize("state", ["suppressed", "deferred", "failed", "rejected"])
async def test_a_channel_not_sent_cannot_be_opened(env, state):
    nid = await sent(env, "push", state, "pref.category_off")
    status, answer = await post(env, nid, {"channel": "push", "type": "opened"})
    assert status == 409 and answer["errors"][0]["field"] == "$.channel" and state in answer["errors"][0]["reason"]
    assert (await channel_status(env, nid))["push"]["status"] == state


async def test_reading_in_the_inbox_is_opening(env):
    user = "reader-" + uuid.uuid4().hex[:8]
    nids = [str(uuid.uuid4()) for _ in range(3)]
    seqs = []
    for nid in nids:
        receipt = await env.inapp.send(DeliveryTask(nid, user, "in_app", "messages", "", Content(subject="Hi", text="x")))
        seqs.append(int(receipt.message_id))
    for nid in nids[:2]:  # the third one's tracking row is not recorded yet (the Recorder batches)
        await env.pool.execute(TRACK, uuid.UUID(nid), user, "in_app", "sent", "ok")
    resp = await env.client.post(f"/v1/users/{user}/inbox/seen", json={"seqs": [seqs[0]]})
    assert (await resp.json())["seen"] == 1
    assert await env.pool.fetchval("SELECT count(*) FROM engagement_events WHERE user_id = $1", user) == 0
    resp = await env.client.post(f"/v1/users/{user}/inbox/read", json={"seqs": [seqs[0], seqs[2]]})
    assert await resp.json() == {"read": 2, "unread": 1, "unseen": 1}
    rows = await env.pool.fetch("SELECT notification_id::text, channel, type, source FROM engagement_events "
                                "WHERE user_id = $1", user)
    assert sorted(tuple(r) for r in rows) == sorted([(nids[0], "in_app", "opened", "inbox"),
                                                     (nids[2], "in_app", "opened", "inbox")])
    first = (await channel_status(env, nids[0]))["in_app"]
    assert (first["status"], first["reason"]) == ("delivered", "opened")
    assert [(e["event"], e["source"]) for e in first["timeline"]] == [("opened", "inbox")]
    assert (await channel_status(env, nids[1]))["in_app"]["status"] == "sent"  # not read
    status, answer = await post(env, nids[0], {"channel": "in_app", "type": "opened"})
    assert status == 200 and answer["duplicate"] is True  # the client's report after the inbox's
    resp = await env.client.post(f"/v1/users/{user}/inbox/read", json={"all": True})
    assert (await resp.json())["read"] == 1
    assert await env.pool.fetchval("SELECT count(*) FROM engagement_events WHERE user_id = $1", user) == 3
