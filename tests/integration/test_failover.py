"""Failover and the breaker through a running engine: the first email provider
(an SMTP server that is not there) fails, the second (SendGrid's API on
loopback) delivers; once the first's breaker opens, it is not called at all."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from engine.embedded import free_port
from infra.config import ProviderConfig
from policy.types import UserProfile
from sandbox import SendGridSink
from tests.integration.helpers import api_session, engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

API_KEY = "SG.failover-test.key"


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, tmp_path_factory):
    sink = SendGridSink(API_KEY)
    await sink.start()
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), channels=("email",))
    dead = ProviderConfig(name="smtp-dead", type="smtp", priority=1, max_attempts=1, breaker_failures=3,
                          breaker_recovery_s=600, timeout_s=2,
                          settings={"host": "127.0.0.1", "port": free_port(), "sender": "t@tidings.test"})
    live = ProviderConfig(name="sendgrid-local", type="sendgrid", priority=2,
                          settings={"api_key": API_KEY, "sender": "t@tidings.test", "base_url": sink.url})
    email = msgspec.structs.replace(cfg.channels["email"], shards=1, providers=[dead, live])
    cfg = msgspec.structs.replace(cfg, channels={"email": email})
    async with serving(cfg, database_url, [UserProfile(user_id="fo", addresses={"email": "fo@example.test"})]) as eng:
        eng.sink = sink
        yield eng
    await sink.stop()


async def test_failover_then_the_breaker_keeps_the_dead_provider_out(engine):
    ids = []
    async with api_session() as s:
        for i in range(8):  # one at a time: the breaker sees the failures in order
            nid = str(uuid.uuid4())
            ids.append(nid)
            async with s.post(f"{engine.base_url}/v1/notifications", json={
                    "id": nid, "user_id": "fo", "category": "job_alerts", "channels": ["email"],
                    "content": {"subject": f"s{i}", "text": "t"}}) as r:
                assert r.status == 202
            await wait_rows(engine.pool, [nid], 1)
    rows = await engine.pool.fetch(
        "SELECT notification_id::text AS id, status, provider, timeline FROM delivery_tracking "
        "WHERE notification_id = ANY($1::uuid[])", ids)
    by_id = {r["id"]: r for r in rows}
    assert all(by_id[n]["status"] == "sent" and by_id[n]["provider"] == "sendgrid-local" for n in ids)
    tried = [[a["provider"] for a in msgspec.json.decode(by_id[n]["timeline"])] for n in ids]
    assert tried[:3] == [["smtp-dead", "sendgrid-local"]] * 3  # failed over, three times
    assert tried[3:] == [["sendgrid-local"]] * 5  # breaker open: the dead one is not called
