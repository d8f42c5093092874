"""GDPR access and portability: GET /v1/users/{id}/export answers everything held
about one person (profile, addresses, preferences and their history, consent,
deliveries, audit entries) as JSON-LD or a zip of CSVs, to a key with users:read
or the person's own token (another person's token is refused), and writes the
export to the person's audit chain."""

from __future__ import annotations

import csv
import io
import uuid
import zipfile

import aiohttp
import pytest

from policy.types import UserProfile
from stores import audit
from tests.integration.helpers import api_session, engine_config, serving, wait_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, smtp, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        channels=("email",))
    people = [UserProfile(user_id="gdpr-1", addresses={"email": "gdpr-1@example.test"}, timezone="Europe/Berlin"),
              UserProfile(user_id="gdpr-2", addresses={"email": "gdpr-2@example.test"})]
    async with serving(cfg, database_url, people) as eng:
        yield eng


async def token_for(engine, client, user_id: str) -> str:
    async with client.post(f"{engine.base_url}/v1/tokens", json={"user_id": user_id}) as r:
        assert r.status == 201
        return (await r.json())["token"]


async def test_an_export_holds_everything_about_the_person_in_both_formats(engine):
    async with api_session() as client:
        async with client.patch(f"{engine.base_url}/v1/users/gdpr-1/preferences", json={
                "set": [{"channel": "email", "category": "marketing", "enabled": False,
                         "custom": {"note": "=HYPERLINK(\"x\")"}}]}) as r:
            assert r.status == 200, await r.text()
        nid = str(uuid.uuid4())
        async with client.post(f"{engine.base_url}/v1/notifications", json={
                "id": nid, "user_id": "gdpr-1", "category": "job_alerts", "channels": ["email"],
                "content": {"subject": "Jobs", "text": "New jobs"}}) as r:
            assert r.status == 202
        assert await wait_rows(engine.pool, [nid], 1) == 1

        async with client.get(f"{engine.base_url}/v1/users/gdpr-1/export") as r:
            assert r.status == 200 and r.content_type == "application/ld+json"
            assert r.headers["Cache-Control"] == "no-store"
            doc = await r.json(content_type=None)
        assert doc["@type"] == "PersonalDataExport" and "@vocab" in doc["@context"]
        assert doc["subject"]["user_id"] == "gdpr-1" and doc["subject"]["timezone"] == "Europe/Berlin"
        assert doc["addresses"] == [{"channel": "email", "address": "gdpr-1@example.test", "verified": False,
                                     "updated_at": doc["addresses"][0]["updated_at"]}]
        assert any(p["category"] == "marketing" and p["value"]["enabled"] is False for p in doc["preferences"])
        assert [h["type"] for h in doc["preference_history"]][-1] == "patch"
        assert [(d["notification_id"], d["status"]) for d in doc["deliveries"]] == [(nid, "sent")]
        assert {a["action"] for a in doc["audit"]} >= {"profile.upsert", "preferences.patch"}
        assert "gdpr-2" not in str(doc)  # nobody else's data

        async with client.get(f"{engine.base_url}/v1/users/gdpr-1/export?format=zip") as r:
            assert r.status == 200 and r.content_type == "application/zip"
            z = zipfile.ZipFile(io.BytesIO(await r.read()))
        names = set(z.namelist())
        assert {"README.txt", "profile.csv", "deliveries.csv", "preferences.csv", "audit.csv"} <= names
        deliveries = list(csv.DictReader(io.StringIO(z.read("deliveries.csv").decode())))
        assert [d["notification_id"] for d in deliveries] == [nid]
        prefs = z.read("preferences.csv").decode()
        assert "=HYPERLINK" in prefs and not any(line.startswith("=") for line in prefs.splitlines())

        async with client.get(f"{engine.base_url}/v1/users/gdpr-1/export?format=pdf") as r:
            assert r.status == 400 and (await r.json())["errors"][0]["field"] == "format"
        async with client.get(f"{engine.base_url}/v1/users/nobody-{uuid.uuid4().hex[:6]}/export") as r:
            assert r.status == 404

        own, other = await token_for(engine, client, "gdpr-2"), await token_for(engine, client, "gdpr-1")
    async with aiohttp.ClientSession() as person:
        async with person.get(f"{engine.base_url}/v1/users/gdpr-2/export",
                              headers={"Authorization": f"Bearer {own}"}) as r:
            assert r.status == 200 and (await r.json(content_type=None))["subject"]["user_id"] == "gdpr-2"
        async with person.get(f"{engine.base_url}/v1/users/gdpr-2/export",
                              headers={"Authorization": f"Bearer {other}"}) as r:
            assert r.status == 403
    exports = await engine.pool.fetch("SELECT performed_by, new_value::text FROM preference_audit_log "
                                      "WHERE user_id = 'gdpr-2' AND action = 'gdpr.export'")
    assert [r[0].startswith("user:") for r in exports] == [True]
    assert await engine.pool.fetchval("SELECT count(*) FROM preference_audit_log WHERE action = 'gdpr.export'") == 3
    async with engine.pool.acquire() as conn:  # two formats for gdpr-1, one for gdpr-2; the 400 and 404 wrote nothing
        assert (await audit.verify(conn)).ok  # and the chains they joined still verify
