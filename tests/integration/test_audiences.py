"""Topics and segments on a real engine (NATS, PostgreSQL, Ray, Redis): users
subscribe over HTTP (one at a time with their own token, many at once with a
key), a broadcast to a topic, to a segment, or to a topic's subscribers in a
segment reaches exactly those users and no one else; segments are saved,
counted, checked field by field, and used to apply a preference template."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import pytest

from infra import dead_letters, streams
from policy.types import UserProfile
from tests.integration.helpers import engine_config, serving

pytestmark = pytest.mark.integration

USERS = 30


def person(i: int) -> UserProfile:
    # a third speak French; even ones live in Paris; a4 has no email address
    return UserProfile(user_id=f"a{i}", addresses={} if i == 4 else {"email": f"a{i}@example.test"},
                       locale="fr" if i % 3 == 0 else "en",
                       timezone="Europe/Paris" if i % 2 == 0 else "America/New_York")


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, redis_url, webhook_sink, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")),
                        webhook_url=webhook_sink.url, redis_url=redis_url, channels=("webhook",),
                        overrides={"topics": {"self_service": ["newsletter."]}})
    async with serving(cfg, database_url, [person(i) for i in range(USERS)]) as eng:
        yield eng


NEWS = {"category": "news", "channels": ["webhook"], "content": {"text": "Company news"}}


async def broadcast(engine, client, audience, expected: int) -> set[str]:
    """The users a broadcast to ``audience`` reached (once ``expected`` are recorded, and a moment more)."""
    async with client.post(f"{engine.base_url}/v1/broadcasts", json={**NEWS, "audience": audience}) as r:
        assert r.status == 202, await r.text()
        bid = uuid.UUID((await r.json())["id"])
    deadline = time.monotonic() + 60
    count = "SELECT count(*) FROM delivery_tracking WHERE parent_id = $1"
    while await engine.pool.fetchval(count, bid) < expected:
        assert time.monotonic() < deadline, "the broadcast did not reach its audience"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # anyone beyond the audience would be recorded by now
    rows = await engine.pool.fetch("SELECT user_id, status FROM delivery_tracking WHERE parent_id = $1", bid)
    assert {r["status"] for r in rows} == {"sent"}
    return {r["user_id"] for r in rows}


async def test_subscribing_one_and_many_and_reading_them_back(engine, client):
    base = f"{engine.base_url}/v1/topics/company-42"
    async with client.post(f"{base}/subscribers", json={"add": [f"a{i}" for i in range(10)] + ["nobody"]}) as r:
        assert r.status == 200, await r.text()
        assert await r.json() == {"topic_id": "company-42", "added": 10, "removed": 0, "unknown": ["nobody"],
                                  "unknown_count": 1}
    for changed in (True, False):  # the second time changes nothing
        async with client.put(f"{base}/subscribers/a10") as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["changed"] is changed
    async with client.delete(f"{base}/subscribers/a9") as r:
        assert (await r.json()) == {"topic_id": "company-42", "user_id": "a9", "subscribed": False, "changed": True}
    async with client.put(f"{base}/subscribers/nobody") as r:
        assert r.status == 404
    async with client.get(base) as r:
        assert await r.json() == {"topic_id": "company-42", "subscribers": 10}
    seen, after = [], ""
    while True:  # pages of 4, in user id order
        async with client.get(f"{base}/subscribers", params={"limit": "4", **({"after": after} if after else {})}) as r:
            page = await r.json()
        seen += [s["user_id"] for s in page["subscribers"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == sorted([f"a{i}" for i in range(9)] + ["a10"])
    async with client.get(f"{engine.base_url}/v1/users/a10/topics") as r:
        assert [t["topic_id"] for t in (await r.json())["topics"]] == ["company-42"]
    actions = await engine.pool.fetch("SELECT action FROM preference_audit_log WHERE user_id = 'a9' "
                                      "AND action LIKE 'topic.%' ORDER BY id")
    assert [a["action"] for a in actions] == ["topic.subscribe", "topic.unsubscribe"]


async def test_a_user_token_leaves_topics_and_joins_only_the_open_ones(engine, client):
    async with client.post(f"{engine.base_url}/v1/topics/launches/subscribers", json={"add": ["a11", "a12"]}) as r:
        assert r.status == 200, await r.text()
    token, _ = await engine.auth.mint("a11", 600)
    me = {"Authorization": f"Bearer {token}"}
    async with client.get(f"{engine.base_url}/v1/users/a11/topics", headers=me) as r:
        assert [t["topic_id"] for t in (await r.json())["topics"]] == ["launches"]
    for method, path in (("PUT", "/v1/topics/other/subscribers/a11"),  # joining an audience is the product's call
                         ("DELETE", "/v1/topics/launches/subscribers/a12"), ("GET", "/v1/users/a12/topics"),
                         ("POST", "/v1/topics/launches/subscribers")):
        async with client.request(method, f"{engine.base_url}{path}", json={"remove": ["a12"]}, headers=me) as r:
            assert r.status == 403, (method, path, await r.text())
    async with client.delete(f"{engine.base_url}/v1/topics/launches/subscribers/a11", headers=me) as r:
        assert r.status == 200 and (await r.json())["changed"] is True
    # a topic the configuration opens to users (topics.self_service: "newsletter.")
    async with client.put(f"{engine.base_url}/v1/topics/newsletter.weekly/subscribers/a11", headers=me) as r:
        assert r.status == 200 and (await r.json())["changed"] is True, await r.text()
    async with client.put(f"{engine.base_url}/v1/topics/newsletter.weekly/subscribers/a12", headers=me) as r:
        assert r.status == 403  # for themselves only


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("PUT", "/v1/topics/bad%20topic/subscribers/a1", None, "topic_id"),
    ("POST", "/v1/topics/t/subscribers", {"add": ["a1"], "remove": ["a1"]}, "remove"),
    ("POST", "/v1/topics/t/subscribers", {}, "$"),
    ("POST", "/v1/topics/t/subscribers", {"add": [""]}, "$.add[0]"),
    ("PUT", "/v1/segments/s1", {"where": {"field": "shoe_size", "op": "eq", "value": "9"}}, "$.where.field"),
    ("PUT", "/v1/segments/s1", {"where": {"all": [{"field": "locale", "op": "within_days", "value": 3}]}},
     "$.where.all[0].op"),
    ("PUT", "/v1/segments/s1", {"where": {"any": []}}, "$.where.any"),
    ("PUT", "/v1/segments/s1", {"where": {"field": "address", "op": "has", "value": "pigeon"}}, "$.where.value"),
    ("POST", "/v1/broadcasts", {**NEWS, "audience": {}}, "$.audience"),
    ("POST", "/v1/broadcasts", {**NEWS, "audience": {"segment": "no-such"}}, "$.audience.segment"),
    ("POST", "/v1/broadcasts", {**NEWS, "audience": {"segment": "french", "where": {"field": "locale", "op": "eq",
                                                                                     "value": "fr"}}},
     "$.audience.where"),
    ("POST", "/v1/broadcasts", {**NEWS, "audience": {"where": {"not": {"field": "consent", "op": "has",
                                                                       "value": 7}}}}, "$.audience.where.not.value"),
    ("POST", "/v1/audiences/count", {"segment": "no-such"}, "$.segment"),
])
async def test_bad_audiences_are_answered_naming_the_field(engine, client, method, path, body, field):
    async with client.request(method, f"{engine.base_url}{path}", json=body) as r:
        assert r.status == 422, await r.text()
        assert field in [e["field"] for e in (await r.json())["errors"]], await r.text()


async def test_broadcasts_reach_a_topic_a_segment_and_both(engine, client, webhook_sink):
    async with client.post(f"{engine.base_url}/v1/topics/followers/subscribers",
                           json={"add": [f"a{i}" for i in range(0, 20)]}) as r:
        assert r.status == 200
    french = {"where": {"all": [{"field": "locale", "op": "eq", "value": "fr"},
                                {"field": "address", "op": "has", "value": "email"}]},
              "description": "French speakers we can email"}
    async with client.put(f"{engine.base_url}/v1/segments/french", json=french) as r:
        assert r.status == 201, await r.text()
    async with client.put(f"{engine.base_url}/v1/segments/french", json=french) as r:
        assert r.status == 200  # replaced
    fr = {f"a{i}" for i in range(USERS) if i % 3 == 0}
    async with client.get(f"{engine.base_url}/v1/segments/french/count") as r:
        counted = await r.json()
    assert counted["users"] == len(fr) and set(counted["sample"]) <= fr and counted["sample"]
    from engine import auth
    async with engine.pool.acquire() as conn:
        _, counter = await auth.create_key(conn, "counter", ["segments:read"])
    async with client.get(f"{engine.base_url}/v1/segments/french/count",
                          headers={"Authorization": f"Bearer {counter}"}) as r:
        assert await r.json() == {**counted, "sample": [], "seconds": (await r.json())["seconds"]}  # no decisions:read
    async with client.get(f"{engine.base_url}/v1/segments/nothing-here/count") as r:
        assert r.status == 404

    before = webhook_sink.received
    assert await broadcast(engine, client, {"topic": "followers"}, 20) == {f"a{i}" for i in range(20)}
    assert await broadcast(engine, client, {"segment": "french"}, len(fr)) == fr
    paris_followers = {"topic": "followers", "where": {"field": "timezone", "op": "prefix", "value": "Europe/"}}
    expected = {f"a{i}" for i in range(0, 20, 2)}
    async with client.post(f"{engine.base_url}/v1/audiences/count", json=paris_followers) as r:
        assert (await r.json())["users"] == len(expected)
    async with client.post(f"{engine.base_url}/v1/broadcasts?dry_run=true",
                           json={**NEWS, "audience": paris_followers}) as r:
        assert (await r.json())["recipients"] == len(expected)
    assert await broadcast(engine, client, paris_followers, len(expected)) == expected
    deadline = time.monotonic() + 10
    while webhook_sink.received < before + 20 + len(fr) + len(expected):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert webhook_sink.received == before + 20 + len(fr) + len(expected)


async def test_a_segment_on_engagement_and_preferences(engine, client):
    now = time.time()
    await engine.pool.executemany(
        "INSERT INTO engagement_events (notification_id, user_id, channel, type, at, source) "
        "VALUES ($1, $2, 'webhook', $3, to_timestamp($4), 'api')",
        [(uuid.uuid4(), "a21", "opened", now - 3600), (uuid.uuid4(), "a22", "clicked", now - 2 * 86400),
         (uuid.uuid4(), "a23", "opened", now - 40 * 86400)])
    async with client.put(f"{engine.base_url}/v1/users/a22/preferences",
                          json={"preferences": [{"channel": "webhook", "category": "marketing", "enabled": False}]}) as r:
        assert r.status == 200, await r.text()

    async def count(where) -> int:
        async with client.post(f"{engine.base_url}/v1/audiences/count", json={"where": where}) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["users"]

    assert await count({"field": "last_opened", "op": "within_days", "value": 7}) == 1
    assert await count({"field": "last_engaged", "op": "within_days", "value": 7}) == 2
    assert await count({"field": "last_engaged", "op": "exists", "value": True}) == 3
    assert await count({"not": {"field": "last_engaged", "op": "exists", "value": True}}) == USERS - 3
    recent_readers = {"all": [{"field": "last_engaged", "op": "within_days", "value": 7},
                              {"field": "preference", "op": "enabled", "value": "webhook:marketing"}]}
    assert await count(recent_readers) == 1  # a22 turned marketing off


async def test_a_template_applies_to_a_segment(engine, client):
    template = {"id": "quiet-fr", "name": "Quiet (fr)", "preferences": [{"channel": "email", "category": "marketing",
                                                                         "enabled": False}]}
    async with client.post(f"{engine.base_url}/v1/preference-templates", json=template) as r:
        assert r.status in (200, 201), await r.text()
    target = {"audience": {"where": {"all": [{"field": "locale", "op": "eq", "value": "fr"},
                                             {"field": "timezone", "op": "eq", "value": "America/New_York"}]}}}
    async with client.post(f"{engine.base_url}/v1/preference-templates/quiet-fr/apply", json=target) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    expected = {f"a{i}" for i in range(USERS) if i % 3 == 0 and i % 2 == 1}
    assert body["applied"] == len(expected) and body["failed"] == []
    rows = await engine.pool.fetch("SELECT user_id FROM users WHERE template_id = 'quiet-fr'")
    assert {r["user_id"] for r in rows} == expected


async def test_erasing_a_user_ends_their_subscriptions(engine, client):
    async with client.put(f"{engine.base_url}/v1/topics/gone/subscribers/a29") as r:
        assert r.status == 200
    async with client.delete(f"{engine.base_url}/v1/users/a29") as r:
        assert r.status in (200, 202), await r.text()
        receipt = await r.json()
    assert receipt["deleted"]["topic_subscribers"] == 1, receipt
    async with client.get(f"{engine.base_url}/v1/topics/gone") as r:
        assert (await r.json())["subscribers"] == 0


@pytest.mark.parametrize(("audience", "error"), [
    ({"segment": "french"}, "audience.where"),  # over NATS a segment comes with its filter
    ({"where": {"field": "locale", "op": "like", "value": "fr"}}, "audience.where.op"),
])
async def test_a_bad_audience_over_nats_is_dead_lettered_with_its_reason(engine, audience, error):
    sub = await engine.nc.subscribe(streams.dlq_subject(engine.cfg.nats))
    try:
        await engine.js.publish(streams.broadcast_subject(engine.cfg.nats, "news"),
                                msgspec.json.encode({**NEWS, "audience": audience}))
        msg = await sub.next_msg(timeout=15)
    finally:
        await sub.unsubscribe()
    headers = msg.headers or {}
    assert headers.get(dead_letters.REASON) == "payload.invalid" and error in headers.get(dead_letters.ERROR, ""), \
        headers
