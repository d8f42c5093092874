"""Batches of keys are looked up by index even in tables PostgreSQL has no
statistics for (just bulk-loaded; autovacuum off or not yet round): the
plan ``infra.db.keys`` gives, against the plan a plain ``= ANY($1)`` gets."""

from __future__ import annotations

import json
import uuid

import pytest

from infra import db
from stores import state, tracking
from tests.integration.helpers import migrated_schema

pytestmark = pytest.mark.integration

ROWS = 50_000
BATCH = 5_000


@pytest.fixture
async def loaded(database_url):
    """A migrated schema with ROWS users, their keys, addresses, preferences and
    tracking rows COPYed in, never analyzed."""
    async with migrated_schema(database_url, "t_plans_") as schema:
        conn = await db.connect(database_url, schema=schema)
        try:
            for table in ("users", "user_keys", "user_addresses", "user_preferences", "delivery_tracking"):
                await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
            users = [f"u{i}" for i in range(ROWS)]
            await conn.copy_records_to_table("users", records=[(u,) for u in users], columns=["user_id"])
            await conn.copy_records_to_table("user_keys", records=[(u, "m1", b"k" * 40) for u in users],
                                             columns=["user_id", "master_id", "wrapped"])
            await conn.copy_records_to_table("user_addresses", records=[(u, "email", b"s", b"b") for u in users],
                                             columns=["user_id", "channel", "sealed", "blind"])
            await conn.copy_records_to_table(
                "user_preferences", columns=["user_id", "preference_type", "channel", "category", "value"],
                records=[(u, "channel", "email", "jobs", '{"enabled": false}') for u in users])
            nids = [uuid.uuid4() for _ in range(ROWS)]
            await conn.copy_records_to_table(
                "delivery_tracking", columns=["notification_id", "user_id", "channel", "category", "status", "reason"],
                records=[(n, u, "email", "jobs", "sent", "sent") for n, u in zip(nids, users, strict=True)])
            assert await conn.fetchval("SELECT count(*) FROM pg_stats WHERE schemaname = $1", schema) == 0
            yield conn, users, nids
        finally:
            await conn.close()


def scans(plan: str) -> set[tuple[str, str]]:
    """(node type, relation) of every scan in an EXPLAIN (FORMAT JSON) answer."""
    found: set[tuple[str, str]] = set()

    def walk(node: dict) -> None:
        if "Relation Name" in node:
            found.add((node["Node Type"], node["Relation Name"]))
        for child in node.get("Plans", []):
            walk(child)

    walk(json.loads(plan)[0]["Plan"])
    return found


async def test_a_batch_of_keys_is_probed_by_index_in_a_table_without_statistics(loaded):
    conn, users, nids = loaded
    some_ids, some_users = [str(n) for n in nids[:BATCH]], users[:BATCH]
    plain = await conn.fetchval("EXPLAIN (FORMAT JSON) SELECT status FROM delivery_tracking "
                                "WHERE notification_id = ANY($1::uuid[])", some_ids)
    assert ("Seq Scan", "delivery_tracking") in scans(plain)  # what the engine's lookups avoid

    recorded = scans(await conn.fetchval("EXPLAIN (FORMAT JSON) " + tracking.RECORDED, some_ids))
    assert not any(kind == "Seq Scan" and rel == "delivery_tracking" for kind, rel in recorded), recorded
    loads = scans(await conn.fetchval("EXPLAIN (FORMAT JSON) " + state.LOAD_STATES, some_users))
    assert not any(kind == "Seq Scan" and rel in ("users", "user_keys") for kind, rel in loads), loads

    for sql in (state.LOAD_PREFS, state.LOAD_ADDRESSES, state.LOAD_SUPPRESSED):
        found = scans(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, some_users))
        assert not any(kind == "Seq Scan" and rel in ("user_preferences", "user_addresses") for kind, rel in found)

    assert len(await tracking.recorded(conn, some_ids)) == BATCH  # and they answer what they did
    assert {r[0] for r in await conn.fetch(state.LOAD_STATES, some_users)} == set(some_users)
    assert len(await conn.fetch(state.LOAD_PREFS, some_users)) == BATCH

    await conn.execute("ANALYZE")  # with statistics, still by index
    recorded = scans(await conn.fetchval("EXPLAIN (FORMAT JSON) " + tracking.RECORDED, some_ids))
    assert not any(kind == "Seq Scan" and rel == "delivery_tracking" for kind, rel in recorded), recorded


async def test_states_written_back_by_one_statement_find_their_rows_by_index(loaded):
    """A chunk's assembled states are stored by one UPDATE joined to the batch;
    the bare arrays' custom plan seq-scans ``users``, the engine's does not. Only
    rows still without a state, at the version read, are written."""
    conn, users, _ = loaded
    chosen = users[:BATCH]
    args = (chosen, [b"s"] * BATCH, [0] * BATCH)
    bare = state.WRITE_BACK.replace("(SELECT $1::text[]), (SELECT $2::bytea[]), (SELECT $3::bigint[])",
                                    "$1::text[], $2::bytea[], $3::bigint[]")
    assert bare != state.WRITE_BACK
    assert ("Seq Scan", "users") in scans(await conn.fetchval("EXPLAIN (FORMAT JSON) " + bare, *args))
    found = scans(await conn.fetchval("EXPLAIN (FORMAT JSON) " + state.WRITE_BACK, *args))
    assert ("Seq Scan", "users") not in found, found

    await conn.execute("UPDATE users SET prefs_version = 1 WHERE user_id = $1", chosen[0])  # a writer moved on
    await conn.execute("UPDATE users SET state = 'w' WHERE user_id = $1", chosen[1])  # a writer stored one
    assert await conn.execute(state.WRITE_BACK, *args) == f"UPDATE {BATCH - 2}"
    assert await conn.fetchval("SELECT count(*) FROM users WHERE state = 's'") == BATCH - 2
    assert await conn.fetchval("SELECT state FROM users WHERE user_id = $1", chosen[1]) == b"w"
