"""The preference side of PostgreSQL: rows, consent and templates loaded in
bulk; one user's change written with its version check, audit row and change-feed
row in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg
import msgspec
import orjson

from infra.pii import Keyring, PiiError
from policy.decide import split_consent_key
from policy.prefs import Preference, context_key, ordered
from policy.rules import Template
from policy.sharding import stable_hash
from policy.types import UserState
from policy.validate import ConsentRecord
from stores import pii, state
from stores.audit import append_audit

log = logging.getLogger(__name__)


def row_to_pref(channel: str, category: str, content_type: str, context, value, priority: int,
                expires_at: float | None) -> Preference:
    data = orjson.loads(value) if isinstance(value, str) else dict(value)
    data.update(channel=channel, category=category, content_type=content_type, priority=priority)
    if context:
        data["context"] = orjson.loads(context) if isinstance(context, str) else context
    if expires_at is not None:
        data["expires_at"] = expires_at
    return msgspec.convert(data, Preference)


def pref_record(user_id: str, p: Preference, key: bytes | None = None) -> tuple:
    """The ``INSERT_PREFS`` parameters of a row: its custom values out of the
    value, sealed under the user's ``key`` (which a row with any must have)."""
    value = p.value()
    custom = value.pop("custom", None)
    if custom is not None and key is None:
        raise ValueError("a preference row with custom values needs its user's key")
    return (user_id, p.level, p.channel, p.category, p.content_type,
            orjson.dumps(p.context).decode() if p.context else None, context_key(p.context),
            msgspec.json.encode(value).decode(), p.priority, p.expires_at,
            None if custom is None else pii.seal_json(key, pii.CUSTOM, user_id, custom))


INSERT_PREFS = """
INSERT INTO user_preferences (user_id, preference_type, channel, category, content_type, context, context_key,
                              value, priority, expires_at, custom)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8::jsonb, $9, to_timestamp($10), $11)
"""


def open_feed(key: bytes | None, user_id: str, sealed: bytes | None, changes) -> dict:
    """A change-feed document: sealed (from migration 023 on), else as written
    before; ``{}`` when it cannot be opened (no key: the user was erased)."""
    if sealed is not None:
        if key is None:
            return {}
        try:
            return pii.open_json(key, pii.FEED, user_id, sealed)
        except PiiError:
            log.warning("a change-feed document does not open under its user's key")
            return {}
    return orjson.loads(changes) if isinstance(changes, str) else dict(changes or {})


class Change(msgspec.Struct, kw_only=True):
    """One user's committed preference change, as the change feed and NATS carry it."""

    user_id: str
    version: int
    type: str  # put | patch | profile | import
    source: str  # http | nats | import | profile
    preferences: list[Preference]
    consent: dict[str, str]
    timezone: str
    template: str | None
    actor: str | None = None


def doc_json(c: Change) -> dict:
    return {"preferences": msgspec.to_builtins(c.preferences), "consent": c.consent,
            "timezone": c.timezone, "template": c.template}


async def write_change(conn: asyncpg.Connection, ring: Keyring, change: Change, expected: int, old: dict | None,
                       consent_changed: dict[str, str], source_id: str | None = None) -> UserState | None:
    """Commit one user's new preference set if its version is still ``expected``
    (None if not: another writer won). The caller holds the transaction. Returns
    the user's state as now stored (``users.state``, templates not attached)."""
    uid = change.user_id
    bumped = await conn.fetchval(
        "UPDATE users SET prefs_version = prefs_version + 1, timezone = $3, template_id = $4, updated_at = now() "
        "WHERE user_id = $1 AND prefs_version = $2 RETURNING prefs_version",
        uid, expected, change.timezone, change.template)
    if bumped is None:
        inserted = await conn.fetchval(
            "INSERT INTO users (user_id, timezone, template_id, prefs_version, shard_key) "
            "VALUES ($1, $2, $3, 1, $4) ON CONFLICT (user_id) DO NOTHING RETURNING prefs_version",
            uid, change.timezone, change.template, _shard_key(uid)) if expected == 0 else None
        if inserted is None:
            return None
        bumped = inserted
    change.version = bumped
    await conn.execute("DELETE FROM user_preferences WHERE user_id = $1", uid)
    keys = await pii.data_keys(conn, ring, [uid], create=True)  # read once for the whole write
    key = keys[uid]
    if change.preferences:
        await conn.executemany(INSERT_PREFS, [pref_record(uid, p, key) for p in change.preferences])
    await write_consent(conn, key, uid, consent_changed, change.source, change.actor)
    new = doc_json(change)
    fresh = (await state.refresh_states(conn, ring, [uid], keys))[uid]
    await append_audit(conn, ring, [(uid, f"preferences.{change.type}", old, new, change.actor)], keys)
    await conn.execute(
        "INSERT INTO preference_sync_log (user_id, version, sync_type, source, changes, source_id, sealed) "
        "VALUES ($1, $2, $3, $4, '{}', $5, $6)", uid, bumped, change.type, change.source, source_id,
        pii.seal_json(key, pii.FEED, uid, new))
    return fresh


UPSERT_CONSENT = """
INSERT INTO preference_consent (user_id, channel, purpose, status, source, basis, text_version, evidence, expires_at,
                                granted_at, withdrawn_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, to_timestamp($9),
        CASE WHEN $4 = 'granted' THEN now() END, CASE WHEN $4 = 'withdrawn' THEN now() END)
ON CONFLICT (user_id, channel, purpose) DO UPDATE SET status = EXCLUDED.status, source = EXCLUDED.source,
    basis = EXCLUDED.basis, text_version = COALESCE(EXCLUDED.text_version, preference_consent.text_version),
    evidence = COALESCE(EXCLUDED.evidence, preference_consent.evidence), expires_at = EXCLUDED.expires_at,
    granted_at = COALESCE(EXCLUDED.granted_at, preference_consent.granted_at),
    withdrawn_at = COALESCE(EXCLUDED.withdrawn_at, preference_consent.withdrawn_at), updated_at = now()
"""
HISTORY = """
INSERT INTO preference_consent_history (user_id, channel, purpose, status, basis, source, text_version, evidence,
                                        expires_at, actor)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, to_timestamp($9), $10)
"""


async def write_consent(conn: asyncpg.Connection, key: bytes, uid: str, changed: dict[str, str | ConsentRecord],
                        source: str, actor: str | None) -> None:
    """Upsert each changed consent record and append it to the history, its
    evidence sealed under the user's ``key``. ``changed`` values: a status
    (``pending`` from a double opt-in among them), or the whole record."""
    if not changed:
        return
    before = {}
    if source == "sms_reply":  # a confirmation keeps what the grant it confirms said (basis, text, expiry)
        before = {(r[0], r[1]): r for r in await conn.fetch(
            "SELECT channel, purpose, basis, text_version, extract(epoch FROM expires_at)::float8 "
            "FROM preference_consent WHERE user_id = $1", uid)}
    rows = []
    for k, value in changed.items():
        channel, purpose = split_consent_key(k)
        rec = value if isinstance(value, ConsentRecord) else ConsentRecord(status="granted")
        status = value if isinstance(value, str) else value.status
        old = before.get((channel, purpose))
        if old is not None:
            rec = msgspec.structs.replace(rec, basis=old[2], text_version=rec.text_version or old[3],
                                          expires_at=rec.expires_at or old[4])
        evidence = None if rec.evidence is None else pii.seal_json(key, pii.EVIDENCE, uid,
                                                                   msgspec.to_builtins(rec.evidence))
        rows.append((uid, channel, purpose, status, rec.source or source, rec.basis, rec.text_version, evidence,
                     rec.expires_at))
    await conn.executemany(UPSERT_CONSENT, rows)
    await conn.executemany(HISTORY, [(r[0], r[1], r[2], r[3], r[5], r[4], r[6], r[7], r[8], actor) for r in rows])


RESTORABLE = """
WITH h AS (
    SELECT id, purpose, status, basis, text_version, extract(epoch FROM expires_at)::float8 AS expires_at,
           status = 'withdrawn' AND actor = $4 AS stop,
           row_number() OVER (PARTITION BY purpose ORDER BY id DESC) AS n
    FROM preference_consent_history WHERE user_id = $1 AND channel = $2
), before AS (
    SELECT DISTINCT ON (purpose) purpose, status, basis, text_version, expires_at
    FROM h WHERE NOT stop AND purpose IN (SELECT purpose FROM h WHERE n = 1 AND stop)
    ORDER BY purpose, id DESC
)
SELECT purpose, basis, text_version, expires_at FROM before
WHERE status = 'granted' AND (expires_at IS NULL OR expires_at > $3)
"""


async def withdrawn_by_reply(conn: asyncpg.Connection, uid: str, channel: str,
                             now: float) -> dict[str, tuple[str, str | None, float | None]]:
    """The consents on ``channel`` that the person's texts (STOP, once or more:
    withdrawals whose actor is ``user:<id>(sms)``, which no API caller can set)
    withdrew last, and that were granted, and still in force, before them:
    purpose → (basis, text version, expiry) of that grant. What a START may give
    back: not what was withdrawn elsewhere (the preference center, the API), not
    a grant that was only pending or has lapsed since, not the withdrawal a STOP
    records when there was nothing to withdraw."""
    return {r["purpose"]: (r["basis"], r["text_version"], r["expires_at"])
            for r in await conn.fetch(RESTORABLE, uid, channel, now, f"user:{uid}(sms)")}


def _shard_key(user_id: str) -> int:
    return stable_hash(user_id)


async def changes_since(conn: asyncpg.Connection, ring: Keyring, user_id: str, since: int,
                        limit: int = 500) -> list[dict]:
    rows = await conn.fetch(
        "SELECT version, sync_type, source, changes, extract(epoch FROM created_at)::float8 AS at, sealed "
        "FROM preference_sync_log WHERE user_id = $1 AND version > $2 ORDER BY version LIMIT $3",
        user_id, since, limit)
    key = (await pii.data_keys(conn, ring, [user_id])).get(user_id) if rows else None
    return [{"version": r["version"], "type": r["sync_type"], "source": r["source"], "at": r["at"],
             **open_feed(key, user_id, r["sealed"], r["changes"])} for r in rows]


async def mark_published(conn: asyncpg.Connection, keys: Sequence[tuple[str, int]]) -> None:
    if keys:
        await conn.execute(
            "UPDATE preference_sync_log SET sync_status = 'completed', completed_at = now() "
            "WHERE (user_id, version) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))",
            [k[0] for k in keys], [k[1] for k in keys])


# -- templates -----------------------------------------------------------------

async def template_ids(conn: asyncpg.Connection) -> list[str]:
    """Every template that has an active version (a few, not one per user)."""
    return [r[0] for r in await conn.fetch("SELECT DISTINCT id FROM preference_templates WHERE is_active")]


async def load_template(conn: asyncpg.Connection, template_id: str) -> Template | None:
    """The newest version of a template."""
    r = await conn.fetchrow(
        "SELECT id, version, name, description, extends, preferences FROM preference_templates "
        "WHERE id = $1 AND is_active ORDER BY version DESC LIMIT 1", template_id)
    if r is None:
        return None
    return Template(id=r["id"], version=r["version"], name=r["name"], description=r["description"],
                    extends=r["extends"], preferences=msgspec.json.decode(r["preferences"], type=list[Preference]))


async def template_chain(conn: asyncpg.Connection, template_id: str | None,
                         depth: int = 8) -> tuple[tuple[str, tuple[Preference, ...]], ...]:
    """The template and the ones it extends, child first (cycles and depth cut)."""
    chain, seen = [], set()
    while template_id and template_id not in seen and len(chain) < depth:
        seen.add(template_id)
        t = await load_template(conn, template_id)
        if t is None:
            break
        chain.append((t.id, ordered(t.preferences)))
        template_id = t.extends
    return tuple(chain)


async def save_template(conn: asyncpg.Connection, t: Template, actor: str | None) -> int:
    """A new version of the template (1 for a new one); returns the version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", t.id)
        version = await conn.fetchval(
            "SELECT COALESCE(max(version), 0) + 1 FROM preference_templates WHERE id = $1", t.id)
        await conn.execute(
            "INSERT INTO preference_templates (id, version, name, description, extends, preferences, created_by) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)",
            t.id, version, t.name, t.description, t.extends, msgspec.json.encode(t.preferences).decode(), actor)
    return version


async def template_versions(conn: asyncpg.Connection, template_id: str) -> list[Template]:
    rows = await conn.fetch(
        "SELECT id, version, name, description, extends, preferences FROM preference_templates "
        "WHERE id = $1 ORDER BY version", template_id)
    return [Template(id=r["id"], version=r["version"], name=r["name"], description=r["description"],
                     extends=r["extends"], preferences=msgspec.json.decode(r["preferences"], type=list[Preference]))
            for r in rows]
