"""Send-time optimization through a real engine (policy/timing.py): a request with
``"deliver": "optimal"`` is held for each recipient until the local hour they have
opened most in (their engagement_events), at the latest by ``deliver_by``; someone
in their best hour gets it at once; malformed timing is refused at the edge."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from infra import dead_letters, streams
from policy.types import UserProfile
from tests.integration.helpers import api_session, engine_config, row_status, serving, wait_rows

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
LATER_HOUR = (NOW.hour + 5) % 24  # "owl" reads then: five hours from now, in UTC


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, webhook_sink, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), webhook_url=webhook_sink.url,
                        channels=("webhook",))
    people = [UserProfile(user_id=u, timezone="UTC") for u in ("owl", "lark", "lark2", "newcomer", "shifter",
                                                                 "shifter2")]
    async with serving(cfg, database_url, people) as eng:
        await reads(eng, "owl", LATER_HOUR)
        yield eng


async def reads(engine, user: str, hour: int) -> None:
    """Ten opens at ``hour`` (UTC) over the last ten days."""
    for d in range(1, 11):
        opened = (datetime.now(UTC) - timedelta(days=d)).replace(hour=hour, minute=20)
        await engine.pool.execute("INSERT INTO engagement_events (notification_id, user_id, channel, type, at, "
                                  "source) VALUES ($1, $2, 'webhook', 'opened', $3, 'api')", uuid.uuid4(), user, opened)


def note(user_id: str, **extra) -> dict:
    return {"id": str(uuid.uuid4()), "user_id": user_id, "category": "job_alerts", "channels": ["webhook"],
            "content": {"text": "new jobs"}, **extra}


async def submit(engine, body: dict) -> tuple[str, str]:
    async with api_session() as s, s.post(f"{engine.base_url}/v1/notifications", json=body) as r:
        assert r.status == 202, await r.text()
    assert await wait_rows(engine.pool, [body["id"]], 1, timeout_s=60) == 1
    return await row_status(engine, body["id"])


async def due_at(engine, nid: str) -> float:
    return await engine.pool.fetchval("SELECT extract(epoch FROM due_at)::float8 FROM scheduled_notifications "
                                      "WHERE notification_id = $1", uuid.UUID(nid))


async def test_each_recipient_gets_it_in_their_own_best_hour(engine):
    owl = note("owl", deliver="optimal", deliver_by=time.time() + 2 * 86_400)
    assert await submit(engine, owl) == ("deferred", "timing.optimized")
    due = datetime.fromtimestamp(await due_at(engine, owl["id"]), UTC)
    assert (due.hour, due.minute) == (LATER_HOUR, 0) and due.timestamp() - time.time() < 6 * 3600
    for lark in ("lark", "lark2"):  # the second only if the hour ended while the first was decided
        hour = datetime.now(UTC).hour
        await reads(engine, lark, hour)  # reads in the hour it is now
        got = await submit(engine, note(lark, deliver="optimal", deliver_by=time.time() + 2 * 86_400))
        if datetime.now(UTC).hour == hour:
            assert got == ("sent", "ok")  # its best hour is now
            break
    else:
        pytest.fail("the hour ended during both tries")


async def test_opens_reported_now_move_a_held_profile_without_waiting_for_its_refresh(engine):
    """Events posted through the API reach the owning UserShard's profile in batches
    (engine/engaged.py): the profile read minutes ago is not read again for 6 h."""
    for user in ("shifter", "shifter2"):  # the second only if the hour ended meanwhile
        hour = datetime.now(UTC).hour
        await reads(engine, user, LATER_HOUR)  # a habit five hours from now
        first = note(user, deliver="optimal", deliver_by=time.time() + 2 * 86_400)
        assert await submit(engine, first) == ("deferred", "timing.optimized")  # the profile is held now
        sent = [note(user) for _ in range(15)]
        for body in sent:
            assert await submit(engine, body) == ("sent", "ok")
        async with api_session() as s:
            for body in sent:  # fifteen opens now: this hour outweighs the habit's ten
                async with s.post(f"{engine.base_url}/v1/notifications/{body['id']}/events",
                                  json={"channel": "webhook", "type": "opened"}) as r:
                    assert r.status == 201, await r.text()
        got: tuple[str, str] = ("", "")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the feed passes them on within half a second
            got = await submit(engine, note(user, deliver="optimal", deliver_by=time.time() + 2 * 86_400))
            if got == ("sent", "ok") or datetime.now(UTC).hour != hour:
                break
            await asyncio.sleep(0.5)
        if datetime.now(UTC).hour == hour:
            assert got == ("sent", "ok")
            break
    else:
        pytest.fail("the hour ended during both tries")


async def test_the_latest_time_bounds_the_wait(engine):
    soon = time.time() + 2 * 3600  # before the owl's hour
    owl = note("owl", deliver="optimal", deliver_by=soon)
    status, reason = await submit(engine, owl)
    if status == "deferred":
        assert reason == "timing.optimized" and await due_at(engine, owl["id"]) <= soon
    else:
        assert (status, reason) == ("sent", "ok")


async def test_malformed_timing_is_refused_at_the_edge(engine, client):
    for extra, field in (({"deliver": "optimal"}, "$.deliver_by"),
                         ({"deliver_by": time.time() + 60}, "$.deliver_by"),
                         ({"deliver": "optimal", "deliver_by": time.time() + 60, "send_at": time.time() + 60},
                          "$.deliver"),
                         ({"deliver": "soon"}, "$.deliver"),
                         ({"deliver": "optimal", "deliver_by": time.time() + 60, "priority": "critical"}, "$.deliver")):
        async with client.post(f"{engine.base_url}/v1/notifications", json=note("owl", **extra)) as r:
            body = await r.json()
            assert r.status == 422 and body["errors"][0]["field"] == field, (extra, body)
    sub = await engine.nc.subscribe(streams.dlq_subject(engine.cfg.nats))
    await engine.js.publish(streams.notify_subject(engine.cfg.nats, "job_alerts"),
                            msgspec.json.encode(note("owl", deliver="optimal")))
    msg = await sub.next_msg(timeout=15)
    headers = msg.headers or {}
    assert headers.get(dead_letters.REASON) == "payload.invalid" and "deliver_by" in headers.get(dead_letters.ERROR, "")
    await sub.unsubscribe()
