"""RFC 8058 one-click unsubscribe through a running engine: a marketing email
goes out over SMTP with List-Unsubscribe (the engine's sealed link, no user id)
and List-Unsubscribe-Post; the GET page asks and changes nothing; the POST a
mailbox provider sends, without any credentials, opts the person out of that
category by email inside the request (audited, once), and the next such email
is suppressed by that preference. A transactional email carries no link."""

from __future__ import annotations

import re
import uuid

import aiohttp
import pytest

from engine.embedded import free_port
from policy.types import UserProfile
from tests.integration.helpers import api_session, engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

SECRET = "unsubscribe-test-secret-0123456789"
PUBLIC = "https://notify.example.test"  # what the links say; the test calls the engine where it listens
POSTAL = "Tidings Inc., 1 Main Street, Springfield <IL>"


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, smtp, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        channels=("email",), overrides={"engagement": {"opens": False, "clicks": False,
                                                                       "base_url": PUBLIC, "secret": SECRET},
                                                        "compliance": {"postal_address": POSTAL}})
    people = [UserProfile(user_id="unsub-1", addresses={"email": "unsub-1@example.test"}),
              UserProfile(user_id="unsub-2", addresses={"email": "unsub-2@example.test"})]
    async with serving(cfg, database_url, people, port=free_port()) as eng:
        yield eng


async def send(engine, user_id: str, category: str) -> str:
    nid = str(uuid.uuid4())
    async with api_session() as s, s.post(f"{engine.base_url}/v1/notifications", json={
            "id": nid, "user_id": user_id, "category": category, "channels": ["email"],
            "content": {"subject": "News", "text": "Hello", "html": "<p>Hello</p>"}}) as r:
        assert r.status == 202, await r.text()
    assert await wait_rows(engine.pool, [nid], 1) == 1
    return nid


async def outcome(engine, nid: str) -> tuple[str, str]:
    row = await engine.pool.fetchrow("SELECT status, reason FROM delivery_tracking WHERE notification_id = $1",
                                     uuid.UUID(nid))
    return row["status"], row["reason"]


async def test_one_click_opts_out_of_that_category_by_email_and_the_next_one_is_suppressed(engine, smtp):
    nid = await send(engine, "unsub-1", "marketing")
    mail = next(m for m in smtp.messages if m.notification_id == nid)
    header = mail.headers["list-unsubscribe"].strip()
    found = re.fullmatch(r"<(https://notify\.example\.test/u/([A-Za-z0-9_-]+))>", header)
    assert found is not None, header
    assert "unsub-1" not in header and mail.headers["list-unsubscribe-post"].strip() == "List-Unsubscribe=One-Click"
    url = f"{engine.base_url}/u/{found.group(2)}"
    # CAN-SPAM: the postal address and the same link at the end of both parts
    assert f"\n-- \n{POSTAL}\nUnsubscribe: {found.group(1)}\nManage your preferences: {PUBLIC}/p/" in mail.text
    assert "Tidings Inc., 1 Main Street, Springfield &lt;IL&gt;" in mail.html and found.group(1) in mail.html

    async with aiohttp.ClientSession() as anyone:  # no credentials at all
        async with anyone.get(url) as r:
            page = await r.text()
            assert r.status == 200 and 'name="List-Unsubscribe" value="One-Click"' in page and "marketing" in page
        assert await outcome(engine, await send(engine, "unsub-1", "marketing")) == ("sent", "ok")  # GET changed nothing

        async with anyone.post(url, data={"List-Unsubscribe": "Yes"}) as r:
            assert r.status == 400
        async with anyone.post(url, data={"List-Unsubscribe": "One-Click"}) as r:
            assert r.status == 200 and "no longer" in await r.text()
        async with api_session() as admin, admin.get(f"{engine.base_url}/v1/users/unsub-1/preferences") as r:
            version = (await r.json())["version"]
        async with anyone.post(url, data={"List-Unsubscribe": "One-Click"}) as r:  # again: the same answer
            assert r.status == 200
        async with api_session() as admin, admin.get(f"{engine.base_url}/v1/users/unsub-1/preferences") as r:
            assert (await r.json())["version"] == version  # and no second change

        tampered = found.group(2)[:-2] + ("AA" if not found.group(2).endswith("AA") else "BB")
        for method in ("GET", "POST"):
            async with anyone.request(method, f"{engine.base_url}/u/{tampered}",
                                      data={"List-Unsubscribe": "One-Click"}) as r:
                assert r.status == 404

    status, reason = await outcome(engine, await send(engine, "unsub-1", "marketing"))
    assert status == "suppressed" and reason.startswith("pref."), reason
    assert await outcome(engine, await send(engine, "unsub-2", "marketing")) == ("sent", "ok")  # nobody else
    assert await outcome(engine, await send(engine, "unsub-1", "job_alerts")) == ("sent", "ok")  # nothing else
    actors = [r[0] for r in await engine.pool.fetch(
        "SELECT performed_by FROM preference_audit_log WHERE user_id = 'unsub-1' AND action LIKE 'preferences.%'")]
    assert actors == ["unsubscribe:one-click"]


async def test_a_transactional_email_carries_no_unsubscribe_link(engine, smtp):
    nid = await send(engine, "unsub-2", "security")
    mail = next(m for m in smtp.messages if m.notification_id == nid)
    assert "list-unsubscribe" not in mail.headers and "list-unsubscribe-post" not in mail.headers
    assert POSTAL not in mail.text  # the footer is for the marketing categories


async def test_one_click_makes_a_temporary_or_narrower_opt_out_permanent_and_whole(engine, smtp):
    """A temporary opt-out is made permanent, a row for one content type that
    would override the category's goes; a category the policy does not know, or a
    body that is not a form, gets no link or a 400, never a 500."""
    nid = await send(engine, "unsub-2", "marketing")  # the link comes from an earlier message
    mail = next(m for m in smtp.messages if m.notification_id == nid)
    async with api_session() as admin:
        async with admin.patch(f"{engine.base_url}/v1/users/unsub-2/preferences", json={"set": [
                {"channel": "email", "category": "marketing", "enabled": False, "expires_at": 3900000000},
                {"channel": "email", "category": "marketing", "content_type": "promo", "enabled": True}]}) as r:
            assert r.status == 200, await r.text()
    url = engine.base_url + "/u/" + mail.headers["list-unsubscribe"].strip()[1:-1].rsplit("/u/", 1)[1]
    async with aiohttp.ClientSession() as anyone:
        async with anyone.post(url, data=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}) as r:
            assert r.status == 400
        async with anyone.post(url, data={"List-Unsubscribe": "One-Click"}) as r:
            assert r.status == 200
    async with api_session() as admin, admin.get(f"{engine.base_url}/v1/users/unsub-2/preferences") as r:
        rows = [p for p in (await r.json())["preferences"] if p.get("category") == "marketing"]
    assert [(p.get("content_type", "*"), p["enabled"], p.get("expires_at")) for p in rows] == [("*", False, None)]

    other = await send(engine, "unsub-2", "newsletters")  # not among [preferences] categories: cannot be opted out
    mail = next(m for m in smtp.messages if m.notification_id == other)
    assert "notify.example.test/u/" not in mail.headers.get("list-unsubscribe", "")  # (the provider's own may be)
