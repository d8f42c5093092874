"""Who is first and who is last among a deployment's instances (engine/deployment.py),
on the real PostgreSQL: the advisory locks and the generation's row."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from engine import migrations
from engine.deployment import Claim, Generation, Layout
from infra.config import ConfigError
from tests.integration.helpers import drop_schema, engine_config

pytestmark = pytest.mark.integration


@pytest.fixture
async def cfg(nats_url, database_url, tmp_path):
    cfg = engine_config(nats_url, database_url, str(tmp_path), channels=("webhook",), webhook_url="http://127.0.0.1:9")
    await migrations.migrate_url(database_url, cfg.database.schema)
    yield cfg
    await drop_schema(database_url, cfg.database.schema)


async def test_the_first_starts_a_generation_others_join_it_and_the_last_ends_it(cfg, database_url):
    first = await Claim.join(database_url, cfg)
    assert first.alone and await first.previous() is None
    gen = Generation("g1", Layout.of(cfg, "g1"), shared_ray=True, fingerprint="f")
    await first.record(gen)
    await first.joined()
    assert first.holds() and not first.alone

    second = await Claim.join(database_url, cfg)
    assert not second.alone
    assert await second.previous() == gen  # what it joins
    await second.joined()

    assert await first.leave() is False  # the other still runs: the actors stay
    await first.close()
    assert await second.leave() is True  # the last
    await second.forget("g1")
    assert await second.previous() is None
    await second.close()

    # the next start is alone again
    again = await Claim.join(database_url, cfg)
    assert again.alone
    await again.close()


async def test_a_start_waits_for_another_one_and_gives_up_saying_why(cfg, database_url):
    starting = await Claim.join(database_url, cfg)  # holds the setup lock until joined
    with pytest.raises(ConfigError, match="starting or stopping for over"):
        await Claim.join(database_url, cfg, wait_s=0.5)
    waiting = asyncio.ensure_future(Claim.join(database_url, cfg, wait_s=30))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    await starting.joined()
    second = await asyncio.wait_for(waiting, 10)
    assert not second.alone
    await second.close()
    await starting.close()


async def test_a_failed_join_is_never_the_last(cfg, database_url):
    first = await Claim.join(database_url, cfg)
    await first.record(Generation("g1", Layout.of(cfg, "g1"), shared_ray=True, fingerprint="f"))
    await first.joined()
    refused = await Claim.join(database_url, cfg)  # say its layout differed: it never joined
    assert await refused.leave() is False  # so it does not end the others' actors
    await refused.close()  # and its setup lock goes with its session
    late = await Claim.join(database_url, cfg, wait_s=2)
    assert not late.alone
    await late.close()
    await first.close()


async def test_a_member_takes_its_place_again_after_its_session_is_lost(cfg, database_url):
    member = await Claim.join(database_url, cfg)
    await member.joined()
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", member.conn.get_server_pid())
        for _ in range(50):
            if member.conn.is_closed():
                break
            await asyncio.sleep(0.1)
        assert not member.holds()
        assert await member.keep() is True and member.holds()
        # lost again, and meanwhile another instance found itself alone
        await admin.execute("SELECT pg_terminate_backend($1)", member.conn.get_server_pid())
        for _ in range(50):
            if member.conn.is_closed():
                break
            await asyncio.sleep(0.1)
        alone = await Claim.join(database_url, cfg)
        assert alone.alone
        assert await member.keep() is False and not member.holds()
        await alone.close()
        assert await member.keep() is False  # for good: its handles are on the ended generation
    finally:
        await admin.close()
        await member.close()
