"""Our own open pixel and click redirect through a running engine: an HTML email
goes out over SMTP with the pixel and its links rewritten; loading the pixel
records "opened" (source pixel), following a link records "clicked" (source
link) and redirects to it; a token that does not verify records nothing."""

from __future__ import annotations

import re
import uuid

import aiohttp
import pytest

from engine.embedded import free_port
from engine.http.links import GIF
from infra.tuning import with_provider_settings
from policy import links
from policy.types import UserProfile
from tests.integration.helpers import api_session, engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

SECRET = "links-test-secret-0123456789"
UNSUBSCRIBE = "https://unsub.test/{user_id}/{notification_id}"
HTML = ('<html><body><p>New jobs for you</p>'
        '<a href="https://jobs.example.test/list?id=7&amp;ref=mail">see them</a> '
        '<a href="mailto:help@example.test">help</a> '
        '<a href="https://unsub.test/e1/{nid}">unsubscribe</a></body></html>')


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, smtp, tmp_path_factory):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        channels=("email",), overrides={"engagement": {"base_url": base + "/", "secret": SECRET}})
    cfg = with_provider_settings(cfg, "email", unsubscribe_url=UNSUBSCRIBE)
    people = [UserProfile(user_id="e1", addresses={"email": "e1@example.test"})]
    async with serving(cfg, database_url, people, port=port) as eng:
        yield eng


async def send(engine, session: aiohttp.ClientSession) -> str:
    nid = str(uuid.uuid4())
    async with session.post(f"{engine.base_url}/v1/notifications", json={
            "id": nid, "user_id": "e1", "category": "job_alerts", "channels": ["email"],
            "content": {"subject": "Jobs", "text": "New jobs", "html": HTML.replace("{nid}", nid)}}) as r:
        assert r.status == 202, await r.text()
    assert await wait_rows(engine.pool, [nid], 1) == 1
    return nid


async def events(engine, nid: str) -> list[tuple[str, str]]:
    return [(r["type"], r["source"]) for r in await engine.pool.fetch(
        "SELECT type, source FROM engagement_events WHERE notification_id = $1 ORDER BY id", uuid.UUID(nid))]


async def status(engine, nid: str) -> tuple[str, str]:
    row = await engine.pool.fetchrow("SELECT status, reason FROM delivery_tracking WHERE notification_id = $1",
                                     uuid.UUID(nid))
    return row["status"], row["reason"]


async def test_opens_and_clicks_of_an_smtp_email_are_recorded(engine, smtp):
    async with api_session() as s:
        nid = await send(engine, s)
        assert await status(engine, nid) == ("sent", "ok")
        mail = next(m for m in smtp.messages if m.notification_id == nid)
        html = mail.html
        pixel = re.search(r'<img src="(http://[^"]+/v1/t/o/([A-Za-z0-9_-]+)\.gif)" width="1" height="1"', html)
        assert pixel is not None and html.index(pixel.group(0)) < html.index("</body>"), html
        clicks = re.findall(r'href="(http://127\.0\.0\.1:\d+/v1/t/c/([A-Za-z0-9_-]+))"', html)
        assert len(clicks) == 1, html  # the job link; not mailto, not the List-Unsubscribe URL
        assert 'href="mailto:help@example.test"' in html and f'href="https://unsub.test/e1/{nid}"' in html
        # the engine's own one-click link replaces the provider's configured one (no user id in it)
        unsub = mail.headers["list-unsubscribe"].strip()
        assert unsub.startswith("<http://127.0.0.1:") and "/u/" in unsub and "e1" not in unsub.split("/u/")[1]
        click_url, click_token = clicks[0]

        # tokens that do not verify: nothing is recorded
        tampered = click_token[:-1] + ("A" if click_token[-1] != "A" else "B")
        async with s.get(f"{engine.base_url}/v1/t/c/{tampered}", allow_redirects=False) as r:
            assert r.status == 404 and "Location" not in r.headers
        async with s.get(f"{engine.base_url}/v1/t/c/{pixel.group(2)}", allow_redirects=False) as r:
            assert r.status == 404  # an open token is not a click
        async with s.get(f"{engine.base_url}/v1/t/o/{pixel.group(2)[:-2]}xx.gif") as r:
            assert r.status == 200 and await r.read() == GIF  # the image anyway, nothing recorded
        assert await events(engine, nid) == [] and await status(engine, nid) == ("sent", "ok")

        async with s.get(pixel.group(1)) as r:
            assert r.status == 200 and r.content_type == "image/gif" and await r.read() == GIF
            assert "no-store" in r.headers["Cache-Control"]
        assert await events(engine, nid) == [("opened", "pixel")]
        assert await status(engine, nid) == ("delivered", "opened")

        async with s.get(click_url, allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "https://jobs.example.test/list?id=7&ref=mail"
        async with s.get(click_url, allow_redirects=False) as r:
            assert r.status == 302  # again: redirected, stored once
        async with s.get(pixel.group(1)) as r:
            assert r.status == 200
        assert await events(engine, nid) == [("opened", "pixel"), ("clicked", "link")]
        async with s.get(f"{engine.base_url}/v1/notifications/{nid}") as r:
            timeline = (await r.json())["channels"][0]["timeline"]
        assert [(e["event"], e["source"]) for e in timeline if "source" in e] == [("opened", "pixel"),
                                                                                  ("clicked", "link")]


async def test_a_click_without_a_sent_row_still_redirects(engine):
    secret = SECRET.encode()
    nid = str(uuid.uuid4())  # never sent: no tracking row
    token = links.sign(secret, "c", nid, "email", "https://example.test/x")
    async with api_session() as s:
        async with s.get(f"{engine.base_url}/v1/t/c/{token}", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "https://example.test/x"
        async with s.get(f"{engine.base_url}/v1/t/o/{links.sign(secret, 'o', nid, 'email')}.gif") as r:
            assert r.status == 200 and await r.read() == GIF
    assert await events(engine, nid) == []
