"""Message templates through a running engine: stored and versioned over HTTP,
rendered per recipient in their locale (with fallback), errors reported per row."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from policy.types import UserProfile
from tests.integration.helpers import engine_config, serving, wait_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, smtp, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        channels=("email",))
    people = [UserProfile(user_id=f"t{i}", addresses={"email": f"t{i}@example.test"}, locale=loc)
              for i, loc in enumerate(["de-AT", "fr", "en"])]
    async with serving(cfg, database_url, people) as eng:
        yield eng


async def save(client, engine, **part):
    async with client.post(f"{engine.base_url}/v1/templates", json={"id": "job_alert", "channel": "email", **part}) as r:
        return r.status, await r.json()


async def test_templates_render_in_the_recipients_locale(engine, client, smtp):
    status, body = await save(client, engine, subject="{{ n }} new jobs", text="Hello {{ name }}")
    assert status == 201 and body["version"] == 1
    status, body = await save(client, engine, locale="de", subject="{{ n }} neue Jobs", text="Hallo {{ name }}")
    assert status == 201 and body["version"] == 2
    status, body = await save(client, engine, locale="de", subject="{{ n }} broken", text="{% if %}")
    assert status == 422 and body["errors"][0]["field"] == "text"
    async with client.post(f"{engine.base_url}/v1/templates/job_alert/preview",
                           json={"channel": "email", "locale": "de-CH", "data": {"n": 2, "name": "Max"}}) as r:
        preview = await r.json()
    assert preview["content"]["subject"] == "2 neue Jobs" and preview["locale"] == "de"
    before = smtp.count
    ids = [str(uuid.uuid4()) for _ in range(3)]
    batch = [{"id": nid, "user_id": f"t{i}", "category": "job_alerts", "channels": ["email"],
              "template": {"id": "job_alert", "data": {"n": 3, "name": f"user {i}"}}} for i, nid in enumerate(ids)]
    async with client.post(f"{engine.base_url}/v1/notifications", json=batch) as r:
        assert r.status == 202, await r.text()
    await wait_rows(engine.pool, ids, 3)
    for _ in range(50):
        if smtp.count >= before + 3:
            break
        await asyncio.sleep(0.1)
    subjects = {m.rcpt_tos[0]: m.subject for m in smtp.messages[before:]}
    assert subjects == {"t0@example.test": "3 neue Jobs", "t1@example.test": "3 new jobs",
                        "t2@example.test": "3 new jobs"}


async def test_template_errors_are_answered_or_recorded(engine, client):
    await save(client, engine, subject="Hi {{ name }}", text="x")
    async with client.post(f"{engine.base_url}/v1/notifications", json={
            "user_id": "t2", "category": "job_alerts", "channels": ["email"], "template": {"id": "nope"}}) as r:
        body = await r.json()
    assert r.status == 422 and body["errors"][0]["field"] == "$.template.id"
    nid = str(uuid.uuid4())
    async with client.post(f"{engine.base_url}/v1/notifications", json={
            "id": nid, "user_id": "t2", "category": "job_alerts", "channels": ["email"],
            "template": {"id": "job_alert", "data": {}}}) as r:
        assert r.status == 202
    await wait_rows(engine.pool, [nid], 1)
    row = await engine.pool.fetchrow("SELECT status, reason, errors FROM delivery_tracking WHERE notification_id = $1",
                                     uuid.UUID(nid))
    assert (row["status"], row["reason"]) == ("rejected", "template.error")
    assert "missing data" in row["errors"]
