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


def generation(cfg, run: str = "g1") -> Generation:
    return Generation(run, Layout.of(cfg, run), shared_ray=True, fingerprint="f")


async def first_member(database_url: str, cfg, run: str = "g1") -> Claim:
    claim = await Claim.join(database_url, cfg)
    assert claim.alone
    await claim.record(generation(cfg, run))
    await claim.joined(run)
    return claim


async def next_member(database_url: str, cfg, run: str = "g1") -> Claim:
    claim = await Claim.join(database_url, cfg)
    assert not claim.alone
    await claim.joined(run)
    return claim


@pytest.fixture
async def admin(cfg, database_url):
    conn = await asyncpg.connect(database_url, server_settings={"search_path": cfg.database.schema})
    yield conn
    await conn.close()


async def lose_session(admin: asyncpg.Connection, claim: Claim) -> None:
    await admin.execute("SELECT pg_terminate_backend($1)", claim.conn.get_server_pid())
    for _ in range(50):
        if claim.conn.is_closed():
            return
        await asyncio.sleep(0.1)


async def test_the_first_starts_a_generation_others_join_it_and_the_last_ends_it(cfg, database_url):
    first = await Claim.join(database_url, cfg)
    assert first.alone and await first.previous() is None
    gen = generation(cfg)
    await first.record(gen)
    await first.joined(gen.run)
    assert first.holds() and not first.alone

    second = await Claim.join(database_url, cfg)
    assert not second.alone
    assert await second.previous() == gen  # what it joins
    await second.joined(gen.run)

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
    await starting.record(generation(cfg))
    await starting.joined("g1")
    second = await asyncio.wait_for(waiting, 10)
    assert not second.alone
    await second.close()
    await starting.close()


async def test_a_failed_join_ends_the_actors_only_when_no_member_is_left(cfg, database_url):
    first = await first_member(database_url, cfg)
    refused = await Claim.join(database_url, cfg)  # say its layout differed: it never joined
    assert await refused.leave() is False  # a member runs: its actors stay
    await refused.close()  # and its setup lock goes with its session
    late = await Claim.join(database_url, cfg, wait_s=2)
    assert not late.alone
    # the only member stops while this one joins: it gives up waiting and leaves the actors...
    assert await first.leave(wait_s=0.3) is False
    await first.close()
    # ...so the joiner, failing now, is the last and ends them
    assert await late.leave() is True
    await late.close()


async def test_one_member_leads_and_another_takes_over_when_it_is_gone(cfg, database_url):
    first = await first_member(database_url, cfg)
    second = await Claim.join(database_url, cfg)
    assert await second.lead() is False  # not a member yet
    await second.joined("g1")
    assert await first.lead() is True and await first.lead() is True
    assert await second.lead() is False
    await first.close()  # killed: its session ends
    assert await second.lead() is True
    await second.close()


async def test_an_engine_of_the_version_before_is_not_joined(cfg, database_url):
    old = await asyncpg.connect(database_url)
    try:
        await old.execute("SELECT pg_advisory_lock(hashtext($1))",
                          f"tidings:engine:{cfg.database.schema}:{cfg.nats.stream}")
        with pytest.raises(ConfigError, match="earlier version"):
            await Claim.join(database_url, cfg)
    finally:
        await old.close()
    fresh = await Claim.join(database_url, cfg)
    assert fresh.alone
    await fresh.close()


async def test_a_member_takes_its_place_again_after_its_session_is_lost(cfg, database_url, admin):
    member = await first_member(database_url, cfg)
    other = await next_member(database_url, cfg)
    try:
        await lose_session(admin, member)
        assert not member.holds()
        assert await member.keep() is True and member.holds()
        assert await member.keep() is True  # answers: nothing to do
        await other.close()
        # lost again, and meanwhile another instance found itself alone and started anew
        await lose_session(admin, member)
        alone = await Claim.join(database_url, cfg)
        assert alone.alone
        await alone.record(generation(cfg, "g2"))
        await alone.joined("g2")
        assert await member.keep() is False and not member.holds()
        await alone.close()
        assert await member.keep() is False  # for good: its handles are on the ended generation
    finally:
        await member.close()


async def test_a_member_whose_generation_ended_while_it_was_away_does_not_come_back(cfg, database_url, admin):
    member = await first_member(database_url, cfg)
    last = await next_member(database_url, cfg)
    try:
        await lose_session(admin, member)
        assert await last.leave() is True  # alone now: it ends the generation
        await last.forget("g1")
        await last.close()
        assert await member.keep() is False  # the lock is free, but its generation is gone
        fresh = await Claim.join(database_url, cfg)
        assert fresh.alone  # and it does not hold the next start back
        await fresh.close()
    finally:
        await member.close()


async def test_members_taking_their_locks_again_after_a_restart_are_not_taken_for_gone(cfg, database_url, admin):
    member = await first_member(database_url, cfg)
    leaving = await next_member(database_url, cfg)
    try:
        await lose_session(admin, member)
        # as if the server had restarted since the member was last seen (a restart ends every session)
        await admin.execute("UPDATE engine_members SET server_started = server_started - interval '1 hour' "
                            "WHERE instance = $1", member.instance)
        assert await leaving.leave() is False  # not the last: the member is taking its lock again
        await leaving.close()
        starting = asyncio.ensure_future(Claim.join(database_url, cfg))
        await asyncio.sleep(1.5)
        assert not starting.done()  # waits for the member rather than ending its actors
        assert await member.keep() is True
        joined = await asyncio.wait_for(starting, 10)
        assert not joined.alone
        await joined.close()
    finally:
        await member.close()


async def test_a_member_that_died_on_a_running_server_is_gone_at_once(cfg, database_url, admin):
    member = await first_member(database_url, cfg)
    try:
        await lose_session(admin, member)  # killed: its row stays, its session is gone, the server ran on
        fresh = await asyncio.wait_for(Claim.join(database_url, cfg), 5)
        assert fresh.alone
        await fresh.close()
    finally:
        await member.close()
