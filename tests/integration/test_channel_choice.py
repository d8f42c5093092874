"""Channel choice through a real engine (policy/choice.py): ``"channel_strategy":
"best"`` sends each recipient one of the candidates, the one their own history of
opens says they read; the others are recorded suppressed, reason
``channel.not_chosen``, with the choice and the scores. The history is made the
way a user makes it: notifications sent and opens reported through the API."""

from __future__ import annotations

import uuid

import pytest

from policy.types import UserProfile
from tests.integration.helpers import engine_config, serving, wait_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, webhook_sink, tmp_path_factory):
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), webhook_url=webhook_sink.url,
                        channels=("webhook", "in_app"), overrides={"preferences": {"choice": {"exploration": 0}}})
    async with serving(cfg, database_url, [UserProfile(user_id=u) for u in ("inboxer", "hooked", "newcomer")]) as eng:
        yield eng


def note(user_id: str, channels: list[str], **extra) -> dict:
    return {"id": str(uuid.uuid4()), "user_id": user_id, "category": "news", "channels": channels,
            "content": {"text": "news"}, **extra}


async def history(engine, client, user: str, opened: str, ignored: str, n: int = 12) -> None:
    """``n`` sends on each channel; the person opens those on ``opened`` only."""
    bodies = [note(user, [ch]) for ch in (opened, ignored) for _ in range(n)]
    for b in bodies:
        async with client.post(f"{engine.base_url}/v1/notifications", json=b) as r:
            assert r.status == 202, await r.text()
    assert await wait_rows(engine.pool, [b["id"] for b in bodies], len(bodies), timeout_s=60) == len(bodies)
    for b in bodies[:n]:
        async with client.post(f"{engine.base_url}/v1/notifications/{b['id']}/events",
                               json={"channel": opened, "type": "opened"}) as r:
            assert r.status == 201, await r.text()


async def chosen(engine, client, user: str) -> tuple[str, str]:
    """A best-of request to ``user``: the channel sent, and the other's detail."""
    body = note(user, ["webhook", "in_app"], channel_strategy="best")
    async with client.post(f"{engine.base_url}/v1/notifications", json=body) as r:
        assert r.status == 202, await r.text()
    assert await wait_rows(engine.pool, [body["id"]], 2, timeout_s=60) == 2
    rows = await engine.pool.fetch("SELECT channel, status, reason, errors->>'detail' AS detail "
                                   "FROM delivery_tracking WHERE notification_id = $1", uuid.UUID(body["id"]))
    sent = [r for r in rows if r["status"] == "sent"]
    other = [r for r in rows if r["status"] == "suppressed"]
    assert len(sent) == 1 and len(other) == 1 and other[0]["reason"] == "channel.not_chosen"
    return sent[0]["channel"], other[0]["detail"]


async def test_each_person_gets_the_channel_they_read(engine, client):
    await history(engine, client, "inboxer", "in_app", "webhook")
    await history(engine, client, "hooked", "webhook", "in_app")
    for _ in range(3):  # seeded per notification: three draws, each must follow the history
        channel, detail = await chosen(engine, client, "inboxer")
        assert channel == "in_app" and detail.startswith("chose in_app; scores webhook ")
        assert (await chosen(engine, client, "hooked"))[0] == "webhook"


async def test_someone_without_history_gets_one_channel_on_the_population_prior(engine, client):
    channel, detail = await chosen(engine, client, "newcomer")
    assert channel in ("webhook", "in_app") and detail.startswith(f"chose {channel}; scores ")
