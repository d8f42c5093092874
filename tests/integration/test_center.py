"""The hosted preference center through a running engine: the link at the foot
of an email opens the person's page with no other credential; saving what they
changed goes through their UserShard (versioned, audited as them) and the next
email of a category they turned off is suppressed by that preference; a page
made before another change is answered 409 with their input kept; an expired or
altered link is 404."""

from __future__ import annotations

import re
import time
import uuid

import aiohttp
import pytest

from policy.types import UserProfile
from policy.unsubscribe import seal_center
from tests.integration.helpers import api_session, engine_config, send_email, serving

pytestmark = pytest.mark.integration

SECRET = "center-test-secret-0123456789"
PUBLIC = "https://notify.example.test"


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, smtp, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        channels=("email",), overrides={"engagement": {"opens": False, "clicks": False,
                                                                       "base_url": PUBLIC, "secret": SECRET}})
    people = [UserProfile(user_id="pc-1", addresses={"email": "pc-1@example.test"}),
              UserProfile(user_id="pc-de", addresses={"email": "pc-de@example.test"}, locale="de-AT")]
    async with serving(cfg, database_url, people) as eng:
        yield eng


async def send(engine, category: str) -> str:
    return await send_email(engine, "pc-1", category)


def form_of(page: str) -> dict[str, str]:
    """What a browser would post for the page as it is: the checked boxes, the
    selected options, the text fields and the hidden version."""
    form = {m: "on" for m in re.findall(r'name="([^"]+)" id="[^"]+"\s*checked', page)}
    form |= dict(re.findall(r'name="(freq\.[^"]+)" id="[^"]+">\s*(?:<option value="[^"]+" >[^<]*</option>)*'
                            r'<option value="([^"]+)" selected', page))
    for name in ("version", "quiet_start", "quiet_end", "timezone"):
        found = re.search(rf'name="{name}"[^>]*value="([^"]*)"', page)
        form[name] = found.group(1) if found else ""
    return form


async def test_the_link_in_an_email_opens_the_page_and_saving_changes_what_is_sent(engine, smtp):
    nid = await send(engine, "job_alerts")
    mail = next(m for m in smtp.messages if m.notification_id == nid)
    link = re.search(r"Manage your preferences: (https://notify\.example\.test/p/([A-Za-z0-9_-]+))", mail.text)
    assert link is not None and "pc-1" not in link.group(1), mail.text
    assert link.group(1) in mail.html
    url = f"{engine.base_url}/p/{link.group(2)}"
    async with api_session() as admin, admin.patch(f"{engine.base_url}/v1/users/pc-1/preferences", json={
            "set": [{"channel": "email", "category": "messages", "enabled": False}]}) as r:
        assert r.status == 200
    async with aiohttp.ClientSession() as person:
        async with person.get(url) as r:
            page = await r.text()
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
        assert 'for="freq.job_alerts"' in page and 'name="on.security.email"' in page and "disabled" in page
        form = form_of(page)
        assert form["on.job_alerts.email"] == "on" and form["timezone"] == "UTC"
        stale = dict(form)

        del form["on.job_alerts.email"]
        assert "on.messages.email" not in form  # shown off
        form["freq.marketing"], form["freq.messages"] = "weekly", "daily"
        async with person.post(url, data=form) as r:
            saved = await r.text()
            assert r.status == 200 and "Saved." in saved, saved
        assert 'id="on.job_alerts.email"\n checked' not in saved and 'id="on.application_updates.email"\n checked' in saved

        stale["quiet_start"], stale["quiet_end"] = "22:00", "07:00"
        async with person.post(url, data=stale) as r:  # made before the save: 409, their input kept
            again = await r.text()
            assert r.status == 409 and 'value="22:00"' in again and "changed somewhere else" in again
        retry = form_of(again)
        retry["quiet_start"] = "22:00"
        async with person.post(url, data={**retry, "quiet_end": ""}) as r:
            assert r.status == 422 and "both a start and an end" in await r.text()

        expired = seal_center(SECRET.encode(), "pc-1", int(time.time()) - 1)
        for bad in (expired, link.group(2)[:-2] + "AA"):
            async with person.get(f"{engine.base_url}/p/{bad}") as r:
                assert r.status == 404

    status = await engine.pool.fetchrow("SELECT status, reason FROM delivery_tracking WHERE notification_id = $1",
                                        uuid.UUID(await send(engine, "job_alerts")))
    assert (status["status"], status["reason"]) == ("suppressed", "pref.category_off")
    async with api_session() as admin, admin.get(f"{engine.base_url}/v1/users/pc-1/preferences") as r:
        rows = (await r.json())["preferences"]
    assert {"channel": "email", "category": "job_alerts", "enabled": False} in rows
    assert {"channel": "email", "category": "marketing", "frequency": "weekly"} in rows
    # a frequency saved on the page keeps what the row already held (here: off, set through the API)
    assert {"channel": "email", "category": "messages", "enabled": False, "frequency": "daily"} in rows
    actors = {r[0] for r in await engine.pool.fetch(
        "SELECT performed_by FROM preference_audit_log WHERE user_id = 'pc-1' AND action LIKE 'preferences.%'")}
    assert "user:pc-1(center)" in actors and len(actors) == 2  # the page's saves, and the API patch above
    async with api_session() as admin:
        async with admin.get(f"{engine.base_url}/v1/users/pc-1/inbox") as r:
            assert (await r.json())["preference_center"] is None  # a key reading the inbox does not get it
        async with admin.post(f"{engine.base_url}/v1/tokens", json={"user_id": "pc-1"}) as r:
            token = (await r.json())["token"]
    async with aiohttp.ClientSession() as person, person.get(
            f"{engine.base_url}/v1/users/pc-1/inbox", headers={"Authorization": f"Bearer {token}"}) as r:
        inbox_link = (await r.json())["preference_center"]  # the person's own inbox shows it
    assert inbox_link.startswith(f"{PUBLIC}/p/") and "pc-1" not in inbox_link


async def test_the_page_speaks_the_persons_language(engine):
    token = seal_center(SECRET.encode(), "pc-de", int(time.time()) + 3600)
    async with aiohttp.ClientSession() as person:
        async with person.get(f"{engine.base_url}/p/{token}") as r:
            page = await r.text()
        assert r.status == 200 and '<html lang="de">' in page and "Deine Benachrichtigungen" in page
        assert ">Speichern</button>" in page and ">wöchentlich gesammelt</option>" in page
        form = form_of(page)
        async with person.post(f"{engine.base_url}/p/{token}", data={**form, "quiet_start": "22:00"}) as r:
            assert r.status == 422 and "Ruhezeiten brauchen Beginn und Ende." in await r.text()
