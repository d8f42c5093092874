"""A user's state as the UserShards hold it, in PostgreSQL: ``users.state``
holds it as of the user's last committed write (a warm start reads one row per
user), sealed under the user's data key (stores/pii.py); NULL there means "not
computed", and the state is assembled from the tables (users, addresses,
preference rows, consent, suppressions). Writers call ``refresh_states`` inside
the transaction of their change. Every function takes the engine's ``Keyring``
(with its index key): states and addresses open only with it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import asyncpg
import msgspec

from infra import db
from infra.pii import Keyring, PiiError, aad, open_sealed, seal
from policy.decide import consent_key
from policy.prefs import Preference, ordered
from policy.sharding import shard_of
from policy.types import Device, UserState
from stores import devices as device_store, pii

log = logging.getLogger(__name__)


class Stored(msgspec.Struct, array_like=True, omit_defaults=True):
    """What ``users.state`` holds: a user's state as of their last committed
    write, less what is not the user's own (template chains, suppressed
    addresses). NULL there means "not computed": read the tables instead."""

    addresses: dict[str, str] = {}
    timezone: str = "UTC"
    locale: str = "en"
    version: int = 0
    prefs: tuple[Preference, ...] = ()
    template: str | None = None
    consent: tuple[str, ...] = ()
    consent_until: dict[str, float] = {}
    consent_state: dict[str, str] = {}
    devices: tuple[Device, ...] = ()


_encode = msgspec.msgpack.Encoder().encode
decode_stored = msgspec.msgpack.Decoder(Stored).decode


def to_stored(s: UserState) -> bytes:
    return _encode(Stored(s.addresses, s.timezone, s.locale, s.version, s.prefs, s.template,
                          tuple(sorted(s.consent)), s.consent_until, s.consent_state, s.devices))


STATE = "users.state"  # what a sealed state is bound to (with its user)


def seal_state(key: bytes, s: UserState) -> bytes:
    """``users.state`` as written: the MessagePack sealed under the user's key."""
    return seal(key, to_stored(s), aad(STATE, s.user_id))


def open_state(ring: Keyring, user_id: str, blob: bytes, master_id: str | None, wrapped: bytes | None) -> bytes | None:
    """The MessagePack of a stored state, or None if it does not open (no key:
    the user was erased meanwhile; a wrong one: the row is not theirs): the
    caller assembles it from the tables instead."""
    if master_id is None:
        return None
    try:
        return open_sealed(pii.unwrap_user(ring, user_id, master_id, wrapped), blob, aad(STATE, user_id))
    except PiiError:
        log.warning("a stored user state does not open under its user's key: assembled from the tables")
        return None


def from_stored(user_id: str, blob: bytes) -> UserState:
    p = decode_stored(blob)
    return UserState(user_id=user_id, addresses=p.addresses, prefs=p.prefs, template=p.template,
                     consent=frozenset(p.consent), timezone=p.timezone, locale=p.locale, version=p.version,
                     consent_until=p.consent_until, consent_state=p.consent_state, devices=p.devices)


USERS = db.keys(1, "text")  # a batch of user ids, probed by index (infra/db.py)

# Each row as one JSON object in the shape of a Preference, so it decodes in one call.
LOAD_PREFS = f"""
SELECT user_id, (value || jsonb_build_object('channel', channel, 'category', category,
                                             'content_type', content_type, 'priority', priority)
        || CASE WHEN context IS NULL THEN '{{}}'::jsonb ELSE jsonb_build_object('context', context) END
        || CASE WHEN expires_at IS NULL THEN '{{}}'::jsonb
                ELSE jsonb_build_object('expires_at', extract(epoch FROM expires_at)) END)::text, custom
FROM user_preferences WHERE user_id = {USERS} AND is_active
"""
_pref = msgspec.json.Decoder(Preference)
LOAD_CONSENT = ("SELECT user_id, channel, purpose, status, extract(epoch FROM expires_at)::float8 "
                f"FROM preference_consent WHERE user_id = {USERS}")


async def load_prefs(conn: asyncpg.Connection, ring: Keyring, ids: list[str],
                     keys: dict[str, bytes] | None = None) -> dict[str, tuple[Preference, ...]]:
    """Each user's active rows, their sealed custom values opened."""
    rows: dict[str, list[Preference]] = {}
    found = await conn.fetch(LOAD_PREFS, ids)
    keys = await pii.data_keys(conn, ring, {r[0] for r in found if r[2] is not None}, known=keys)
    for uid, text, sealed in found:
        pref = _pref.decode(text)
        if sealed is not None:
            pref = msgspec.structs.replace(pref, custom=pii.open_custom(keys.get(uid), uid, sealed))
        rows.setdefault(uid, []).append(pref)
    return {uid: ordered(prefs) for uid, prefs in rows.items()}


async def load_consent(conn: asyncpg.Connection,
                       ids: list[str]) -> dict[str, tuple[frozenset[str], dict[str, float], dict[str, str]]]:
    """Per user: the consent keys granted, the expiry of those that expire, and
    the keys recorded with another status (``policy.decide.consent_status``)."""
    found: dict[str, tuple[set[str], dict[str, float], dict[str, str]]] = {}
    for uid, channel, purpose, status, until in await conn.fetch(LOAD_CONSENT, ids):
        granted, expiry, other = found.setdefault(uid, (set(), {}, {}))
        key = consent_key(channel, purpose)
        if status == "granted":
            granted.add(key)
            if until is not None:
                expiry[key] = until
        else:  # pending, withdrawn, expired: the reason a send is refused
            other[key] = status
    return {uid: (frozenset(g), e, o) for uid, (g, e, o) in found.items()}


LOAD_USERS = ("SELECT user_id, timezone, locale, prefs_version, template_id FROM users "
              f"WHERE user_id = {USERS}")
LOAD_ADDRESSES = f"SELECT user_id, channel, sealed FROM user_addresses WHERE user_id = {USERS}"
LOAD_SUPPRESSED = f"""
SELECT a.user_id, a.channel, s.reason FROM user_addresses a
JOIN suppressions s ON s.channel = a.channel AND s.blind = a.blind
WHERE a.user_id = {USERS}
"""
LOAD_STATES = ("SELECT u.user_id, u.state, k.master_id, k.wrapped FROM users u LEFT JOIN user_keys k USING (user_id) "
               f"WHERE u.user_id = {USERS}")


async def load_states(conn: asyncpg.Connection, ring: Keyring, user_ids: Sequence[str]) -> dict[str, UserState]:
    """States of the given users that exist: from ``users.state`` plus their
    suppressed addresses (two queries), or assembled from the tables for users
    whose state is not computed. ``templates`` is left to the shard."""
    ids = list(user_ids)
    states: dict[str, UserState] = {}
    stale: dict[str, tuple[str | None, bytes | None]] = {}  # user -> their wrapped key, read with the row
    for uid, blob, master_id, wrapped in await conn.fetch(LOAD_STATES, ids):
        plain = None if blob is None else open_state(ring, uid, blob, master_id, wrapped)
        if plain is None:
            stale[uid] = (master_id, wrapped)
        else:
            states[uid] = from_stored(uid, plain)
    if states:
        for uid, channel, reason in await conn.fetch(LOAD_SUPPRESSED, list(states)):
            states[uid].suppressed[channel] = reason
    if stale:
        # the keys came with the rows: unwrapped once, for reading and for writing back
        keys = await pii.data_keys(conn, ring, stale, create=True, known={
            uid: pii.unwrap_user(ring, uid, m, w) for uid, (m, w) in stale.items() if m is not None})
        assembled = await assemble_states(conn, ring, list(stale), keys)
        await write_back(conn, ring, assembled, keys)
        states.update(assembled)
    return states


# One statement for a chunk's states, not one per user: a first broadcast after a bulk
# import stores a million (as executemany, a third of a PostgreSQL backend through it).
# Each user's row is found by its primary key, statistics or not: the arrays come
# through scalar subqueries (as in ``db.keys``), so the unnest is estimated at a few
# rows and the join probes the index (a custom plan of the bare arrays seq-scanned
# users). One statement, one transaction: as with executemany before, its row locks
# are taken in the plan's order.
WRITE_BACK = """
UPDATE users u SET state = s.state
FROM unnest((SELECT $1::text[]), (SELECT $2::bytea[]), (SELECT $3::bigint[])) AS s(user_id, state, version)
WHERE u.user_id = s.user_id AND u.state IS NULL AND u.prefs_version = s.version
"""


async def write_back(conn: asyncpg.Connection, ring: Keyring, states: dict[str, UserState],
                     keys: dict[str, bytes] | None = None) -> None:
    """Store states assembled for users whose ``users.state`` was NULL, unless a
    writer changed them since (their version moved, or a writer already stored
    one): a reader never overwrites newer data with what it read. Users without a
    key (none of their data is sealed yet) get one."""
    if not states:
        return
    keys = await pii.data_keys(conn, ring, states, create=True, known=keys)
    stored = [(uid, seal_state(keys[uid], s), s.version) for uid, s in states.items() if uid in keys]
    if stored:
        await conn.execute(WRITE_BACK, *(list(column) for column in zip(*stored, strict=True)))


async def refresh_states(conn: asyncpg.Connection, ring: Keyring, user_ids: Sequence[str],
                         keys: dict[str, bytes] | None = None) -> dict[str, UserState]:
    """Recompute ``users.state`` from the tables; writers call it inside the
    transaction of their change, once, after all of it (``keys``: the users'
    keys if the writer has them). Returns the states (with suppressed addresses,
    without templates): what the writer holds once it commits."""
    if not user_ids:
        return {}
    keys = await pii.data_keys(conn, ring, user_ids, create=True, known=keys)
    states = await assemble_states(conn, ring, user_ids, keys)
    await conn.executemany("UPDATE users SET state = $2 WHERE user_id = $1",
                           [(uid, seal_state(keys[uid], s)) for uid, s in states.items() if uid in keys])
    return states


async def assemble_states(conn: asyncpg.Connection, ring: Keyring, user_ids: Sequence[str],
                          keys: dict[str, bytes] | None = None) -> dict[str, UserState]:
    """States read from every table (six set-based queries, whatever the count);
    ``keys``: the users' data keys if the caller has them already."""
    ids = list(user_ids)
    states = {r[0]: UserState(user_id=r[0], timezone=r[1], locale=r[2], version=r[3], template=r[4])
              for r in await conn.fetch(LOAD_USERS, ids)}
    if not states:
        return states
    rows = await conn.fetch(LOAD_ADDRESSES, ids)
    if rows:
        keys = await pii.data_keys(conn, ring, {r[0] for r in rows}, known=keys)
        for uid, addresses in pii.open_addresses(ring, keys, rows).items():
            states[uid].addresses.update(addresses)
    for uid, rows in (await load_prefs(conn, ring, ids, keys)).items():
        states[uid].prefs = rows
    for uid, (granted, until, other) in (await load_consent(conn, ids)).items():
        states[uid].consent, states[uid].consent_until, states[uid].consent_state = granted, until, other
    for uid, channel, reason in await conn.fetch(LOAD_SUPPRESSED, ids):
        states[uid].suppressed[channel] = reason
    if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM user_devices WHERE user_id = {USERS})", ids):
        keys = await pii.data_keys(conn, ring, ids, known=keys)
        for uid, found in (await device_store.load(conn, keys, ids)).items():
            states[uid].devices = tuple(found)
    return states


class StateSink(Protocol):
    """Where ``scan_shard`` puts what it reads (the UserShard's cache)."""

    def put_stored(self, user_id: str, blob: bytes, suppressed: dict[str, str] | None = None) -> None: ...
    def update(self, states: dict[str, UserState]) -> None: ...


SCAN_STATES = ("SELECT u.user_id, u.state, u.shard_key IS NULL, k.master_id, k.wrapped "
               "FROM users u LEFT JOIN user_keys k USING (user_id) "
               "WHERE u.shard_key IS NULL OR u.shard_key % $1 = $2")
SCAN_SUPPRESSED = """
SELECT a.user_id, a.channel, s.reason FROM suppressions s JOIN user_addresses a USING (channel, blind)
"""


async def scan_shard(conn: asyncpg.Connection, ring: Keyring, index: int, shards: int, into: StateSink,
                     limit: int | None = None, batch: int = 20_000) -> int:
    """Put every user this shard owns into ``into`` (a warm start), or the first
    ``limit`` found (what the cache holds at most): one pass over
    ``users.state``, ``batch`` rows at a time; users whose state is not computed
    are assembled from the tables and their state written back. Each state is put
    whole, suppressed addresses included (read first): the shard may be deciding
    on what it holds while this runs, and a suppression added since is a reload,
    which the sink keeps."""
    suppressed: dict[str, dict[str, str]] = {}
    for uid, channel, reason in await conn.fetch(SCAN_SUPPRESSED):
        if shard_of(uid, shards) == index:
            suppressed.setdefault(uid, {})[channel] = reason
    stale: list[str] = []
    n = 0
    async with conn.transaction(readonly=True):
        cursor = await conn.cursor(SCAN_STATES, shards, index)
        while (limit is None or n + len(stale) < limit) and (rows := await cursor.fetch(batch)):
            for uid, blob, unkeyed, master_id, wrapped in rows:
                if unkeyed and shard_of(uid, shards) != index:  # keyed rows: the WHERE decided
                    continue
                if limit is not None and n + len(stale) >= limit:
                    break
                plain = None if blob is None else open_state(ring, uid, blob, master_id, wrapped)
                if plain is None:
                    stale.append(uid)
                else:
                    into.put_stored(uid, plain, suppressed.get(uid))
                    n += 1
    for i in range(0, len(stale), batch):
        keys = await pii.data_keys(conn, ring, stale[i:i + batch], create=True)
        assembled = await assemble_states(conn, ring, stale[i:i + batch], keys)  # suppressed addresses included
        into.update(assembled)
        try:
            await write_back(conn, ring, assembled, keys)
        except asyncpg.PostgresError as e:  # an optimisation: another writer holds the rows, it stores its own
            log.warning("warm start: %d states not written back (%s)", len(assembled), type(e).__name__)
    return n + len(stale)


