"""Every route says who may call it, and the engine holds to it: the router is
walked and each route tried with no credentials, a revoked key, an expired token,
a key lacking the scope and another user's token (401/403 each time); a route
without a declared policy fails here. Also: end-user tokens reach their own
user's resources only, the audit log names the principal, idempotency keys are
scoped to the caller, and hostile paths, queries and content types are 4xx in
the JSON error shape, counted in /metrics."""

from __future__ import annotations

import time
import uuid

import aiohttp
import jwt
import pytest

from engine import auth
from engine.http import make_app
from engine.http.access import POLICIES, Authenticated, Ops, Public, Scoped, UserOwned
from policy.types import UserProfile
from stores import keys as key_store
from tests.integration.helpers import engine_config, serving

pytestmark = pytest.mark.integration

# Public on purpose; a new public route must be added here deliberately.
PUBLIC = {"/healthz", "/v1/t/o/{token}.gif", "/v1/t/c/{token}", "/v1/tracking/sendgrid", "/v1/tracking/mailgun",
          "/v1/tracking/twilio", "/v1/tracking/twilio/inbound",  # texts people send us (STOP, YES, HELP)
          "/v1/tracking/vonage", "/v1/tracking/vonage/inbound",
          "/v1/tracking/messagebird", "/v1/tracking/messagebird/inbound", "/v1/tracking/ses",
          "/v1/tracking/sns/inbound",
          "/u/{token}", "/p/{token}",  # one-click unsubscribe, preference center
          "/openapi.json", "/docs", "/docs/{name}"}  # the API's description and its page


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), channels=("webhook",),
                        webhook_url="http://127.0.0.1:9/hook")
    people = [UserProfile(user_id="alice", addresses={"email": "alice@example.test"}),
              UserProfile(user_id="mallory", addresses={"email": "mallory@example.test"})]
    async with serving(cfg, database_url, people) as eng:
        async with eng.pool.acquire() as conn:
            _, eng.limited = await auth.create_key(conn, "limited", ["analytics:read"])
            revoked_id, eng.revoked = await auth.create_key(conn, "gone", ["admin"])
            await key_store.revoke(conn, revoked_id)
            kid, secret, _ = (await key_store.signing_keys(conn))[0]
        now = int(time.time())
        eng.expired = jwt.encode({"sub": "alice", "aud": auth.AUDIENCE, "iss": auth.ISSUER, "iat": now - 600,
                                  "exp": now - 60}, secret, algorithm="HS256", headers={"kid": kid})
        eng.alice = await eng.auth.mint("alice", 600)
        eng.mallory = (await eng.auth.mint("mallory", 600))[0]
        yield eng


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def concrete(path: str) -> str:
    return (path.replace("{user_id}", "alice").replace("{id}", str(uuid.uuid4()))
            .replace("{token}", "x").replace("{topic_id}", "company-42").replace("{segment_id}", "europe").replace("{device_id}", "phone-1")
            .replace("{experiment_id}", "exp-1").replace("{suggestion_id}", "0123456789ab"))


def routes(engine) -> list[tuple[str, str, object]]:
    app = make_app(engine)
    table = app[POLICIES]
    out = []
    for r in app.router.routes():
        path = r.resource.canonical
        assert (r.method, path) in table, f"{r.method} {path} has no access policy"
        out.append((r.method, path, table[(r.method, path)]))
    return out


async def test_every_route_declares_a_policy_and_public_ones_are_the_known_few(engine):
    found = routes(engine)
    assert len(found) > 30
    public = {path for _, path, p in found if isinstance(p, Public)}
    assert public == PUBLIC
    assert {path for _, path, p in found if isinstance(p, Ops)} == {"/readyz", "/metrics"}
    # any key or token, each operation checked inside against its REST twin's policy (test_graphql.py)
    assert {path for _, path, p in found if isinstance(p, Authenticated)} == {"/graphql"}


async def test_every_protected_route_refuses_whoever_may_not_call_it(engine):
    refused = 0
    async with aiohttp.ClientSession() as s:
        for method, path, policy in routes(engine):
            if isinstance(policy, (Public, Ops)) or method == "HEAD":
                continue
            url = engine.base_url + concrete(path)
            tries = [(None, 401), (engine.revoked, 401), (engine.expired, 401), ("tdk_not_a_key", 401)]
            if isinstance(policy, Authenticated):  # any valid credentials pass; test_graphql.py checks the fields
                pass
            elif policy.scope != "analytics:read":
                tries.append((engine.limited, 403))
            if isinstance(policy, Scoped):
                tries.append((engine.mallory, 403))  # another user's token (or a token where none may go)
            for token, want in tries:
                async with s.request(method, url, headers={**bearer(token), "Content-Type": "application/json"},
                                     data=b"{}") as r:
                    body = await r.json()
                    assert r.status == want, (method, path, token and token[:12], r.status, body)
                    assert body["error"] in ("unauthorized", "forbidden")
                    if want == 401:
                        assert r.headers["WWW-Authenticate"].startswith("Bearer")
                    refused += 1
    assert refused > 150


async def test_an_end_user_token_reaches_its_own_preferences_inbox_and_nothing_else(engine):
    token, expires_at = engine.alice
    assert expires_at > time.time()
    async with aiohttp.ClientSession(headers=bearer(token)) as s:
        async with s.get(f"{engine.base_url}/v1/users/alice/preferences") as r:
            assert r.status == 200
        async with s.patch(f"{engine.base_url}/v1/users/alice/preferences",
                           json={"set": [{"channel": "email", "category": "marketing", "enabled": False}]}) as r:
            assert r.status == 200, await r.text()
        async with s.get(f"{engine.base_url}/v1/users/alice/preferences/effective") as r:
            assert r.status == 200
        async with s.get(f"{engine.base_url}/v1/users/alice/inbox") as r:
            assert r.status == 200
        for method, path in [("GET", "/v1/users/mallory/preferences"), ("GET", "/v1/users/alice"),
                             ("POST", "/v1/notifications"), ("GET", "/v1/users/mallory/inbox"),
                             ("POST", "/v1/tokens")]:
            async with s.request(method, engine.base_url + path, json={}) as r:
                assert r.status == 403, (method, path, await r.text())
    # the audit log names who changed it, whatever a header claims
    async with engine.pool.acquire() as conn:
        who = await conn.fetchval("SELECT performed_by FROM preference_audit_log WHERE user_id = 'alice' "
                                  "ORDER BY id DESC LIMIT 1")
    assert who == "user:alice"


async def test_the_audit_log_names_the_key_never_a_header(engine, client):
    async with client.patch(f"{engine.base_url}/v1/users/mallory/preferences", headers={"X-Actor": "someone-else"},
                            json={"set": [{"channel": "email", "category": "marketing", "enabled": False}]}) as r:
        assert r.status == 200, await r.text()
    async with engine.pool.acquire() as conn:
        who = await conn.fetchval("SELECT performed_by FROM preference_audit_log WHERE user_id = 'mallory' "
                                  "ORDER BY id DESC LIMIT 1")
    assert who.startswith("key:") and "bootstrap-admin" in who and "someone-else" not in who


async def test_idempotency_keys_belong_to_the_caller(engine, client):
    async with engine.pool.acquire() as conn:
        _, other = await auth.create_key(conn, "other product", ["notifications:send"])
    note = {"user_id": "alice", "category": "job_alerts", "channels": ["webhook"], "idempotency_key": "k-1",
            "content": {"text": "hi"}}
    async with client.post(f"{engine.base_url}/v1/notifications", json=note) as r:
        first = (await r.json())["id"]
    async with aiohttp.ClientSession(headers=bearer(other)) as s:
        async with s.post(f"{engine.base_url}/v1/notifications", json=note) as r:
            theirs = await r.json()
    async with client.post(f"{engine.base_url}/v1/notifications", json=note) as r:
        again = await r.json()
    assert theirs["id"] != first and not theirs["duplicate"]
    assert again == {"id": first, "duplicate": True}


async def test_hostile_paths_queries_and_content_types_are_answered_in_json(engine, client):
    base = engine.base_url
    cases = [("GET", "/v1/users/a%00b/preferences", None, 400), ("GET", "/v1/templates/x%00y", None, 400),
             ("GET", "/v1/jobs/%00", None, 400),
             ("GET", "/v1/users/alice/preferences/changes?limit=-1", None, 400),
             ("GET", "/v1/users/alice/preferences/changes?since=99999999999999999999999", None, 400),
             ("GET", "/v1/no-such-route", None, 404), ("PUT", "/v1/notifications", None, 405)]
    for method, path, body, want in cases:
        async with client.request(method, base + path, data=body) as r:
            assert r.status == want, (path, r.status, await r.text())
            assert "error" in await r.json()
    async with client.post(f"{base}/v1/notifications", data=b'{"user_id": "alice"}',
                           headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415 and (await r.json())["errors"][0]["field"] == "Content-Type"
    async with client.get(f"{base}/metrics") as r:
        text = await r.text()
    assert 'tidings_http_requests_total{route="unmatched",status="404"}' in text
    assert 'status="405"' in text and 'status="415"' in text


async def test_minted_tokens_are_capped_and_keys_need_the_scope(engine, client):
    async with client.post(f"{engine.base_url}/v1/tokens", json={"user_id": "alice", "ttl_s": 86400}) as r:
        body = await r.json()
        assert r.status == 201
    assert body["expires_at"] <= time.time() + engine.cfg.http.token_ttl_max_s + 1
    async with aiohttp.ClientSession(headers=bearer(engine.limited)) as s:
        async with s.post(f"{engine.base_url}/v1/tokens", json={"user_id": "alice"}) as r:
            assert r.status == 403


def test_authentication_off_is_refused_off_loopback():
    from engine.http.app import check_exposure
    from infra.config import ConfigError, HttpConfig
    check_exposure(HttpConfig(auth=False, host="127.0.0.1"), "127.0.0.1")
    check_exposure(HttpConfig(auth=True, host="0.0.0.0"), "0.0.0.0")
    with pytest.raises(ConfigError):
        check_exposure(HttpConfig(auth=False, host="0.0.0.0"), "0.0.0.0")


def test_user_owned_and_scoped_policies_name_known_scopes(engine):
    for _, path, policy in routes(engine):
        if isinstance(policy, (Scoped, UserOwned)):
            assert policy.scope in auth.SCOPES, (path, policy)


async def test_odd_credentials_are_401_never_500(engine):
    async with aiohttp.ClientSession() as s:
        for raw in (b"Bearer tdk_aaaaaaaaaaaa_\xff", b"Bearer eyJ\xff.a.b", b"Bearer tdk_ZZZZZZZZZZZZ_x",
                    b"Bearer " + b"x" * 5000):
            async with s.get(f"{engine.base_url}/v1/users/alice", headers={"Authorization": raw.decode("latin-1")}) as r:
                assert r.status == 401, (raw[:30], r.status)
        # a token or key in the query counts only on the inbox WebSocket, and never a key
        admin = engine.headers["Authorization"][7:]
        async with s.get(f"{engine.base_url}/v1/users/alice?access_token={admin}",
                         headers={"Upgrade": "websocket", "Connection": "Upgrade"}) as r:
            assert r.status == 401
        async with s.get(f"{engine.base_url}/v1/users/alice/inbox/ws?access_token={admin}",
                         headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
            assert r.status == 401
        ws = await s.ws_connect(f"{engine.base_url}/v1/users/alice/inbox/ws?access_token={engine.alice[0]}")
        await ws.close()
        try:
            await s.ws_connect(f"{engine.base_url}/v1/users/alice/inbox/ws?access_token={engine.alice[0]}",
                               origin="https://evil.example")
        except aiohttp.WSServerHandshakeError as e:
            assert e.status == 403
        else:
            raise AssertionError("a foreign origin opened the inbox")


async def test_idempotency_survives_a_key_rotation(engine):
    async with engine.pool.acquire() as conn:
        key_id, key = await auth.create_key(conn, "rotating", ["notifications:send"])
    note = {"user_id": "alice", "category": "job_alerts", "channels": ["webhook"], "idempotency_key": "rot-1",
            "content": {"text": "hi"}}
    async with aiohttp.ClientSession(headers=bearer(key)) as s, \
            s.post(f"{engine.base_url}/v1/notifications", json=note) as r:
        first = (await r.json())["id"]
    async with engine.pool.acquire() as conn:
        _, newer = await auth.rotate_key(conn, key_id)
    async with aiohttp.ClientSession(headers=bearer(newer)) as s, \
            s.post(f"{engine.base_url}/v1/notifications", json=note) as r:
        assert await r.json() == {"id": first, "duplicate": True}


async def test_a_control_character_in_a_template_name_is_a_422(engine):
    async with aiohttp.ClientSession(headers=bearer(engine.alice[0])) as s, \
            s.put(f"{engine.base_url}/v1/users/alice/preferences", json={"preferences": [], "template": "\u0000"}) as r:
        assert r.status == 422, await r.text()
