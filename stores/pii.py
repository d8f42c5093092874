"""Per-user data keys and the index key in PostgreSQL (``user_keys``,
``pii_keys``), and sealing what a user's rows hold (infra/pii.py has the
cryptography; docs/privacy.md the design).

``keyring`` loads (or, the first time, makes) the index key; ``data_keys`` reads
users' keys and makes those missing; ``rotate_master`` re-wraps every key under
the current master key; ``seal_legacy`` seals rows written before migration 021.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import asyncpg
import msgspec

from infra import db
from infra.pii import INDEX_KEY_AAD, Keyring, PiiError, aad, new_key, open_sealed, seal, user_key_aad

log = logging.getLogger(__name__)

INDEX = "index"


async def keyring(conn: asyncpg.Connection, ring: Keyring) -> Keyring:
    """``ring`` with the index key, made and stored (wrapped) if there is none yet."""
    row = await conn.fetchrow("SELECT master_id, wrapped FROM pii_keys WHERE name = $1", INDEX)
    if row is None:
        master_id, wrapped = ring.wrap(new_key(), INDEX_KEY_AAD)
        await conn.execute("INSERT INTO pii_keys (name, master_id, wrapped) VALUES ($1, $2, $3) "
                           "ON CONFLICT (name) DO NOTHING", INDEX, master_id, wrapped)
        row = await conn.fetchrow("SELECT master_id, wrapped FROM pii_keys WHERE name = $1", INDEX)
    return ring.with_index(ring.unwrap(row[0], row[1], INDEX_KEY_AAD))


def unwrap_user(ring: Keyring, user_id: str, master_id: str, wrapped: bytes) -> bytes:
    return ring.unwrap(master_id, wrapped, user_key_aad(user_id))


READ_KEYS = f"SELECT user_id, master_id, wrapped FROM user_keys WHERE user_id = {db.keys(1, 'text')}"


async def data_keys(conn: asyncpg.Connection, ring: Keyring, user_ids: Iterable[str], create: bool = False,
                    known: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
    """The users' data keys, with ``known`` (keys the caller read already: only
    the others are looked up). With ``create``, users without one get one if
    they exist in ``users`` (an erased user does not get a new key from a late
    reader); a concurrent maker's key wins: the insert does nothing and the
    key is read back."""
    keys = dict(known or {})
    ids = [u for u in dict.fromkeys(user_ids) if u not in keys]
    if not ids:
        return keys
    keys.update((r[0], unwrap_user(ring, r[0], r[1], r[2])) for r in await conn.fetch(READ_KEYS, ids))
    missing = [u for u in ids if u not in keys]
    if create and missing:
        made = [(u, *ring.wrap(new_key(), user_key_aad(u))) for u in missing]
        await conn.executemany("INSERT INTO user_keys (user_id, master_id, wrapped) SELECT $1, $2, $3 "
                               "WHERE EXISTS (SELECT 1 FROM users WHERE user_id = $1) "
                               "ON CONFLICT (user_id) DO NOTHING", made)
        keys.update((r[0], unwrap_user(ring, r[0], r[1], r[2])) for r in await conn.fetch(READ_KEYS, missing))
    return keys


async def copy_new_keys(conn: asyncpg.Connection, ring: Keyring, user_ids: Sequence[str]) -> dict[str, bytes]:
    """Keys for users that have none, written with COPY (a population loaded in
    bulk: seeders, benchmarks); returns them."""
    keys = {u: new_key() for u in user_ids}
    await conn.copy_records_to_table("user_keys", columns=("user_id", "master_id", "wrapped"),
                                     records=[(u, *ring.wrap(k, user_key_aad(u))) for u, k in keys.items()])
    return keys


# -- what is sealed, and how it is bound ---------------------------------------

def address_aad(user_id: str, channel: str) -> bytes:
    return aad("address", user_id, channel)


def seal_address(key: bytes, user_id: str, channel: str, address: str) -> bytes:
    return seal(key, address.encode(), address_aad(user_id, channel))


def open_address(key: bytes, user_id: str, channel: str, sealed: bytes) -> str:
    return open_sealed(key, sealed, address_aad(user_id, channel)).decode()


def address_records(ring: Keyring, keys: Mapping[str, bytes],
                    rows: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, bytes, bytes]]:
    """(user, channel, address) → the ``user_addresses`` record (user_id,
    channel, sealed, blind)."""
    return [(uid, ch, seal_address(keys[uid], uid, ch, addr), ring.blind(ch, addr)) for uid, ch, addr in rows]


ADDRESS_COLUMNS = ("user_id", "channel", "sealed", "blind")


# What each kind of sealed JSON value is bound to (with its user)
CUSTOM = "preference.custom"  # a preference row's custom values
FEED = "preference_sync_log"  # a change-feed document
EVIDENCE = "consent.evidence"  # how a consent was given


def open_custom(key: bytes | None, user_id: str, sealed: bytes | None):
    """A preference row's custom values (None: none, or no key left to open them)."""
    if sealed is None or key is None:
        return None
    try:
        return open_json(key, CUSTOM, user_id, sealed)
    except PiiError:
        log.warning("a preference row's custom values do not open under their user's key")
        return None


def seal_json(key: bytes, kind: str, user_id: str, value: object) -> bytes:
    return seal(key, msgspec.json.encode(value), aad(kind, user_id))


def open_json(key: bytes, kind: str, user_id: str, sealed: bytes):
    return msgspec.json.decode(open_sealed(key, sealed, aad(kind, user_id)))


# -- rotation and the rows from before -----------------------------------------

async def rotate_master(conn: asyncpg.Connection, ring: Keyring, batch: int = 2000) -> int:
    """Re-wrap every key not under the current master key (``ring.current``),
    ``batch`` rows per transaction: the engine keeps running, and a key is
    readable under either master key meanwhile (both are configured). Returns
    the keys re-wrapped; afterwards the old master key may be removed."""
    done = 0
    row = await conn.fetchrow("SELECT master_id, wrapped FROM pii_keys WHERE name = $1", INDEX)
    if row is not None and row[0] != ring.current:
        index = ring.unwrap(row[0], row[1], INDEX_KEY_AAD)
        master_id, wrapped = ring.wrap(index, INDEX_KEY_AAD)
        status = await conn.execute("UPDATE pii_keys SET master_id = $2, wrapped = $3, rewrapped_at = now() "
                                    "WHERE name = $1 AND master_id = $4", INDEX, master_id, wrapped, row[0])
        done += status.endswith(" 1")
    while True:
        async with conn.transaction():
            rows = await conn.fetch("SELECT user_id, master_id, wrapped FROM user_keys WHERE master_id <> $1 "
                                    "LIMIT $2 FOR UPDATE SKIP LOCKED", ring.current, batch)
            if not rows:
                return done
            updates = []
            for uid, master_id, wrapped in rows:
                bound = user_key_aad(uid)
                updates.append((uid, *ring.wrap(ring.unwrap(master_id, wrapped, bound), bound)))
            await conn.executemany("UPDATE user_keys SET master_id = $2, wrapped = $3 WHERE user_id = $1", updates)
            done += len(updates)


async def master_ids_in_use(conn: asyncpg.Connection) -> dict[str, int]:
    """Keys wrapped under each master key id (what a rotation leaves to do)."""
    rows = await conn.fetch("SELECT master_id, count(*) FROM (SELECT master_id FROM user_keys "
                            "UNION ALL SELECT master_id FROM pii_keys) k GROUP BY master_id")
    return {r[0]: r[1] for r in rows}


async def seal_legacy(conn: asyncpg.Connection, ring: Keyring, batch: int = 5000) -> dict[str, int]:
    """Seal what was written in plaintext before migrations 021 and 023:
    addresses (sealed and indexed, the text emptied), suppressions (indexed, the
    text emptied), preference custom values and change-feed documents (sealed).
    Idempotent; each batch is its own transaction. Audit rows written before stay
    as they were: the log is append-only (docs/privacy.md says what that means)."""
    counts = {"addresses": 0, "suppressions": 0}
    while True:
        async with conn.transaction():
            rows = await conn.fetch("SELECT user_id, channel, address FROM user_addresses WHERE address IS NOT NULL "
                                    "LIMIT $1 FOR UPDATE SKIP LOCKED", batch)
            if not rows:
                break
            keys = await data_keys(conn, ring, [r[0] for r in rows], create=True)
            await conn.executemany(
                "UPDATE user_addresses SET sealed = $3, blind = $4, address = NULL WHERE user_id = $1 AND channel = $2",
                address_records(ring, keys, [tuple(r) for r in rows]))
            await conn.execute(f"UPDATE users SET state = NULL WHERE user_id = {db.keys(1, 'text')}",
                               list({r[0] for r in rows}))
            counts["addresses"] += len(rows)
    while True:
        async with conn.transaction():
            rows = await conn.fetch("SELECT ctid, channel, address, reason FROM suppressions "
                                    "WHERE address IS NOT NULL LIMIT $1 FOR UPDATE SKIP LOCKED", batch)
            if not rows:
                break
            for ctid, channel, address, reason in rows:
                blind = ring.blind(channel, address)
                # the same address twice (it differed in case only): one row stays; a
                # complaint or bounce outranks a manual suppression
                await conn.execute(
                    "UPDATE suppressions SET reason = $3 WHERE channel = $1 AND blind = $2 AND reason = 'manual'",
                    channel, blind, reason)
                if await conn.fetchval("SELECT 1 FROM suppressions WHERE channel = $1 AND blind = $2", channel, blind):
                    await conn.execute("DELETE FROM suppressions WHERE ctid = $1", ctid)
                else:
                    await conn.execute("UPDATE suppressions SET blind = $2, address = NULL WHERE ctid = $1",
                                       ctid, blind)
            counts["suppressions"] += len(rows)
    counts["custom"] = await _seal_rows(
        conn, ring, batch, "user_preferences",
        "SELECT id, user_id, value->'custom' FROM user_preferences WHERE value ? 'custom' "
        "LIMIT $1 FOR UPDATE SKIP LOCKED",
        "UPDATE user_preferences SET custom = $2, value = value - 'custom' WHERE id = $1", CUSTOM)
    counts["change_feed"] = await _seal_rows(
        conn, ring, batch, "preference_sync_log",
        "SELECT id, user_id, changes FROM preference_sync_log WHERE sealed IS NULL LIMIT $1 FOR UPDATE SKIP LOCKED",
        "UPDATE preference_sync_log SET sealed = $2, changes = '{}' WHERE id = $1", FEED)
    if any(counts.values()):
        log.info("sealed rows written before encryption at rest: %s", counts)
    return counts


async def _seal_rows(conn: asyncpg.Connection, ring: Keyring, batch: int, table: str, select: str, update: str,
                     kind: str) -> int:
    """Seal a JSON column's values, ``batch`` rows per transaction; (id, user,
    JSON) rows in, (id, sealed) out. A row of a user no longer in ``users`` (no
    key can be made: only a change-feed row can outlive its user) is deleted."""
    done = 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(select, batch)
            if not rows:
                return done
            keys = await data_keys(conn, ring, {r[1] for r in rows}, create=True)
            await conn.executemany(update, [(r[0], seal_json(keys[r[1]], kind, r[1], msgspec.json.decode(r[2])))
                                            for r in rows if r[1] in keys])
            orphans = [r[0] for r in rows if r[1] not in keys]
            if orphans:
                await conn.execute(f"DELETE FROM {table} WHERE id = ANY($1)", orphans)
            done += len(rows)


def open_addresses(ring: Keyring, keys: Mapping[str, bytes], rows: Sequence) -> dict[str, dict[str, str]]:
    """``user_addresses`` rows (user_id, channel, sealed) → {user: {channel:
    address}}; an address whose user has no key (erased, or a row that is not
    theirs) is left out rather than failing the read."""
    out: dict[str, dict[str, str]] = {}
    for uid, channel, sealed in rows:
        key = keys.get(uid)
        if key is None or sealed is None:
            continue
        try:
            out.setdefault(uid, {})[channel] = open_address(key, uid, channel, sealed)
        except PiiError:
            log.warning("an address of a user does not open under their key (channel %s)", channel)
    return out


__all__ = ["ADDRESS_COLUMNS", "CUSTOM", "EVIDENCE", "FEED", "address_records", "copy_new_keys", "data_keys",
           "keyring", "master_ids_in_use", "open_address", "open_addresses", "open_custom", "open_json",
           "rotate_master", "seal_address", "seal_json", "seal_legacy", "unwrap_user"]
