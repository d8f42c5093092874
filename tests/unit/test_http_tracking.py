"""engine.http.tracking: signed webhooks from SendGrid, Mailgun and Twilio against
a real PostgreSQL schema (migrated, dropped at the end), with a minimal engine
(config, pool, UserShards that record their reload calls)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
import uuid
from types import SimpleNamespace

import msgspec
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from engine import engaged as engagement_feed, migrations
from engine.http import notifications as http_notifications
from engine.http.common import ENGINE
from engine.http.tracking import MAILGUN_TOKENS, add_routes, next_status
from infra import db
from infra.config import ChannelConfig, Config, ProviderConfig
from policy.sharding import shard_of
from tests import sealing

SG_PRIVATE = ec.generate_private_key(ec.SECP256R1())
SG_PUBLIC = base64.b64encode(SG_PRIVATE.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
MG_KEY = "mailgun-webhook-signing-key-for-tests"
TW_TOKEN = "twilio-auth-token-for-tests-0123456789"
TW_CALLBACK = "https://hooks.tidings.test/v1/tracking/twilio"
SHARDS = 4


def config(*, sendgrid: bool = True, mailgun: bool = True, twilio: bool = True) -> Config:
    email = []
    if sendgrid:
        email.append(ProviderConfig(name="sg", type="sendgrid", settings={
            "api_key": "SG.x", "sender": "a@tidings.test", "event_public_key": SG_PUBLIC}))
    if mailgun:
        email.append(ProviderConfig(name="mg", type="mailgun", priority=2, settings={
            "api_key": "key-x", "domain": "mg.tidings.test", "sender": "a@tidings.test",
            "webhook_signing_key": MG_KEY}))
    channels = {"email": ChannelConfig(providers=email)}
    if twilio:
        tw = {"account_sid": "AC" + "0" * 32, "auth_token": TW_TOKEN, "status_callback": TW_CALLBACK}
        channels["sms"] = ChannelConfig(providers=[ProviderConfig(name="tw-sms", type="twilio", settings=tw)])
        channels["voice"] = ChannelConfig(providers=[ProviderConfig(name="tw-voice", type="twilio_voice",
                                                                    settings={**tw, "from": "+15550000000"})])
    return Config(channels=channels)


class FakeShard:
    def __init__(self, index: int, calls: list):
        async def remote(user_ids):
            calls.append((index, list(user_ids)))
            return len(user_ids)

        self.reload = SimpleNamespace(remote=remote)


@pytest.fixture(scope="module")
async def pool(database_url):
    schema = f"t_tracking_{uuid.uuid4().hex[:10]}"
    await migrations.migrate_url(database_url, schema)
    p = await db.create_pool(database_url, schema)
    yield p
    await p.close()
    import asyncpg
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


class Harness:
    def __init__(self, pool, cfg: Config, secrets: dict | None = None):
        self.calls: list = []
        self.engine = SimpleNamespace(cfg=cfg, pool=pool, secrets=secrets or {}, redis=None, actors=SimpleNamespace(
            user_shards=[FakeShard(i, self.calls) for i in range(SHARDS)]), feed=engagement_feed.Feed(list))
        app = web.Application()
        app[ENGINE] = self.engine
        add_routes(app)
        app.router.add_get("/v1/notifications/{id}", http_notifications.status)
        self.app = app
        self.client = TestClient(TestServer(app))

    async def __aenter__(self):
        self.engine.ring = await sealing.ring(self.engine.pool)
        await self.client.start_server()
        return self

    async def __aexit__(self, *exc):
        await self.client.close()

    async def post(self, path: str, body: bytes, headers: dict | None = None):
        resp = await self.client.post(path, data=body, headers=headers or {})
        return resp.status, await resp.json()

    # -- signing, as each provider does it --------------------------------------

    async def sendgrid(self, events: list[dict], *, timestamp: str | None = None, private=SG_PRIVATE,
                       tamper: bytes | None = None):
        body = msgspec.json.encode(events)
        ts = timestamp or str(int(time.time()))
        sig = base64.b64encode(private.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
        return await self.post("/v1/tracking/sendgrid", tamper or body, {
            "X-Twilio-Email-Event-Webhook-Signature": sig, "X-Twilio-Email-Event-Webhook-Timestamp": ts,
            "Content-Type": "application/json"})

    async def mailgun(self, event_data: dict, *, token: str | None = None, timestamp: float | None = None,
                      key: str = MG_KEY):
        ts = str(int(time.time() if timestamp is None else timestamp))
        token = token or uuid.uuid4().hex
        sig = hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
        body = msgspec.json.encode({"signature": {"timestamp": ts, "token": token, "signature": sig},
                                    "event-data": event_data})
        return await self.post("/v1/tracking/mailgun", body, {"Content-Type": "application/json"})

    async def twilio(self, params: list[tuple[str, str]], *, url: str | None = None, token: str = TW_TOKEN,
                     headers: dict | None = None):
        url = url or str(self.client.make_url("/v1/tracking/twilio"))
        data = url + "".join(k + v for k, v in sorted(params))
        sig = base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()
        return await self.post("/v1/tracking/twilio", urllib.parse.urlencode(params).encode(), {
            "X-Twilio-Signature": sig, "Content-Type": "application/x-www-form-urlencoded", **(headers or {})})


@pytest.fixture
async def h(pool):
    async with Harness(pool, config()) as harness:
        yield harness


async def add_user(pool, user_id: str, channel: str, address: str) -> None:
    async with pool.acquire() as conn:
        await sealing.add_address(conn, await sealing.ring(conn), user_id, channel, address)


async def add_row(pool, user_id: str, channel: str, *, provider: str, message_id: str | None,
                  status: str = "sent") -> str:
    nid = str(uuid.uuid4())
    attempt = [{"provider": provider, "ok": True, "at": time.time(), "duration_ms": 5.0, "error": None,
                "error_kind": None}]
    await pool.execute(
        "INSERT INTO delivery_tracking (notification_id, user_id, channel, category, status, reason, provider, "
        "provider_message_id, attempts, timeline) VALUES ($1, $2, $3, 'digest', $4, 'ok', $5, $6, 1, $7::jsonb)",
        uuid.UUID(nid), user_id, channel, status, provider, message_id, orjson.dumps(attempt).decode())
    return nid


async def row(pool, nid: str, channel: str) -> dict:
    r = await pool.fetchrow("SELECT status, reason, timeline FROM delivery_tracking "
                            "WHERE notification_id = $1 AND channel = $2", uuid.UUID(nid), channel)
    return {"status": r["status"], "reason": r["reason"], "timeline": orjson.loads(r["timeline"])}


async def suppression(pool, channel: str, address: str):
    return await sealing.suppression(pool, await sealing.ring(pool), channel, address)


async def engaged(pool, nid: str) -> list[tuple]:
    rows = await pool.fetch("SELECT channel, type, extract(epoch FROM at)::float8 AS at, source "
                            "FROM engagement_events WHERE notification_id = $1 ORDER BY id", uuid.UUID(nid))
    return [tuple(r) for r in rows]


async def shown(h, nid: str, channel: str) -> dict:
    """The channel as ``GET /v1/notifications/{id}`` shows it."""
    resp = await h.client.get(f"/v1/notifications/{nid}")
    assert resp.status == 200, await resp.text()
    return {c["channel"]: c for c in (await resp.json())["channels"]}[channel]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def expected_reloads(*users: str) -> list:
    by: dict = {}
    for u in sorted(users):
        by.setdefault(shard_of(u, SHARDS), []).append(u)
    return sorted(by.items())


# -- SendGrid -----------------------------------------------------------------

async def test_sendgrid_delivered_and_opened_go_on_the_timeline(h, pool):
    user = uid("sg")
    await add_user(pool, user, "email", f"{user}@example.com")
    nid = await add_row(pool, user, "email", provider="sg", message_id="sgmsg1")
    now = int(time.time())
    status, body = await h.sendgrid([
        {"email": f"{user}@example.com", "event": "processed", "timestamp": now, "sg_message_id": "sgmsg1.f.1",
         "notification_id": nid},
        {"email": f"{user}@example.com", "event": "delivered", "timestamp": now + 1, "response": "250 OK",
         "sg_message_id": "sgmsg1.f.1", "notification_id": nid},
        {"email": f"{user}@example.com", "event": "open", "timestamp": now + 2, "sg_message_id": "sgmsg1.f.1",
         "notification_id": nid},
    ])
    assert status == 200 and body == {"events": 3, "updated": 3, "suppressed": 0, "users": []}
    r = await row(pool, nid, "email")
    assert r["status"] == "delivered" and r["reason"] == "delivered"
    assert r["timeline"][0]["ok"] is True  # the delivery attempt stays first
    assert r["timeline"][1:] == [
        {"event": "processed", "at": float(now), "provider": "sendgrid", "detail": ""},
        {"event": "delivered", "at": float(now + 1), "provider": "sendgrid", "detail": "250 OK"},
        {"event": "open", "at": float(now + 2), "provider": "sendgrid", "detail": ""},
    ]
    assert h.calls == []


async def test_sendgrid_opens_and_clicks_are_engagement_events(h, pool):
    user = uid("sgo")
    nid = await add_row(pool, user, "email", provider="sg", message_id="sgopen1")
    now = int(time.time())
    events = [
        {"email": f"{user}@example.com", "event": "open", "timestamp": now - 60, "sg_message_id": "sgopen1.f.1",
         "notification_id": nid, "useragent": "Mozilla"},
        {"email": f"{user}@example.com", "event": "click", "timestamp": now - 50, "url": "https://t.test/a",
         "sg_message_id": "sgopen1.f.1", "notification_id": nid},
        {"email": f"{user}@example.com", "event": "open", "timestamp": now - 40, "sg_message_id": "sgopen1.f.1",
         "notification_id": nid},  # opened again: the first is kept
    ]
    status, body = await h.sendgrid(events)
    assert status == 200 and body == {"events": 3, "updated": 3, "suppressed": 0, "users": []}
    expected = [("email", "opened", float(now - 60), "sendgrid"), ("email", "clicked", float(now - 50), "sendgrid")]
    assert await engaged(pool, nid) == expected
    email = await shown(h, nid, "email")
    assert (email["status"], email["reason"]) == ("delivered", "opened")  # opening implies delivered
    assert [e["event"] for e in email["timeline"][1:4]] == ["open", "click", "open"]  # the provider's own
    assert email["timeline"][4:] == [{"event": "opened", "at": float(now - 60), "source": "sendgrid"},
                                     {"event": "clicked", "at": float(now - 50), "source": "sendgrid"}]
    # SendGrid delivers the batch again: nothing more is stored
    assert (await h.sendgrid(events))[0] == 200
    assert await engaged(pool, nid) == expected
    assert (await row(pool, nid, "email"))["reason"] == "opened"


async def test_an_open_on_a_delivery_that_failed_is_timeline_only(h, pool):
    user = uid("sgf")
    failed = await add_row(pool, user, "email", provider="sg", message_id=None, status="failed")
    sent = await add_row(pool, user, "email", provider="sg", message_id=None)
    far = time.time() + 86_400 * 365
    status, body = await h.sendgrid([
        {"email": "f@example.com", "event": "open", "timestamp": 1, "notification_id": failed},
        {"email": "f@example.com", "event": "click", "timestamp": far, "notification_id": sent}])
    assert status == 200 and body["updated"] == 2
    assert await engaged(pool, failed) == []  # a client's report would be refused (409)
    r = await row(pool, failed, "email")
    assert r["status"] == "failed" and r["timeline"][-1]["event"] == "open"
    [(_, kind, at, _)] = await engaged(pool, sent)
    assert kind == "clicked" and at == pytest.approx(time.time(), abs=60)  # a time in the future is taken as now


async def test_sendgrid_hard_bounce_suppresses_and_reloads_every_owner(h, pool):
    user, other = uid("sgb"), uid("sgb2")
    await add_user(pool, user, "email", f"Bob.{user}@Example.com")  # stored with capitals
    await add_user(pool, other, "email", f"Bob.{user}@Example.com")  # a second user with the address
    nid = await add_row(pool, user, "email", provider="sg", message_id="sgmsg2")
    reported = f"bob.{user}@example.com"  # SendGrid reports it lower-cased
    status, body = await h.sendgrid([{"email": reported, "event": "bounce", "type": "bounce", "status": "5.1.1",
                                      "reason": "550 unknown user", "timestamp": int(time.time()),
                                      "sg_message_id": "sgmsg2.f.1", "notification_id": nid}])
    assert status == 200 and body["updated"] == 1 and body["suppressed"] == 1
    assert body["users"] == sorted([user, other])
    r = await row(pool, nid, "email")
    assert (r["status"], r["reason"]) == ("bounced", "bounce")
    assert r["timeline"][-1]["detail"] == "bounce 5.1.1 550 unknown user"
    assert await suppression(pool, "email", f"Bob.{user}@Example.com") == ("bounce", "sendgrid")
    assert sorted(h.calls) == expected_reloads(user, other)
    # later events never move it back, and a complaint does not replace the bounce
    status, body = await h.sendgrid([
        {"email": reported, "event": "delivered", "timestamp": int(time.time()), "notification_id": nid},
        {"email": reported, "event": "spamreport", "timestamp": int(time.time()), "notification_id": nid}])
    assert status == 200 and body["updated"] == 2 and body["suppressed"] == 0  # already suppressed
    r = await row(pool, nid, "email")
    assert (r["status"], r["reason"]) == ("bounced", "bounce") and len(r["timeline"]) == 4


async def test_sendgrid_spam_report_is_a_complaint(h, pool):
    user = uid("sgc")
    await add_user(pool, user, "email", f"{user}@example.com")
    nid = await add_row(pool, user, "email", provider="sg", message_id="sgmsg3")
    await h.sendgrid([{"email": f"{user}@example.com", "event": "delivered", "timestamp": 1,
                       "notification_id": nid}])
    status, body = await h.sendgrid([{"email": f"{user}@example.com", "event": "spamreport",
                                      "timestamp": int(time.time()), "notification_id": nid}])
    assert status == 200 and body["users"] == [user]
    assert (await row(pool, nid, "email"))["status"] == "complained"  # needs 007_tracking_status
    assert await suppression(pool, "email", f"{user}@example.com") == ("complaint", "sendgrid")
    assert h.calls == expected_reloads(user)


async def test_sendgrid_soft_bounce_fails_without_suppressing(h, pool):
    user = uid("sgs")
    await add_user(pool, user, "email", f"{user}@example.com")
    nid = await add_row(pool, user, "email", provider="sg", message_id="sgmsg4")
    status, body = await h.sendgrid([{"email": f"{user}@example.com", "event": "bounce", "type": "blocked",
                                      "timestamp": 1, "notification_id": nid}])
    assert status == 200 and body["suppressed"] == 0 and h.calls == []
    assert (await row(pool, nid, "email"))["status"] == "failed"
    assert await suppression(pool, "email", f"{user}@example.com") is None


async def test_sendgrid_falls_back_to_the_message_id_unless_a_batch_shares_it(h, pool):
    user = uid("sgm")
    nid = await add_row(pool, user, "email", provider="sg", message_id="only-one")
    a = await add_row(pool, user, "email", provider="sg", message_id="batch-id")
    b = await add_row(pool, user, "email", provider="sg", message_id="batch-id")
    status, body = await h.sendgrid([
        {"email": "x@example.com", "event": "delivered", "timestamp": 1, "sg_message_id": "only-one.filter.1",
         "notification_id": "not-a-uuid"},
        {"email": "y@example.com", "event": "delivered", "timestamp": 1, "sg_message_id": "batch-id.filter.2"},
        {"email": "z@example.com", "event": "delivered", "timestamp": 1,
         "notification_id": str(uuid.uuid4())},  # unknown: nothing to update
    ])
    assert status == 200 and body == {"events": 3, "updated": 1, "suppressed": 0, "users": []}
    assert (await row(pool, nid, "email"))["status"] == "delivered"
    assert [(await row(pool, x, "email"))["status"] for x in (a, b)] == ["sent", "sent"]


async def test_sendgrid_bad_signatures_are_401_and_change_nothing(h, pool):
    user = uid("sg401")
    nid = await add_row(pool, user, "email", provider="sg", message_id="m401")
    events = [{"email": "a@example.com", "event": "delivered", "timestamp": 1, "notification_id": nid}]
    other = ec.generate_private_key(ec.SECP256R1())
    status, body = await h.sendgrid(events, private=other)
    assert status == 401 and body["error"] == "bad signature"
    tampered = msgspec.json.encode([{**events[0], "event": "bounce"}])
    assert (await h.sendgrid(events, tamper=tampered))[0] == 401
    status, body = await h.post("/v1/tracking/sendgrid", msgspec.json.encode(events))
    assert status == 401 and "missing" in body["errors"][0]["reason"]
    assert (await row(pool, nid, "email"))["status"] == "sent"


async def test_sendgrid_signed_garbage_is_400(h):
    private = SG_PRIVATE
    for body in (b"not json", b'{"event": "delivered"}', b"[1, 2]"):
        ts = str(int(time.time()))
        sig = base64.b64encode(private.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
        status, answer = await h.post("/v1/tracking/sendgrid", body, {
            "X-Twilio-Email-Event-Webhook-Signature": sig, "X-Twilio-Email-Event-Webhook-Timestamp": ts})
        assert status == 400 and answer["error"] == "malformed payload"


async def test_sendgrid_max_age_setting(pool):
    cfg = config()
    cfg.channels["email"].providers[0].settings["event_max_age_s"] = 600
    async with Harness(pool, cfg) as h:
        status, body = await h.sendgrid([{"event": "open", "timestamp": 1}], timestamp=str(int(time.time()) - 3600))
        assert status == 401 and "from now" in body["errors"][0]["reason"]
        assert (await h.sendgrid([{"event": "open", "timestamp": 1}]))[0] == 200


async def test_unconfigured_providers_are_404(pool):
    async with Harness(pool, config(sendgrid=False, mailgun=False, twilio=False)) as h:
        for path in ("sendgrid", "mailgun", "twilio"):
            status, body = await h.post(f"/v1/tracking/{path}", b"[]")
            assert status == 404 and f"no {path} provider" in body["errors"][0]["reason"]
    cfg = config()
    del cfg.channels["email"].providers[1].settings["webhook_signing_key"]
    async with Harness(pool, cfg) as h:
        status, body = await h.post("/v1/tracking/mailgun", b"{}")
        assert status == 404 and "webhook_signing_key" in body["errors"][0]["reason"]


async def test_an_unusable_configured_key_is_503(pool):
    cfg = config()
    cfg.channels["email"].providers[0].settings["event_public_key"] = "not a key"
    async with Harness(pool, cfg) as h:
        status, body = await h.sendgrid([{"event": "open"}])
        assert status == 503 and body["error"] == "tracking misconfigured"


# -- Mailgun ------------------------------------------------------------------

def mg_event(event: str, *, recipient: str, nid: str | None = None, message_id: str | None = None, **extra):
    data = {"event": event, "timestamp": time.time(), "recipient": recipient, **extra}
    if nid:
        data["user-variables"] = {"notification_id": nid}
    if message_id:
        data["message"] = {"headers": {"message-id": message_id}}
    return data


async def test_mailgun_delivered_then_permanent_bounce(h, pool):
    user = uid("mg")
    address = f"{user}@example.com"
    await add_user(pool, user, "email", address)
    nid = await add_row(pool, user, "email", provider="mg", message_id="20250101.x@mg.tidings.test")
    status, body = await h.mailgun(mg_event("delivered", recipient=address, nid=nid))
    assert status == 200 and body["updated"] == 1
    assert (await row(pool, nid, "email"))["status"] == "delivered"
    # no notification id: found by the message id
    status, body = await h.mailgun(mg_event("failed", recipient=address, message_id="20250101.x@mg.tidings.test",
                                            severity="permanent", reason="bounce",
                                            **{"delivery-status": {"code": 550, "message": "no mailbox"}}))
    assert status == 200 and body == {"events": 1, "updated": 1, "suppressed": 1, "users": [user]}
    r = await row(pool, nid, "email")
    assert (r["status"], r["reason"]) == ("bounced", "failed")
    assert r["timeline"][-1]["provider"] == "mailgun"
    assert r["timeline"][-1]["detail"] == "permanent bounce (550 no mailbox)"
    assert await suppression(pool, "email", address) == ("bounce", "mailgun")
    assert h.calls == expected_reloads(user)


async def test_mailgun_click_is_an_engagement_event(h, pool):
    user = uid("mgk")
    address = f"{user}@example.com"
    mid = f"{uuid.uuid4().hex}@mg.tidings.test"
    nid = await add_row(pool, user, "email", provider="mg", message_id=mid)
    # no notification id: found by the message id
    click = mg_event("clicked", recipient=address, message_id=f"<{mid}>", url="https://t.test/b")
    status, body = await h.mailgun(click)
    assert status == 200 and body["updated"] == 1
    [(channel, kind, at, source)] = await engaged(pool, nid)
    assert (channel, kind, source) == ("email", "clicked", "mailgun") and at == pytest.approx(click["timestamp"])
    email = await shown(h, nid, "email")
    assert (email["status"], email["reason"]) == ("delivered", "clicked")
    assert email["timeline"][-2]["detail"] == "https://t.test/b"
    assert email["timeline"][-1] == {"event": "clicked", "at": pytest.approx(click["timestamp"]), "source": "mailgun"}
    # Mailgun delivers it again (a new token), then the open it saw before the click
    assert (await h.mailgun(click))[0] == 200
    assert (await h.mailgun({**click, "event": "opened", "timestamp": click["timestamp"] - 5}))[0] == 200
    assert [(k, s) for _, k, _, s in await engaged(pool, nid)] == [("clicked", "mailgun"), ("opened", "mailgun")]
    assert (await row(pool, nid, "email"))["reason"] == "clicked"


async def test_mailgun_temporary_failure_is_timeline_only(h, pool):
    user = uid("mgt")
    nid = await add_row(pool, user, "email", provider="mg", message_id=None)
    status, body = await h.mailgun(mg_event("failed", recipient="t@example.com", nid=nid, severity="temporary"))
    assert status == 200 and body["updated"] == 1
    r = await row(pool, nid, "email")
    assert r["status"] == "sent" and r["reason"] == "ok" and r["timeline"][-1]["event"] == "failed"


async def test_mailgun_complaint(h, pool):
    user = uid("mgc")
    address = f"{user}@example.com"
    await add_user(pool, user, "email", address)
    nid = await add_row(pool, user, "email", provider="mg", message_id=None)
    status, body = await h.mailgun(mg_event("complained", recipient=address, nid=nid))
    assert status == 200 and body["suppressed"] == 1
    assert (await row(pool, nid, "email"))["status"] == "complained"
    assert await suppression(pool, "email", address) == ("complaint", "mailgun")


async def test_mailgun_bad_signature_stale_timestamp_and_replay_are_401(h, pool):
    user = uid("mg401")
    nid = await add_row(pool, user, "email", provider="mg", message_id=None)
    event = mg_event("delivered", recipient="a@example.com", nid=nid)
    assert (await h.mailgun(event, key="wrong-key"))[0] == 401
    status, body = await h.mailgun(event, timestamp=time.time() - 600)
    assert status == 401 and "from now" in body["errors"][0]["reason"]
    assert (await row(pool, nid, "email"))["status"] == "sent"
    assert (await h.mailgun(event, token="tok-once"))[0] == 200
    status, body = await h.mailgun(event, token="tok-once")
    assert status == 401 and "replayed" in body["errors"][0]["reason"]
    assert len((await row(pool, nid, "email"))["timeline"]) == 2  # the attempt, one delivered event
    # unsigned, and not JSON at all
    assert (await h.post("/v1/tracking/mailgun", b'{"event-data": {}}'))[0] == 401
    assert (await h.post("/v1/tracking/mailgun", b"event=delivered"))[0] == 400


async def test_verification_keys_given_as_references_are_filled_never_used_as_text(pool, monkeypatch):
    """``secret:NAME`` comes from the engine's stored credentials and ``env:NAME``
    from the environment; a reference that cannot be filled is no key at all."""
    cfg = config(sendgrid=False, twilio=False)
    cfg.channels["email"].providers[0].settings["webhook_signing_key"] = "secret:mg-signing"
    nid = await add_row(pool, uid("mgref"), "email", provider="mg", message_id=None)
    event = mg_event("delivered", recipient="a@example.com", nid=nid)
    async with Harness(pool, cfg, secrets={"mg-signing": "stored-signing-key"}) as h:
        assert (await h.mailgun(event, key="secret:mg-signing"))[0] == 401
        assert (await h.mailgun(event, key="stored-signing-key"))[0] == 200
    cfg.channels["email"].providers[0].settings["webhook_signing_key"] = "env:TIDINGS_TEST_MG_KEY"
    monkeypatch.delenv("TIDINGS_TEST_MG_KEY", raising=False)
    async with Harness(pool, cfg) as h:
        status, body = await h.mailgun(event, key="env:TIDINGS_TEST_MG_KEY")
        assert status == 404 and "webhook_signing_key" in body["errors"][0]["reason"]
    monkeypatch.setenv("TIDINGS_TEST_MG_KEY", "env-signing-key")
    async with Harness(pool, cfg) as h:
        assert (await h.mailgun(event, key="env:TIDINGS_TEST_MG_KEY"))[0] == 401
        assert (await h.mailgun(event, key="env-signing-key"))[0] == 200


async def test_mailgun_signed_event_without_event_is_400_and_its_token_reusable(h):
    status, body = await h.mailgun({"recipient": "a@example.com"}, token="tok-bad-event")
    assert status == 400 and body["error"] == "malformed payload" and "tok-bad-event" not in h.app[MAILGUN_TOKENS].local


async def test_mailgun_token_is_forgotten_when_the_database_fails(h, pool):
    user = uid("mgdb")
    nid = await add_row(pool, user, "email", provider="mg", message_id=None)

    class BrokenPool:
        def acquire(self):
            raise ConnectionError("database is down")

    h.engine.pool = BrokenPool()
    event = mg_event("delivered", recipient="a@example.com", nid=nid)
    ts = str(int(time.time()))
    sig = hmac.new(MG_KEY.encode(), (ts + "tok-db").encode(), hashlib.sha256).hexdigest()
    body = msgspec.json.encode({"signature": {"timestamp": ts, "token": "tok-db", "signature": sig},
                                "event-data": event})
    resp = await h.client.post("/v1/tracking/mailgun", data=body)
    assert resp.status == 500 and "tok-db" not in h.app[MAILGUN_TOKENS].local
    h.engine.pool = pool
    resp = await h.client.post("/v1/tracking/mailgun", data=body)  # Mailgun's retry, same token
    assert resp.status == 200
    assert (await row(pool, nid, "email"))["status"] == "delivered"


# -- Twilio -------------------------------------------------------------------

async def test_twilio_sms_unknown_number_bounces_and_suppresses(h, pool):
    user = uid("tw")
    number = f"+1555{uuid.uuid4().int % 10_000_000:07d}"
    await add_user(pool, user, "sms", number)
    sid = "SM" + uuid.uuid4().hex
    nid = await add_row(pool, user, "sms", provider="tw-sms", message_id=sid)
    sent = [("MessageSid", sid), ("MessageStatus", "sent"), ("To", number), ("AccountSid", "AC" + "0" * 32)]
    status, body = await h.twilio(sent)
    assert status == 200 and body["updated"] == 1
    status, body = await h.twilio([("MessageSid", sid), ("MessageStatus", "undelivered"), ("ErrorCode", "30005"),
                                   ("To", number), ("AccountSid", "AC" + "0" * 32)])
    assert status == 200 and body == {"events": 1, "updated": 1, "suppressed": 1, "users": [user]}
    r = await row(pool, nid, "sms")
    assert (r["status"], r["reason"]) == ("bounced", "undelivered")
    assert [e["event"] for e in r["timeline"][1:]] == ["sent", "undelivered"]
    assert r["timeline"][-1]["detail"] == "error 30005"
    assert await suppression(pool, "sms", number) == ("bounce", "twilio")
    assert h.calls == expected_reloads(user)


async def test_twilio_voice_completed_is_delivered(h, pool):
    user = uid("twv")
    sid = "CA" + uuid.uuid4().hex
    nid = await add_row(pool, user, "voice", provider="tw-voice", message_id=sid)
    status, body = await h.twilio([("CallSid", sid), ("CallStatus", "completed"), ("CallDuration", "9"),
                                   ("To", "+15550001111")])
    assert status == 200 and body["updated"] == 1
    r = await row(pool, nid, "voice")
    assert r["status"] == "delivered" and r["timeline"][-1]["detail"] == "9 s"


async def test_twilio_signed_for_the_public_url(h, pool):
    user = uid("twu")
    sid = "SM" + uuid.uuid4().hex
    nid = await add_row(pool, user, "sms", provider="tw-sms", message_id=sid)
    params = [("MessageSid", sid), ("MessageStatus", "delivered"), ("To", "+15550002222")]
    # the status_callback Twilio was given (behind a proxy)
    assert (await h.twilio(params, url=TW_CALLBACK))[0] == 200
    # the URL a proxy says it was called at
    status, _ = await h.twilio(params, url="https://public.tidings.test/v1/tracking/twilio",
                               headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "public.tidings.test"})
    assert status == 200
    assert (await row(pool, nid, "sms"))["status"] == "delivered"


async def test_twilio_bad_signature_is_401_and_bad_forms_400(h, pool):
    user = uid("tw401")
    sid = "SM" + uuid.uuid4().hex
    nid = await add_row(pool, user, "sms", provider="tw-sms", message_id=sid)
    params = [("MessageSid", sid), ("MessageStatus", "delivered"), ("To", "+15550003333")]
    assert (await h.twilio(params, token="wrong"))[0] == 401
    assert (await h.twilio(params, url="https://elsewhere.test/v1/tracking/twilio"))[0] == 401
    status, body = await h.post("/v1/tracking/twilio", urllib.parse.urlencode(params).encode())
    assert status == 401 and "missing" in body["errors"][0]["reason"]
    assert (await row(pool, nid, "sms"))["status"] == "sent"
    assert (await h.post("/v1/tracking/twilio", b"\xff\xfe"))[0] == 400
    status, body = await h.twilio([("To", "+15550003333")])  # signed, but no sid
    assert status == 400 and "MessageSid" in body["errors"][0]["reason"]


async def test_twilio_stop_is_a_complaint(h, pool):
    user = uid("tws")
    number = f"+1556{uuid.uuid4().int % 10_000_000:07d}"
    await add_user(pool, user, "sms", number)
    sid = "SM" + uuid.uuid4().hex
    nid = await add_row(pool, user, "sms", provider="tw-sms", message_id=sid)
    status, body = await h.twilio([("MessageSid", sid), ("MessageStatus", "failed"), ("ErrorCode", "21610"),
                                   ("To", number)])
    assert status == 200 and body["users"] == [user]
    assert (await row(pool, nid, "sms"))["status"] == "complained"
    assert await suppression(pool, "sms", number) == ("complaint", "twilio")


# -- the status order ---------------------------------------------------------

@pytest.mark.parametrize("current, new, result", [
    ("sent", "delivered", "delivered"), ("sent", "failed", "failed"), ("sent", None, "sent"),
    ("delivered", "bounced", "bounced"), ("delivered", "complained", "complained"),
    ("delivered", "failed", "delivered"), ("failed", "delivered", "failed"), ("failed", "bounced", "bounced"),
    ("bounced", "delivered", "bounced"), ("bounced", "complained", "bounced"),
    ("complained", "bounced", "complained"), ("deferred", "delivered", "delivered"),
])
def test_status_only_moves_forward(current, new, result):
    assert next_status(current, new) == result
