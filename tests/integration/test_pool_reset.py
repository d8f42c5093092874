"""Pools whose users leave nothing in a session (``infra.db.create_pool(session_free=True)``,
the Recorder's and the UserShards'): a connection given back is not reset by a query,
and an open transaction is still rolled back. Against the real PostgreSQL."""

from __future__ import annotations

import pytest

from infra import db

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def last_statement(database_url: str, pid: int) -> str:
    """What the backend ``pid`` ran last, seen from another connection."""
    other = await db.connect(database_url)
    try:
        return await other.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
    finally:
        await other.close()


@pytest.mark.parametrize("session_free", [True, False])
async def test_a_connection_given_back_is_reset_by_a_query_only_when_asked(database_url, session_free):
    pool = await db.create_pool(database_url, max_size=1, session_free=session_free)
    try:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            await conn.fetchval("SELECT 'the last thing this session asked' AS what")
        last = await last_statement(database_url, pid)
        if session_free:
            assert "the last thing this session asked" in last
        else:
            assert "RESET ALL" in last  # asyncpg's default reset query
    finally:
        await pool.close()


async def test_an_open_transaction_is_still_rolled_back(database_url):
    pool = await db.create_pool(database_url, max_size=1, session_free=True)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TEMP TABLE kept (n int)")  # a session's table stays (the Recorder's stage)
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")  # unmanaged on purpose: asyncpg logs "Resetting connection with an active transaction"
            await conn.execute("INSERT INTO kept VALUES (1)")
        async with pool.acquire() as conn:  # the same connection (max_size=1)
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM kept") == 0
    finally:
        await pool.close()
