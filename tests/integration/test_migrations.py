"""Migrations apply in order, reverse completely with their down scripts, and
apply again; the CLI does both."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from engine import migrations
from tests.integration.helpers import drop_schema

pytestmark = pytest.mark.integration


async def tables(conn, schema: str) -> set[str]:
    return {r[0] for r in await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)}


async def test_every_migration_reverses_and_applies_again(database_url):
    schema = f"mig_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        applied = await migrations.migrate(conn, schema)
        assert applied == [f"{v:03d}_{n}" for v, n, _ in migrations.files()]
        full = await tables(conn, schema)
        assert {"users", "user_preferences", "scheduled_notifications", "digest_buckets"} <= full
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute("INSERT INTO users (user_id) VALUES ('m1')")
        await conn.execute("INSERT INTO user_preferences (user_id, preference_type, channel, category, value, "
                           "context_key) VALUES ('m1', 'contextual', 'push', '*', '{\"enabled\": false}', 'device=a'),"
                           " ('m1', 'contextual', 'push', '*', '{\"enabled\": false}', 'device=b')")
        reversed_ = await migrations.rollback(conn, 2, schema)
        assert reversed_ == [f"{v:03d}_{n}" for v, n, _ in reversed(migrations.files()) if v > 2]
        assert await conn.fetchval("SELECT count(*) FROM user_preferences") == 1  # the old key holds one
        assert await migrations.rollback(conn, 0, schema) == ["002_broadcasts", "001_core"]
        assert await tables(conn, schema) == {"schema_migrations"}
        assert await migrations.migrate(conn, schema) == applied
        assert await tables(conn, schema) == full
    finally:
        await conn.close()
        await drop_schema(database_url, schema)


async def test_026_down_rewrites_cancelled_without_a_status_event(database_url):
    """026's down turns a 'cancelled' row 'suppressed' (reason still 'cancelled')
    without a status event: the rewrite is bookkeeping, nothing was delivered."""
    schema = f"mig_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.migrate(conn, schema)
        await conn.execute(f'SET search_path TO "{schema}"')
        # 026 adds the CHECK NOT VALID (no scan under its ACCESS EXCLUSIVE lock); 027 validates it
        assert await conn.fetchval("SELECT convalidated FROM pg_constraint WHERE conname = "
                                   "'delivery_tracking_status_check' AND connamespace = $1::regnamespace", schema)
        await conn.execute(
            "INSERT INTO delivery_tracking (notification_id, user_id, channel, category, status, reason)"
            " VALUES (gen_random_uuid(), 'm1', 'email', 'c', 'cancelled', 'cancelled'),"
            " (gen_random_uuid(), 'm1', 'push', 'c', 'deferred', 'quiet_hours')")
        await conn.execute("DELETE FROM status_events")
        assert await migrations.rollback(conn, 25, schema) == [
            f"{v:03d}_{n}" for v, n, _ in reversed(migrations.files()) if v > 25]
        rows = {r["channel"]: (r["status"], r["reason"]) for r in await conn.fetch(
            "SELECT channel, status, reason FROM delivery_tracking")}
        assert rows == {"email": ("suppressed", "cancelled"), "push": ("deferred", "quiet_hours")}
        assert await conn.fetchval("SELECT count(*) FROM status_events") == 0
        # the trigger is on again: a later status change still sends its event
        await conn.execute("UPDATE delivery_tracking SET status = 'sent' WHERE channel = 'push'")
        assert await conn.fetchval("SELECT count(*) FROM status_events") == 1
    finally:
        await conn.close()
        await drop_schema(database_url, schema)
