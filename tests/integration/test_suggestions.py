"""Preference suggestions and the drift report through a real engine
(policy/suggestions.py, engine/http/suggestions.py): emails of a category never
opened make a weekly-digest suggestion with its evidence; accepting it changes the
preferences through the audited path; the drift report finds a category whose open
rate fell."""

from __future__ import annotations

import time
import uuid

import pytest

from policy.types import UserProfile
from tests.integration.helpers import engine_config, send_email, serving

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, smtp, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        channels=("email",))
    async with serving(cfg, database_url, [UserProfile(user_id="skimmer", addresses={"email": "s@example.test"})]) \
            as eng:
        yield eng


async def test_an_unread_category_is_suggested_as_a_digest_and_accepting_it_changes_the_preferences(engine, client):
    for _ in range(10):
        await send_email(engine, "skimmer", "marketing")
    opened = await send_email(engine, "skimmer", "messages")
    async with client.post(f"{engine.base_url}/v1/notifications/{opened}/events",
                           json={"channel": "email", "type": "opened"}) as r:
        assert r.status == 201
    base = f"{engine.base_url}/v1/users/skimmer/preferences/suggestions"
    async with client.get(base) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
        got, seen = body["suggestions"], r.headers["ETag"]
    assert seen == f'"{body["version"]}"'
    assert [(s["kind"], s["category"], s["evidence"]["sent"]) for s in got] == [("digest_unread", "marketing", 10)]
    assert got[0]["set"] == [{"channel": "email", "category": "marketing", "frequency": "weekly"}]

    # the preferences change after the suggestion was read: accepting what was read is refused
    quiet = {"channel": "email", "category": "marketing", "quiet_hours": [{"start": "22:00", "end": "07:00"}]}
    async with client.patch(f"{engine.base_url}/v1/users/skimmer/preferences", json={"set": [quiet]}) as r:
        assert r.status == 200, await r.text()
    async with client.post(f"{base}/{got[0]['id']}", headers={"If-Match": seen}) as r:
        assert r.status == 409, await r.text()
    async with client.post(f"{base}/{got[0]['id']}") as r:  # as it stands now: merged over the new row
        assert r.status == 200, await r.text()
        doc = await r.json()
    (row,) = [p for p in doc["preferences"] if p["channel"] == "email" and p["category"] == "marketing"]
    assert row["frequency"] == "weekly" and row["quiet_hours"][0]["start"] == "22:00"  # set meanwhile: kept
    async with client.get(f"{engine.base_url}/v1/users/skimmer/preferences/changes") as r:
        last = (await r.json())["changes"][-1]
    assert last["source"] == "suggestion"
    async with client.get(base) as r:
        assert (await r.json())["suggestions"] == []  # accepted: the category is digested now
    async with client.post(f"{base}/{got[0]['id']}") as r:
        assert r.status == 404
    async with client.post(f"{base}/not-an-id") as r:
        assert r.status == 422


async def test_the_drift_report_finds_a_fall_in_opens(engine, client):
    rows, events = [], []
    for age_days, n, opened in ((12, 200, 100), (4, 200, 20)):  # 50% a week before, 10% this week (ending 2 days ago)
        for i in range(n):
            nid = uuid.uuid4()
            rows.append((nid, f"d{i}", "email", "drifty", "sent", "ok", time.time() - age_days * 86_400))
            if i < opened:
                events.append((nid, f"d{i}", "email", "opened", time.time() - age_days * 86_400 + 60, "api"))
    await engine.pool.executemany(
        "INSERT INTO delivery_tracking (notification_id, user_id, channel, category, status, reason, created_at, "
        "completed_at) VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7), to_timestamp($7))", rows)
    await engine.pool.executemany("INSERT INTO engagement_events (notification_id, user_id, channel, type, at, source) "
                                  "VALUES ($1, $2, $3, $4, to_timestamp($5), $6)", events)
    async with client.get(f"{engine.base_url}/v1/analytics/drift?days=7") as r:
        assert r.status == 200, await r.text()
        pairs = {(p["category"], p["channel"]): p for p in (await r.json())["pairs"]}
    drifty = pairs[("drifty", "email")]
    assert drifty["before"]["rate"] == 0.5 and drifty["after"]["rate"] == 0.1
    assert drifty["significant"] and drifty["difference"] == -0.4
    async with client.get(f"{engine.base_url}/v1/analytics/drift?days=90") as r:
        assert r.status == 400 or r.status == 422
