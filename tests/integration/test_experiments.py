"""A/B experiments through a real engine (policy/experiments.py, engine/http/experiments.py):
each person gets the variant their stable hash says, on single notifications and
broadcasts; who got which is recorded; conversions posted as events reach the
results, which name the winner once every variant has its minimum sample;
stopping routes everyone to the winner; archiving ends the routing."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import pytest

from engine import auth
from policy.experiments import Variant, assign
from policy.types import UserProfile
from sandbox.http import WebhookSink
from tests.integration.helpers import engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

CONTROL_TEXT, SHORT_TEXT = "a long welcome", "hi!"
EXPERIMENT = {"id": "welcome-copy", "category": "onboarding", "kind": "content", "metric": "converted",
              "min_sample": 10, "variants": [{"name": "control"},
                                             {"name": "short", "content": {"text": SHORT_TEXT}}]}
VARIANTS = [Variant(name="control"), Variant(name="short")]


def people() -> list[str]:
    """Users enough for twelve in each variant."""
    users, counts = [], {"control": 0, "short": 0}
    i = 0
    while min(counts.values()) < 12:
        u = f"x{i}"
        users.append(u)
        counts[assign(EXPERIMENT["id"], VARIANTS, u).name] += 1
        i += 1
    return users


USERS = people()


@pytest.fixture(scope="module")
async def sink():
    s = WebhookSink("test-secret", port=0, keep_bodies=True)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, sink, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), webhook_url=sink.url,
                        channels=("webhook", "in_app"))
    async with serving(cfg, database_url, [UserProfile(user_id=u) for u in USERS]) as eng:
        yield eng


def note(user_id: str, **extra) -> dict:
    return {"id": str(uuid.uuid4()), "user_id": user_id, "category": "onboarding", "channels": ["webhook"],
            "content": {"text": CONTROL_TEXT}, **extra}


async def submit_all(engine, client, bodies: list[dict]) -> None:
    for b in bodies:
        async with client.post(f"{engine.base_url}/v1/notifications", json=b) as r:
            assert r.status == 202, await r.text()
    assert await wait_rows(engine.pool, [b["id"] for b in bodies], len(bodies), timeout_s=60) == len(bodies)


async def texts(sink: WebhookSink, ids: set[str]) -> dict[str, str]:
    """What the sink got for ``ids``: user → text."""
    deadline = time.monotonic() + 10
    while True:
        got = {b["user_id"]: b["content"]["text"] for b in sink.bodies if b["id"] in ids}
        if len(got) == len(ids) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


async def test_an_experiment_from_start_to_winner(engine, client, sink):
    base = f"{engine.base_url}/v1/experiments"
    async with client.post(base, json=EXPERIMENT) as r:
        assert r.status == 201, await r.text()
        assert (await r.json())["status"] == "running"
    async with client.post(base, json={**EXPERIMENT, "id": "another"}) as r:  # one live per category
        assert r.status == 409 and (await r.json())["errors"][0]["field"] == "$.category"

    bodies = [note(u) for u in USERS]
    critical = note(USERS[0], priority="critical")  # never in an experiment
    await submit_all(engine, client, [*bodies, critical])
    expected = {u: SHORT_TEXT if assign(EXPERIMENT["id"], VARIANTS, u).name == "short" else CONTROL_TEXT
                for u in USERS}
    assert await texts(sink, {b["id"] for b in bodies}) == expected
    assert (await texts(sink, {critical["id"]}))[USERS[0]] == CONTROL_TEXT
    rows = await engine.pool.fetch("SELECT user_id, variant FROM user_experiment_participation "
                                   "WHERE experiment_id = 'welcome-copy'")
    assert {r["user_id"]: r["variant"] for r in rows} == {u: assign(EXPERIMENT["id"], VARIANTS, u).name
                                                         for u in USERS}

    async with client.get(f"{base}/welcome-copy/results") as r:
        got = await r.json()
    assert got["analysis"]["winner"] is None  # no conversions: no difference
    assert [v["users"] for v in got["analysis"]["variants"]] == [
        sum(1 for u in USERS if assign(EXPERIMENT["id"], VARIANTS, u).name == n) for n in ("control", "short")]
    assert all(v["counts"]["delivered"] == v["users"] for v in got["analysis"]["variants"])
    async with client.post(f"{base}/welcome-copy/stop") as r:  # nothing named yet
        assert r.status == 409, await r.text()

    # everyone who got the short copy converts; nobody else does
    for b in bodies:
        if expected[b["user_id"]] == SHORT_TEXT:
            async with client.post(f"{engine.base_url}/v1/notifications/{b['id']}/events",
                                   json={"channel": "webhook", "type": "converted"}) as r:
                assert r.status == 201, await r.text()
    async with client.get(f"{base}/welcome-copy/results") as r:
        analysis = (await r.json())["analysis"]
    short = analysis["variants"][1]
    assert analysis["winner"] == "short" and short["rates"]["converted"] == 1.0
    assert short["vs_control"]["significant"] and short["vs_control"]["p_value"] < 0.001

    async with client.post(f"{base}/welcome-copy/stop") as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["winner"] == "short"
    later = [note(u) for u in USERS[:6]]
    await submit_all(engine, client, later)
    assert set((await texts(sink, {b["id"] for b in later})).values()) == {SHORT_TEXT}  # the winner for all
    counts = dict(await engine.pool.fetch("SELECT counted, count(*) FROM user_experiment_participation "
                                          "WHERE experiment_id = 'welcome-copy' GROUP BY counted"))
    assert counts == {True: len(USERS), False: 6}  # the winner's routing is recorded (a redelivery keeps it), uncounted

    async with client.delete(f"{base}/welcome-copy") as r:
        assert r.status == 200 and (await r.json())["status"] == "archived"
    after = [note(u) for u in USERS[:6]]
    await submit_all(engine, client, after)
    assert set((await texts(sink, {b["id"] for b in after})).values()) == {CONTROL_TEXT}  # as submitted


async def test_a_broadcast_routes_each_recipient(engine, client, sink):
    exp = {**EXPERIMENT, "id": "broadcast-copy", "kind": "channel", "category": "news",
           "variants": [{"name": "control"}, {"name": "inbox", "channels": ["in_app"]}]}
    async with client.post(f"{engine.base_url}/v1/experiments", json=exp) as r:
        assert r.status == 201, await r.text()
    async with client.post(f"{engine.base_url}/v1/broadcasts", json={
            "category": "news", "channels": ["webhook"], "content": {"text": "news"}}) as r:
        assert r.status == 202, await r.text()
        bid = uuid.UUID((await r.json())["id"])
    deadline = time.monotonic() + 60
    while await engine.pool.fetchval("SELECT count(*) FROM delivery_tracking WHERE parent_id = $1", bid) < len(USERS):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    rows = await engine.pool.fetch("SELECT user_id, channel FROM delivery_tracking WHERE parent_id = $1", bid)
    variants = [Variant(name="control"), Variant(name="inbox")]
    assert {r["user_id"]: r["channel"] for r in rows} == {
        u: "in_app" if assign("broadcast-copy", variants, u).name == "inbox" else "webhook" for u in USERS}
    assert await engine.pool.fetchval("SELECT count(*) FROM user_experiment_participation "
                                      "WHERE experiment_id = 'broadcast-copy'") == len(USERS)


async def test_malformed_experiments_are_refused(engine, client):
    base = f"{engine.base_url}/v1/experiments"
    for body, field in (({**EXPERIMENT, "id": "bad1", "variants": [{"name": "a"}, {"name": "b", "channels": ["sms"]}]},
                         "$.variants[1].channels"),
                        ({**EXPERIMENT, "id": "bad2", "kind": "template",
                          "variants": [{"name": "a"}, {"name": "b", "template": {"id": "no-such-template"}}]},
                         "$.variants[1].template"),
                        ({**EXPERIMENT, "id": "bad 3"}, "$.id"),
                        ({**EXPERIMENT, "id": "bad5", "kind": "channel",
                          "variants": [{"name": "a"}, {"name": "b", "channels": ["sms"]}]},  # not enabled here
                         "$.variants[1].channels[0]"),
                        ({**EXPERIMENT, "id": "bad6", "variants": [{"name": "a"}, {"name": "b", "content": {
                            "text": "x", "data": {"big": 2**70}}}]}, "$.variants[1].content.data.big"),
                        ({**EXPERIMENT, "id": "bad4", "confidence": 2}, "$.confidence")):
        async with client.post(base, json=body) as r:
            assert r.status == 422, await r.text()
            assert field in [e["field"] for e in (await r.json())["errors"]]
    async with client.get(f"{base}/nothing-here/results") as r:
        assert r.status == 404
    async with client.post(f"{base}/nothing-here/stop", json={"winner": "a"}) as r:
        assert r.status == 404


async def test_reading_needs_the_read_scope_and_changing_the_write_scope(engine):
    async with engine.pool.acquire() as conn:
        _, reader = await auth.create_key(conn, "reader", ["experiments:read"])
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {reader}"}) as s:
        async with s.get(f"{engine.base_url}/v1/experiments") as r:
            assert r.status == 200, await r.text()
        async with s.post(f"{engine.base_url}/v1/experiments", json={**EXPERIMENT, "id": "nope"}) as r:
            assert r.status == 403


async def test_a_timing_variant_holds_its_arm_and_the_results_wait_for_it(engine, client, sink):
    exp = {**EXPERIMENT, "id": "timing", "kind": "timing", "category": "digest-news",
           "variants": [{"name": "now"}, {"name": "best", "deliver": "optimal", "deliver_within_s": 86_400}]}
    async with client.post(f"{engine.base_url}/v1/experiments", json=exp) as r:
        assert r.status == 201, await r.text()
    bodies = [note(u, category="digest-news") for u in USERS]
    await submit_all(engine, client, bodies)
    variants = [Variant(name="now"), Variant(name="best")]
    rows = {r["user_id"]: r["status"] for r in await engine.pool.fetch(
        "SELECT user_id, status FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])",
        [uuid.UUID(b["id"]) for b in bodies])}
    best = {u for u in USERS if assign("timing", variants, u).name == "best"}
    assert {u for u, st in rows.items() if st == "sent"} >= set(USERS) - best
    held = {u for u, st in rows.items() if st == "deferred"}
    assert held <= best  # only the optimal arm is ever held
    async with client.get(f"{engine.base_url}/v1/experiments/timing/results") as r:
        arms = (await r.json())["analysis"]["variants"]
    # a held notification is not counted until it is settled: the arm is not shown as undelivered
    assert arms[1]["users"] == len(best) - len(held) and arms[1]["counts"]["delivered"] == arms[1]["users"]
