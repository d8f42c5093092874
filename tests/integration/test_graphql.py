"""GraphQL at /graphql against a live engine (real NATS, PostgreSQL, Ray,
Redis): queries and mutations over HTTP POST, subscriptions through aiohttp's
WebSocket client speaking graphql-transport-ws (connection_init,
connection_ack, subscribe, next, complete). The answers are the REST routes'
(the same functions run), and so are the refusals: no credentials, a key
without the scope, another user's token. Limits refuse a document before it
runs."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from engine import auth
from engine.http.graphql import schema as graphql_schema
from policy.types import UserProfile
from tests.integration.helpers import engine_config, serving

pytestmark = pytest.mark.integration

PROTOCOL = "graphql-transport-ws"
WAIT_S = 60  # a subscription's next event, on a slow shared machine


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, redis_url, ray_address, smtp, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        channels=("email", "in_app"), redis_url=redis_url)
    people = [UserProfile(user_id="alice", addresses={"email": "alice@example.test"}),
              UserProfile(user_id="bob", addresses={"email": "bob@example.test"})]
    async with serving(cfg, database_url, people) as eng:
        async with eng.pool.acquire() as conn:
            _, eng.limited = await auth.create_key(conn, "limited", ["analytics:read"])
        eng.alice = (await eng.auth.mint("alice", 600))[0]
        eng.admin = eng.headers["Authorization"][7:]
        yield eng


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def gql(engine, query: str, variables: dict | None = None, token: str | None = "admin") -> dict:
    """POST one GraphQL request; its result (asserted 200)."""
    token = engine.admin if token == "admin" else token
    async with aiohttp.ClientSession(headers=bearer(token)) as s, \
            s.post(f"{engine.base_url}/graphql", json={"query": query, "variables": variables or {}}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def codes(result: dict) -> list[int]:
    return [e.get("extensions", {}).get("code") for e in result.get("errors") or []]


async def test_queries_answer_what_the_rest_routes_answer(engine):
    result = await gql(engine, """query($u: String!) {
        user(id: $u) { userId addresses timezone preferencesVersion }
        preferences(userId: $u) { userId version preferences { channel category enabled } consent }
        effectivePreferences(userId: $u) { version effective { channel category enabled frequency why { field level } } }
        template(id: "nothing-here") { id }
        notification(id: "5f0c8e8e-4b7e-4c1a-9d55-2b1f7a3c9e10") { id }
        channelAnalytics(bucket: "hour") { from to bucket rows { channel counts { sent } } }
    }""", {"u": "alice"})
    assert "errors" not in result, result
    data = result["data"]
    async with aiohttp.ClientSession(headers=engine.headers) as s:
        async with s.get(f"{engine.base_url}/v1/users/alice") as r:
            user = await r.json()
        async with s.get(f"{engine.base_url}/v1/users/alice/preferences/effective") as r:
            effective = await r.json()
    assert data["user"]["addresses"] == user["addresses"] == {"email": "alice@example.test"}
    assert data["user"]["preferencesVersion"] == user["preferences_version"]
    rest = {(e["channel"], e["category"]): e for e in effective["effective"]}
    assert len(data["effectivePreferences"]["effective"]) == len(rest) > 0
    for row in data["effectivePreferences"]["effective"]:
        twin = rest[(row["channel"], row["category"])]
        assert row["enabled"] == twin["enabled"] and row["frequency"] == twin["frequency"]
        assert {w["field"]: w["level"] for w in row["why"]} == twin["why"]
    assert data["template"] is None and data["notification"] is None
    assert data["channelAnalytics"]["bucket"] == "hour"


async def test_a_bad_argument_is_the_error_rest_answers(engine):
    result = await gql(engine, '{ channelAnalytics(from: "yesterday") { from } }')
    assert codes(result) == [400] and result["errors"][0]["extensions"]["errors"][0]["field"] == "from"
    result = await gql(engine, '{ notification(id: "not-a-uuid") { id } }')
    assert codes(result) == [400]


async def test_refusals_are_the_rest_routes_refusals(engine):
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{engine.base_url}/graphql", json={"query": "{ __typename }"}) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        async with s.post(f"{engine.base_url}/graphql", json={"query": "{ __typename }"},
                          headers=bearer("tdk_not_a_key")) as r:
            assert r.status == 401
    # a key with analytics:read only: analytics yes, users no
    result = await gql(engine, '{ channelAnalytics { to } user(id: "alice") { userId } }', token=engine.limited)
    assert result["data"]["channelAnalytics"]["to"] > 0
    assert codes(result) == [403] and result["errors"][0]["path"] == ["user"]
    assert "users:read" in result["errors"][0]["extensions"]["errors"][0]["reason"]
    # an end-user token: its own preferences only, and nothing a key alone may read
    mine = await gql(engine, '{ preferences(userId: "alice") { userId } }', token=engine.alice)
    assert mine["data"]["preferences"]["userId"] == "alice"
    for query in ('{ preferences(userId: "bob") { userId } }', '{ user(id: "alice") { userId } }',
                  '{ channelAnalytics { to } }',
                  'mutation { send(notification: {user_id: "alice", category: "x", channels: ["email"], '
                  'content: {text: "hi"}}) { id } }'):
        result = await gql(engine, query, token=engine.alice)
        assert codes(result) == [403], (query, result)
        assert result["data"] is None or all(v is None for v in result["data"].values())


async def test_limits_refuse_a_document_before_it_runs(engine):
    deep = "{ user(id: \"alice\") { addresses { a { b { c { d { e { f } } } } } } } }"
    result = await gql(engine, deep)
    assert result["data"] is None
    assert any("exceeds maximum operation depth" in e["message"] for e in result["errors"]), result
    costly = "{ " + " ".join(f"a{i}: channelAnalytics {{ rows {{ counts {{ sent delivered bounced failed }} "
                             f"rates {{ openRate }} }} }}" for i in range(13)) + " }"
    result = await gql(engine, costly)
    assert result["data"] is None and any("more than the limit of 1000" in e["message"] for e in result["errors"])
    many = "{ " + " ".join(f"a{i}: __typename" for i in range(20)) + " }"
    result = await gql(engine, many)
    assert result["data"] is None and result["errors"]


async def test_a_preference_mutation_is_seen_by_the_next_query(engine):
    change = """mutation($u: String!, $p: JSON!, $v: Int) {
        updatePreferences(userId: $u, patch: $p, ifMatch: $v) { version preferences { channel category enabled } } }"""
    before = (await gql(engine, '{ preferences(userId: "alice") { version } }'))["data"]["preferences"]["version"]
    patch = {"set": [{"channel": "email", "category": "marketing", "enabled": False}]}
    result = await gql(engine, change, {"u": "alice", "p": patch, "v": before}, token=engine.alice)
    assert "errors" not in result, result
    assert result["data"]["updatePreferences"]["version"] == before + 1
    effective = await gql(engine, '{ effectivePreferences(userId: "alice") { effective { channel category enabled '
                                  'why { field level } } } }')
    row = next(r for r in effective["data"]["effectivePreferences"]["effective"]
               if (r["channel"], r["category"]) == ("email", "marketing"))
    assert row["enabled"] is False and {"field": "enabled", "level": "category"} in row["why"]
    # the same If-Match again is stale now: 409, nothing changed
    stale = await gql(engine, change, {"u": "alice", "p": patch, "v": before})
    assert codes(stale) == [409]
    # a violation names the field under the argument, as REST names it in the body
    bad = await gql(engine, change, {"u": "alice", "p": {"set": [{"channel": "email", "frequency": "hourly-ish"}]}})
    assert codes(bad) == [422] and bad["errors"][0]["extensions"]["errors"][0]["field"].startswith("patch.set[0]")
    consent = await gql(engine, 'mutation { setConsent(userId: "alice", key: "email:marketing", status: GRANTED) '
                                '{ consent } }', token=engine.alice)
    assert consent["data"]["setConsent"]["consent"].get("email:marketing") == "granted", consent
    async with engine.pool.acquire() as conn:
        who = await conn.fetchval("SELECT performed_by FROM preference_audit_log WHERE user_id = 'alice' "
                                  "ORDER BY id DESC LIMIT 1")
    assert who == "user:alice"


async def connected(session: aiohttp.ClientSession, engine, payload: dict | None):
    ws = await session.ws_connect(f"{engine.base_url}/graphql", protocols=(PROTOCOL,))
    assert ws.protocol == PROTOCOL
    await ws.send_json({"type": "connection_init", **({"payload": payload} if payload is not None else {})})
    return ws


async def events(ws, op: str, until_complete: bool = True, count: int | None = None) -> list[dict]:
    """The ``next`` payloads of operation ``op`` until its ``complete`` (or ``count`` of them)."""
    out = []
    while True:
        msg = await asyncio.wait_for(ws.receive_json(), WAIT_S)
        if msg.get("id") != op:
            continue
        if msg["type"] == "next":
            out.append(msg["payload"])
            if count is not None and len(out) >= count:
                return out
        elif msg["type"] in ("complete", "error"):
            out.append(msg)
            return out


async def test_a_send_is_followed_to_its_sent_status_over_a_websocket(engine, monkeypatch):
    # no poll within the test: only the notification's status events on NATS can move it on
    monkeypatch.setattr(graphql_schema, "POLL_S", 3600.0)
    nid = str(uuid.uuid4())
    async with aiohttp.ClientSession() as s:
        ws = await connected(s, engine, {"authorization": f"Bearer {engine.admin}"})
        assert (await ws.receive_json())["type"] == "connection_ack"
        await ws.send_json({"id": "1", "type": "subscribe", "payload": {
            "query": "subscription($id: ID!) { notificationStatus(id: $id) { id channels { channel status reason "
                     "timeline } } }", "variables": {"id": nid}}})
        await asyncio.sleep(0.5)  # subscribed before the notification exists: it waits for its events
        sent = await gql(engine, 'mutation($n: JSON!) { send(notification: $n) { id duplicate } }', {"n": {
            "id": nid, "user_id": "bob", "category": "orders", "channels": ["email"],
            "content": {"subject": "Shipped", "text": "It arrives Friday."}}})
        assert "errors" not in sent, sent
        got = await events(ws, "1")
        await ws.close()
    assert got[-1] == {"id": "1", "type": "complete"}, got
    last = got[-2]["data"]["notificationStatus"]
    assert last["id"] == nid and [(c["channel"], c["status"]) for c in last["channels"]] == [("email", "sent")]
    assert last["channels"][0]["timeline"]
    statuses = [tuple(c["status"] for c in e["data"]["notificationStatus"]["channels"]) for e in got[:-1]]
    assert len(statuses) == len(set(statuses))  # one event per change


async def test_the_inbox_subscription_feeds_the_users_messages(engine):
    async with aiohttp.ClientSession() as s:
        ws = await connected(s, engine, {"authorization": f"Bearer {engine.alice}"})
        assert (await ws.receive_json())["type"] == "connection_ack"
        await ws.send_json({"id": "in", "type": "subscribe", "payload": {
            "query": "subscription { inbox(userId: \"alice\") { type next message { seq title body data } } }"}})
        (synced,) = await events(ws, "in", count=1)
        assert synced["data"]["inbox"]["type"] == "synced"
        async with aiohttp.ClientSession(headers=engine.headers) as api, \
                api.post(f"{engine.base_url}/v1/notifications", json={
                    "id": str(uuid.uuid4()), "user_id": "alice", "category": "messages", "channels": ["in_app"],
                    "content": {"subject": "Hello", "text": "A new message", "data": {"thread": 7}}}) as r:
            assert r.status == 202, await r.text()
        (message,) = await events(ws, "in", count=1)
        await ws.send_json({"id": "in", "type": "complete"})
        await ws.close()
    item = message["data"]["inbox"]
    assert item["type"] == "message"
    assert item["message"]["title"] == "Hello" and item["message"]["data"] == {"thread": 7}


async def test_websocket_refusals(engine):
    async with aiohttp.ClientSession() as s:
        for payload in (None, {}, {"authorization": "Bearer tdk_not_a_key"}, {"authorization": engine.admin}):
            ws = await connected(s, engine, payload)
            msg = await asyncio.wait_for(ws.receive(), WAIT_S)
            assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 4403, (payload, msg)
        # subscribing before connection_init: 4401, as the protocol says
        ws = await s.ws_connect(f"{engine.base_url}/graphql", protocols=(PROTOCOL,))
        await ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": "{ __typename }"}})
        msg = await asyncio.wait_for(ws.receive(), WAIT_S)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 4401
        # an end-user token: not another user's inbox, not a notification's status (keys only)
        ws = await connected(s, engine, {"authorization": f"Bearer {engine.alice}"})
        assert (await ws.receive_json())["type"] == "connection_ack"
        await ws.send_json({"id": "b", "type": "subscribe", "payload": {
            "query": "subscription { inbox(userId: \"bob\") { type } }"}})
        await ws.send_json({"id": "n", "type": "subscribe", "payload": {
            "query": f"subscription {{ notificationStatus(id: \"{uuid.uuid4()}\") {{ id }} }}"}})
        for op in ("b", "n"):
            (refused, *_) = await events(ws, op)
            errors = refused.get("errors") or refused.get("payload")
            assert errors[0]["extensions"]["code"] == 403, refused
        await ws.close()


async def test_a_websocket_counts_its_connection_and_each_operation_against_the_rate_limit(engine):
    async with engine.pool.acquire() as conn:
        _, key = await auth.create_key(conn, "ws-limited", ["analytics:read"])
    saved = dict(engine.limiter.rates)
    engine.limiter.rates["key"] = (0.001, 2.0)  # two at once, then one per 1000 s (every key, for this test)
    try:
        async with aiohttp.ClientSession() as s:
            ws = await connected(s, engine, {"authorization": f"Bearer {key}"})  # the first
            assert (await ws.receive_json())["type"] == "connection_ack"
            query = {"query": "{ channelAnalytics { to } }"}
            await ws.send_json({"id": "1", "type": "subscribe", "payload": query})  # the second
            first = await events(ws, "1")
            assert first[0]["data"]["channelAnalytics"]["to"] > 0 and first[-1]["type"] == "complete"
            await ws.send_json({"id": "2", "type": "subscribe", "payload": query})  # one too many
            (refused,) = await events(ws, "2")
            assert refused["type"] == "error" and refused["payload"][0]["extensions"]["code"] == 429
            await ws.close()
            ws = await connected(s, engine, {"authorization": f"Bearer {key}"})
            msg = await asyncio.wait_for(ws.receive(), WAIT_S)
            assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 4429
    finally:
        engine.limiter.rates.update(saved)


async def test_what_is_not_a_graphql_request_is_answered_as_rest_answers(engine):
    base = f"{engine.base_url}/graphql"
    async with aiohttp.ClientSession(headers=engine.headers) as s:
        async with s.get(base) as r:
            assert r.status == 400 and (await r.json())["error"] == "not a WebSocket"
        async with s.post(base, data=b'{"query": "{ __typename }"}', headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415
        for body, want in ((b"{}", 422), (b'{"query": 1}', 422), (b"[]", 422), (b"nonsense", 400)):
            async with s.post(base, data=body, headers={"Content-Type": "application/json"}) as r:
                assert r.status == want, (body, r.status, await r.text())
                assert "errors" in await r.json()
        async with s.post(base, json={"query": "{ nope }"}) as r:
            result = await r.json()
            assert r.status == 200 and result["errors"] and "Traceback" not in str(result)
