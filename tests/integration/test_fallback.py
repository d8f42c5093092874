"""Channel fallback and gone addresses through a running engine: a webhook that
fails falls back to email; a web push subscription the push service says is gone
is removed from the user."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid.utils import b64urlencode

from infra.config import ChannelConfig, ProviderConfig
from policy.types import UserProfile
from sandbox import SmtpSink, WebhookSink
from sandbox.webpush import WebPushSink
from tests.integration.helpers import api_session, engine_config, serving, wait_rows

pytestmark = pytest.mark.integration


def vapid_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return b64urlencode(key.private_numbers().private_value.to_bytes(32, "big"))


@pytest.fixture(scope="module")
async def sinks():
    smtp = SmtpSink(port=0, keep_messages=True)
    smtp.start()
    hook = WebhookSink("fb-secret", port=0)
    await hook.start()
    push = WebPushSink()
    await push.start()
    yield smtp, hook, push
    smtp.stop()
    await hook.stop()
    await push.stop()


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, sinks, tmp_path_factory):
    smtp, hook, push = sinks
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        webhook_url=hook.url, secret="fb-secret", channels=("email", "webhook", "in_app"),
                        overrides={"scheduler": {"interval_s": 0.2}})
    web = ChannelConfig(providers=[ProviderConfig(name="webpush-local", type="webpush", max_attempts=1, settings={
        "vapid_private_key": vapid_key(), "vapid_subject": "mailto:ops@tidings.test", "allow_http": True,
        "egress_allow": ["127.0.0.0/8", "::1/128"]})])
    cfg = msgspec.structs.replace(cfg, channels={**cfg.channels, "web": web})
    live, gone = push.subscribe(), push.subscribe(expired=True)
    async with serving(cfg, database_url, [
        UserProfile(user_id="f1", addresses={"email": "f1@example.test"}),
        UserProfile(user_id="w1", addresses={"web": orjson.dumps(live).decode()}),
        UserProfile(user_id="w2", addresses={"web": orjson.dumps(gone).decode()}),
    ]) as eng:
        yield eng


async def statuses(engine, nid: str) -> dict:
    rows = await engine.pool.fetch("SELECT channel, status, reason FROM delivery_tracking WHERE notification_id = $1",
                                   uuid.UUID(nid))
    return {r["channel"]: (r["status"], r["reason"]) for r in rows}


async def test_a_failed_channel_falls_back_to_the_next(engine, sinks):
    smtp, hook, _ = sinks
    hook.fail_status, hook.fail_next = 400, 1_000  # the webhook receiver refuses everything
    before = smtp.count
    nid = str(uuid.uuid4())
    async with api_session() as s, s.post(f"{engine.base_url}/v1/notifications", json={
            "id": nid, "user_id": "f1", "category": "job_alerts", "channels": ["webhook"], "fallback": ["email"],
            "content": {"subject": "s", "text": "t"}}) as r:
        assert r.status == 202, await r.text()
    await wait_rows(engine.pool, [nid], 2)
    hook.fail_status, hook.fail_next = None, 0
    assert await statuses(engine, nid) == {"webhook": ("failed", "invalid_message"), "email": ("sent", "ok")}
    assert smtp.count == before + 1
    ok = str(uuid.uuid4())  # a channel that works: no fallback
    async with api_session() as s, s.post(f"{engine.base_url}/v1/notifications", json={
            "id": ok, "user_id": "f1", "category": "job_alerts", "channels": ["webhook"], "fallback": ["email"],
            "content": {"subject": "s", "text": "t"}}) as r:
        assert r.status == 202
    await wait_rows(engine.pool, [ok], 1)
    assert await statuses(engine, ok) == {"webhook": ("sent", "ok")}


async def test_a_gone_subscription_is_removed_from_the_user(engine, sinks):
    _, _, push = sinks
    ids = {u: str(uuid.uuid4()) for u in ("w1", "w2")}
    async with api_session() as s:
        for uid, nid in ids.items():
            async with s.post(f"{engine.base_url}/v1/notifications", json={
                    "id": nid, "user_id": uid, "category": "messages", "channels": ["web"],
                    "content": {"subject": "New message", "text": "hi"}}) as r:
                assert r.status == 202, await r.text()
        await wait_rows(engine.pool, list(ids.values()), 2)
        assert await statuses(engine, ids["w1"]) == {"web": ("sent", "ok")}
        assert await statuses(engine, ids["w2"]) == {"web": ("failed", "address_gone")}
        async with s.get(f"{engine.base_url}/v1/users/w2") as r:
            assert "web" not in (await r.json())["addresses"]
        async with s.get(f"{engine.base_url}/v1/users/w1") as r:
            assert "web" in (await r.json())["addresses"]
    assert [orjson.loads(p.payload)["id"] for p in push.received] == [ids["w1"]]


async def test_fallback_over_time_unless_delivered(engine, sinks):
    """Webhook now; if it is not delivered within a second, email."""
    smtp, _, _ = sinks
    before = smtp.count
    ids = [str(uuid.uuid4()) for _ in range(2)]
    async with api_session() as s:
        for nid in ids:
            async with s.post(f"{engine.base_url}/v1/notifications", json={
                    "id": nid, "user_id": "f1", "category": "job_alerts", "channels": ["webhook"],
                    "fallback": ["email"], "fallback_after_s": 1.0,
                    "content": {"subject": "s", "text": "t"}}) as r:
                assert r.status == 202, await r.text()
    await wait_rows(engine.pool, ids, 2)
    # the first one is confirmed delivered, as a provider's tracking webhook would say
    await engine.pool.execute("UPDATE delivery_tracking SET status = 'delivered' WHERE notification_id = $1",
                              uuid.UUID(ids[0]))
    await wait_rows(engine.pool, ids, 3, timeout_s=30)
    assert await statuses(engine, ids[0]) == {"webhook": ("delivered", "ok")}
    assert await statuses(engine, ids[1]) == {"webhook": ("sent", "ok"), "email": ("sent", "ok")}
    assert smtp.count == before + 1
    assert await engine.pool.fetchval("SELECT count(*) FROM scheduled_notifications WHERE kind = 'fallback' "
                                      "AND status = 'done' AND notification_id = ANY($1::uuid[])", ids) == 2


async def test_in_app_lands_in_the_inbox(engine):
    """The in-app provider the engine configured with its own database and NATS."""
    nid = str(uuid.uuid4())
    async with api_session() as s:
        async with s.post(f"{engine.base_url}/v1/notifications", json={
                "id": nid, "user_id": "f1", "category": "messages", "channels": ["in_app"],
                "content": {"subject": "New message", "text": "from a recruiter"}}) as r:
            assert r.status == 202, await r.text()
        await wait_rows(engine.pool, [nid], 1)
        assert await statuses(engine, nid) == {"in_app": ("sent", "ok")}
        async with s.get(f"{engine.base_url}/v1/users/f1/inbox") as r:
            inbox = await r.json()
    assert [m["notification_id"] for m in inbox["messages"]] == [nid] and inbox["unread"] == 1


async def test_fallback_over_time_unless_opened(engine, sinks):
    """In-app now; unless it is opened (read in the inbox, or an event from the
    client) by the time the check is due, email. Delivered is not enough."""
    smtp, _, _ = sinks
    before = smtp.count
    await engine.save_profiles([UserProfile(user_id="o1", addresses={"email": "o1@example.test"})], "test")
    base = {"user_id": "o1", "category": "job_alerts", "channels": ["in_app"], "fallback": ["email"],
            "fallback_unless": "opened", "content": {"subject": "s", "text": "t"}}
    async with api_session() as s:
        async with s.post(f"{engine.base_url}/v1/notifications", json=base) as r:  # no fallback_after_s
            assert r.status == 422
            assert [e["field"] for e in (await r.json())["errors"]] == ["$.fallback_unless"]
        unread, read, clicked = ids = [str(uuid.uuid4()) for _ in range(3)]
        for nid in ids:
            # due in a minute; the test brings the time forward once the opens are in
            async with s.post(f"{engine.base_url}/v1/notifications",
                              json={**base, "id": nid, "fallback_after_s": 60}) as r:
                assert r.status == 202, await r.text()
        await wait_rows(engine.pool, ids, 3)
        # the unread one is confirmed delivered, as a provider would say: not enough
        await engine.pool.execute("UPDATE delivery_tracking SET status = 'delivered' WHERE notification_id = $1",
                                  uuid.UUID(unread))
        async with s.get(f"{engine.base_url}/v1/users/o1/inbox") as r:
            seq = {m["notification_id"]: m["seq"] for m in (await r.json())["messages"]}
        async with s.post(f"{engine.base_url}/v1/users/o1/inbox/read", json={"seqs": [seq[read]]}) as r:
            assert (await r.json())["read"] == 1
        async with s.post(f"{engine.base_url}/v1/notifications/{clicked}/events",
                          json={"channel": "in_app", "type": "clicked"}) as r:
            assert r.status == 201, await r.text()
        checks = "kind = 'fallback' AND notification_id = ANY($1::uuid[])"
        assert await engine.pool.fetchval(
            f"SELECT count(*) FROM scheduled_notifications WHERE {checks} AND status = 'pending'", ids) == 3
        await engine.pool.execute(f"UPDATE scheduled_notifications SET due_at = now() WHERE {checks}", ids)
        await wait_rows(engine.pool, ids, 4, timeout_s=30)
        deadline = asyncio.get_running_loop().time() + 30
        while await engine.pool.fetchval(
                f"SELECT count(*) FROM scheduled_notifications WHERE {checks} AND status = 'done'", ids) < 3:
            assert asyncio.get_running_loop().time() < deadline, "fallback checks not done"
            await asyncio.sleep(0.2)
        assert await statuses(engine, unread) == {"in_app": ("delivered", "ok"), "email": ("sent", "ok")}
        assert await statuses(engine, read) == {"in_app": ("delivered", "opened")}
        assert await statuses(engine, clicked) == {"in_app": ("delivered", "clicked")}
        assert smtp.count == before + 1
        async with s.get(f"{engine.base_url}/v1/notifications/{read}") as r:
            (in_app,) = (await r.json())["channels"]
    assert [(e["event"], e["source"]) for e in in_app["timeline"] if "event" in e] == [("opened", "inbox")]
