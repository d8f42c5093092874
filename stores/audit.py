"""The preference audit log: append-only, one hash chain per user, verifiable.

Each row's hash covers the previous row's hash and every column of the row that
says what happened: who (``performed_by``, ``ip_address``, ``user_agent``), what
(``action``, ``old_value``, ``new_value``, ``reason``) and when (``created_at``,
to the microsecond). A changed row breaks its own hash; a removed or reordered
row breaks the next row's link. The JSON values are hashed as PostgreSQL prints
them back (``jsonb::text``), normalised before the insert, so verifying never
depends on how Python would print a number.

From ``hash_version`` 3 (migration 021) what is personal (old value, new
value, IP address, user agent) is written sealed under the user's data key
(``sealed``; stores/pii.py) and those four columns are NULL; the hash covers the
ciphertext too, so a chain still verifies after its user's key is destroyed
(erasure), while nothing of it can be read. A row with nothing personal (the
erasure's own record, written after the key is gone) keeps its new value in
the clear. Rows written before keep the rule they were written under: version
1 covered the user, the action and the new value only; version 2 every column.

What a chain walk cannot see is a chain's tail removed, or a whole chain: that
is what the signed checkpoints (``checkpoint_heads`` + ``engine.audit``) are for.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import asyncpg
import orjson

from infra import db
from infra.pii import Keyring, PiiError
from stores import pii

HASH_VERSION = 3
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def chain_hash(prev: bytes | None, user_id: str, action: str, new_value) -> bytes:
    """Version 1 (rows written before every column was covered)."""
    h = hashlib.sha256(prev or b"")
    h.update(orjson.dumps([user_id, action, new_value], option=orjson.OPT_SORT_KEYS))
    return h.digest()


def micros(at: dt.datetime) -> int:
    """A timestamp as whole microseconds since the epoch (exact: no float)."""
    return (at - EPOCH) // dt.timedelta(microseconds=1)


def row_hash(prev: bytes | None, user_id: str, action: str, old_text: str | None, new_text: str | None,
             reason: str | None, actor: str | None, ip: str | None, user_agent: str | None, at_us: int,
             sealed: bytes | None = None, version: int = HASH_VERSION) -> bytes:
    """Versions 2 and 3: every column, the JSON values as ``jsonb::text``; 3
    adds the sealed values (their bytes, as hex)."""
    h = hashlib.sha256(prev or b"")
    fields = [version, user_id, action, old_text, new_text, reason, actor, ip, user_agent, at_us]
    if version >= 3:
        fields.append(None if sealed is None else sealed.hex())
    h.update(orjson.dumps(fields))
    return h.digest()


@dataclass
class Entry:
    """One audit row to append."""

    user_id: str
    action: str
    old: object = None  # JSON-able, None: SQL NULL
    new: object = None
    actor: str | None = None
    reason: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    personal: bool = True  # sealed under the user's key (False: nothing personal, kept readable)


SEALED_KIND = "audit"


def open_row(key: bytes, user_id: str, sealed: bytes) -> dict:
    """A version-3 row's personal values: {"old", "new", "ip", "user_agent"}."""
    return pii.open_json(key, SEALED_KIND, user_id, sealed)


async def _as_stored(conn: asyncpg.Connection, values: list) -> list[str | None]:
    """The JSON values as PostgreSQL will print them back once stored
    (``jsonb::text``): what is hashed is what verify reads."""
    if all(v is None for v in values):
        return [None] * len(values)
    texts = [None if v is None else orjson.dumps(v).decode() for v in values]
    rows = await conn.fetch("SELECT t::jsonb::text FROM unnest($1::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
                            texts)
    return [r[0] for r in rows]


async def prepare(conn: asyncpg.Connection, ring: Keyring, entries: Sequence[Entry],
                  keys: dict[str, bytes] | None = None) -> list[tuple]:
    """The rows to insert for ``entries`` (in order, chained per user onto each
    user's last row): (user_id, action, old_value, new_value, reason,
    performed_by, ip_address, user_agent, created_at, prev_hash, hash,
    hash_version, sealed), personal values sealed under each user's key (made
    if the user has none yet). Run inside the transaction of the change it
    records, after the user's row is locked (two writers of one user must not
    both read the same last hash)."""
    if not entries:
        return []
    ids = list({e.user_id for e in entries})
    prev = {r[0]: r[1] for r in await conn.fetch(
        "SELECT DISTINCT ON (user_id) user_id, hash FROM preference_audit_log "
        f"WHERE user_id = {db.keys(1, 'text')} ORDER BY user_id, id DESC", ids)}
    keys = await pii.data_keys(conn, ring, [e.user_id for e in entries if e.personal], create=True, known=keys)
    for e in entries:
        if e.personal and e.user_id not in keys:
            raise PiiError("an audit entry for a user not in users: no key to seal it under")
    plain = [e for e in entries if not e.personal]
    stored = await _as_stored(conn, [v for e in plain for v in (e.old, e.new)])
    texts = {id(e): (stored[2 * i], stored[2 * i + 1]) for i, e in enumerate(plain)}
    at = dt.datetime.now(dt.UTC)
    at_us = micros(at)
    rows = []
    for e in entries:
        key = keys.get(e.user_id) if e.personal else None
        if key is not None:
            old_text = new_text = ip = ua = None
            sealed = pii.seal_json(key, SEALED_KIND, e.user_id,
                                   {"old": e.old, "new": e.new, "ip": e.ip, "user_agent": e.user_agent})
        else:  # nothing personal: readable, and no IP address or user agent kept
            (old_text, new_text), ip, ua, sealed = texts[id(e)], None, None, None
        before = prev.get(e.user_id)
        digest = row_hash(before, e.user_id, e.action, old_text, new_text, e.reason, e.actor, ip, ua, at_us,
                          sealed)
        rows.append((e.user_id, e.action, old_text, new_text, e.reason, e.actor, ip, ua, at,
                     before, digest, HASH_VERSION, sealed))
        prev[e.user_id] = digest
    return rows


COLUMNS = ("user_id", "action", "old_value", "new_value", "reason", "performed_by", "ip_address", "user_agent",
           "created_at", "prev_hash", "hash", "hash_version", "sealed")


async def append(conn: asyncpg.Connection, ring: Keyring, entries: Sequence[Entry],
                 keys: dict[str, bytes] | None = None) -> None:
    """Append ``entries`` (see ``prepare``)."""
    rows = await prepare(conn, ring, entries, keys)
    if rows:
        await conn.executemany(
            "INSERT INTO preference_audit_log (user_id, action, old_value, new_value, reason, performed_by, "
            "ip_address, user_agent, created_at, prev_hash, hash, hash_version, sealed) "
            "VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6, $7::inet, $8, $9, $10, $11, $12, $13)", rows)


async def append_audit(conn: asyncpg.Connection, ring: Keyring,
                       entries: Sequence[tuple[str, str, dict | None, dict | None, str | None]],
                       keys: dict[str, bytes] | None = None) -> None:
    """Append (user, action, old value, new value, who) rows, chained per user.
    Run inside the transaction of the change it records (``keys``: the users'
    keys if the writer has them)."""
    await append(conn, ring, [Entry(uid, action, old, new, actor) for uid, action, old, new, actor in entries], keys)


# -- verification ------------------------------------------------------------

WALK = """
SELECT id, user_id, action, old_value::text, new_value::text, reason, performed_by, host(ip_address),
       user_agent, (extract(epoch FROM created_at) * 1000000)::bigint, prev_hash, hash, hash_version, sealed
FROM preference_audit_log {where} ORDER BY user_id, id
"""


@dataclass
class Break:
    """The first row of a chain that does not verify."""

    user_id: str
    row_id: int | None
    problem: str

    def as_dict(self) -> dict:
        return {"user_id": self.user_id, "row_id": self.row_id, "problem": self.problem}


@dataclass
class Report:
    chains: int = 0
    rows: int = 0
    broken: list[Break] = field(default_factory=list)
    checkpoint: dict | None = None  # the checkpoint checked against, if any

    @property
    def ok(self) -> bool:
        return not self.broken

    def as_dict(self) -> dict:
        return {"ok": self.ok, "chains": self.chains, "rows": self.rows, "checkpoint": self.checkpoint,
                "broken": [b.as_dict() for b in self.broken]}


def _check(row, prev_hash: bytes | None, prev_version: int | None) -> str | None:
    """What is wrong with one row given the hash and version of the row before it in its chain."""
    (_id, uid, action, old_text, new_text, reason, actor, ip, ua, at_us, row_prev, digest, version, sealed) = row
    if row_prev != prev_hash:
        return "does not link to the row before it (a row changed, removed or inserted before it)"
    if prev_version is not None and version < prev_version:
        return (f"a version-{version} row after a version-{prev_version} row (rows are never written under an "
                "older rule again)")
    if version == 1:
        new = orjson.loads(new_text) if new_text is not None else None
        expected = chain_hash(prev_hash, uid, action, new)
        if expected != digest:
            return ("its hash does not match its contents (the row was changed; or, for a row written before "
                    "every column was hashed, a number PostgreSQL prints differently, such as 1e16)")
        return None
    if version not in (2, HASH_VERSION):
        return f"unknown hash version {version}"
    if version == 2 and sealed is not None:
        return "its hash does not match its contents (a version-2 row with sealed values added)"
    expected = row_hash(prev_hash, uid, action, old_text, new_text, reason, actor, ip, ua, at_us, sealed, version)
    return None if expected == digest else "its hash does not match its contents (the row was changed)"


async def walk(conn: asyncpg.Connection, user_id: str | None = None,
               batch: int = 5000) -> AsyncIterator[tuple[str, int, Break | None]]:
    """Each chain as (user, rows, first break or None).
    Streams: inside a transaction (a cursor), one chain at a time in memory."""
    where, args = ("WHERE user_id = $1", (user_id,)) if user_id is not None else ("", ())
    current, rows, last, version, broken = None, 0, None, None, None
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        cursor = await conn.cursor(WALK.format(where=where), *args)
        while chunk := await cursor.fetch(batch):
            for row in chunk:
                uid = row[1]
                if uid != current:
                    if current is not None:
                        yield current, rows, broken
                    current, rows, last, version, broken = uid, 0, None, None, None
                rows += 1
                if broken is None:
                    problem = _check(row, last, version)
                    if problem is not None:
                        broken = Break(uid, row[0], problem)
                last, version = row[11], row[12]
    if current is not None:
        yield current, rows, broken


async def verify(conn: asyncpg.Connection, user_id: str | None = None,
                 heads: dict[str, tuple[int, bytes]] | None = None) -> Report:
    """Walk every chain (or one user's); with ``heads`` (a verified checkpoint's
    user -> (row id, hash) of its last row then), also find chains cut short or
    gone since: each head must still be a row of its chain, with its hash."""
    report = Report()
    seen: set[str] = set()
    async for uid, rows, broken in walk(conn, user_id):
        report.chains += 1
        report.rows += rows
        seen.add(uid)
        if broken is not None:
            report.broken.append(broken)
    if heads:
        wanted = {u: h for u, h in heads.items() if user_id is None or u == user_id}
        present = {r[0]: (r[1], r[2]) for r in await conn.fetch(
            f"SELECT id, user_id, hash FROM preference_audit_log WHERE id = {db.keys(1, 'bigint')}",
            [h[0] for h in wanted.values()])}
        already = {b.user_id for b in report.broken}
        for uid, (head_id, head_hash) in sorted(wanted.items()):
            if uid in already:
                continue
            if uid not in seen:
                report.broken.append(Break(uid, head_id, "the whole chain is gone (it was in the checkpoint)"))
            elif present.get(head_id) != (uid, head_hash):
                report.broken.append(Break(uid, head_id, "the checkpoint's last row of this chain is gone or "
                                                         "changed (rows removed from its end)"))
    report.broken.sort(key=lambda b: (b.user_id, b.row_id or 0))
    return report


# -- checkpoints ---------------------------------------------------------------

HEADS = """
SELECT DISTINCT ON (user_id) user_id, id, hash FROM preference_audit_log
WHERE id <= $1 ORDER BY user_id, id DESC
"""


def heads_digest(max_id: int, heads: Sequence[tuple[str, int, bytes]]) -> bytes:
    """One digest of every chain's last row, in user order: what a checkpoint signs."""
    h = hashlib.sha256(b"tidings-audit-checkpoint\x00" + str(max_id).encode())
    for uid, row_id, digest in sorted(heads):
        h.update(orjson.dumps([uid, row_id, digest.hex()]))
    return h.digest()


def signed_payload(checkpoint_id: int, max_id: int, chains: int, digest: bytes, prev_id: int | None,
                   prev_digest: bytes | None) -> bytes:
    """What a checkpoint's signature covers: itself and the checkpoint before it,
    so none can be taken out of the sequence unseen."""
    return orjson.dumps(["tidings-audit-checkpoint", 2, checkpoint_id, max_id, chains, digest.hex(), prev_id,
                         prev_digest.hex() if prev_digest is not None else None])


async def current_heads(conn: asyncpg.Connection) -> tuple[int, list[tuple[str, int, bytes]]]:
    """(the last row id, each chain's last row up to it)."""
    max_id = await conn.fetchval("SELECT COALESCE(max(id), 0) FROM preference_audit_log")
    return max_id, [(r[0], r[1], r[2]) for r in await conn.fetch(HEADS, max_id)]


__all__ = ["COLUMNS", "Break", "Entry", "HASH_VERSION", "Report", "append", "append_audit", "chain_hash", "open_row",
           "current_heads", "heads_digest", "micros", "prepare", "row_hash", "signed_payload", "verify", "walk"]
