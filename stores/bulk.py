"""Bulk preference import and export (NDJSON and CSV, the same row shape both
ways: a preference row plus ``user_id``).

An import is all or nothing, in one transaction: every row is parsed and
checked (every error reported with its line) and staged in a temporary table,
then, if nothing was wrong, written — rows upserted by key, each user's version
bumped once, one audit row and one change-feed row per user. It is the one
writer besides the UserShards (a single transaction cannot span them); it bumps
versions in SQL, so a concurrent shard write sees a version conflict instead of
losing either change, and the shards reload the imported users once it has
committed.

Streamed: the file is read a line at a time and ``CHUNK_ROWS`` rows at a time
are parsed, checked and COPYed; what needs every row (the same key twice, too
many rows for a user, the mandatory rules, the change feed) is asked of the
staged rows in SQL. So an import holds one chunk in memory, whatever its size
(and, once written, the ids of the users it changed, for their shards).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import BinaryIO

import asyncpg
import msgspec
import orjson

from infra import db
from infra.pii import Keyring
from policy.prefs import Preference, context_key
from policy.rules import Policy
from policy.sharding import stable_hash
from policy.types import UserId
from policy.validate import key_errors, rule_errors
from policy.windows import window_errors
from stores import audit, pii, prefs as prefs_store, state as state_store

CSV_COLUMNS = ("user_id", "channel", "category", "content_type", "context", "enabled", "frequency",
               "quiet_hours", "time_windows", "custom", "priority", "expires_at")
MAX_ERRORS = 100
MAX_LINE = 1 << 20  # bytes in one line: a longer one is an error (and is never held whole)
CHUNK_ROWS = 5000  # rows parsed, checked and staged together: what an import holds in memory
USERS_PER_WRITE = 5000  # users whose version, change-feed and audit rows are written together

Parsed = Iterator[tuple[int, "BulkRow | str"]]  # (line number, row or why it is not one)


class BulkRow(Preference, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    user_id: UserId


class ImportFailed(Exception):
    """The import applies nothing; ``errors`` are (where, reason) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        super().__init__(f"{len(errors)} errors")
        self.errors = errors


_row = msgspec.json.Decoder(BulkRow)


def lines(stream: BinaryIO, limit: int = MAX_LINE) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) read a line at a time; None for a line longer than
    ``limit``, which is skipped without being held."""
    n = 0
    while line := stream.readline(limit + 1):
        n += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = stream.readline(limit + 1)
            yield n, None
        else:
            yield n, line


def parse_ndjson(stream: BinaryIO) -> Parsed:
    """(line number, row or the reason it is not one) for each non-blank line."""
    for n, line in lines(stream):
        if line is None:
            yield n, f"longer than {MAX_LINE} bytes"
        elif line.strip():
            try:
                yield n, _row.decode(line)
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                yield n, str(e)


def _csv_value(col: str, text: str):
    if col in ("quiet_hours", "time_windows", "custom"):
        return orjson.loads(text)
    if col == "enabled":
        return {"true": True, "false": False, "1": True, "0": False}.get(text.lower(), text)
    if col == "priority":
        return int(text)
    if col == "expires_at":
        return float(text)
    if col == "context":
        return dict(part.split("=", 1) for part in text.split("&"))
    return text


class _LongLine(ValueError):
    pass


def _text_lines(text: io.TextIOBase, limit: int = MAX_LINE) -> Iterator[str]:
    while line := text.readline(limit + 1):
        if len(line) > limit and not line.endswith("\n"):
            raise _LongLine(f"a line longer than {limit} characters")
        yield line


def parse_csv(stream: BinaryIO) -> Parsed:
    """As ``parse_ndjson``, for CSV with a header naming ``CSV_COLUMNS``. A line
    too long, or bytes that are not UTF-8, end the parse with that error."""
    reader = csv.DictReader(_text_lines(io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")))
    try:
        unknown = set(reader.fieldnames or ()) - set(CSV_COLUMNS)
        if unknown or "user_id" not in (reader.fieldnames or ()):
            yield 1, f"header: unknown columns {sorted(unknown)}" if unknown else "header: needs a user_id column"
            return
        for record in reader:
            n = reader.line_num
            try:
                raw = {k: _csv_value(k, v) for k, v in record.items() if v not in (None, "")}
                yield n, msgspec.convert(raw, BulkRow)
            except (msgspec.ValidationError, ValueError, orjson.JSONDecodeError) as e:
                yield n, str(e)
    except (_LongLine, csv.Error, UnicodeDecodeError) as e:
        yield max(reader.line_num, 1), f"not readable as CSV: {e}"


Error = tuple[int, str, str]  # (line, where, reason): errors are reported in line order


def row_errors(n: int, row: BulkRow, policy: Policy) -> list[Error]:
    """What is wrong with one row on its own (across rows: ``_across_rows``)."""
    at = f"line {n}"
    errors = key_errors(row, policy, at)
    if row.quiet_hours is not None:
        errors += window_errors(row.quiet_hours, "quiet", f"{at}.quiet_hours")
    if row.time_windows is not None:
        errors += window_errors(row.time_windows, "allowed", f"{at}.time_windows")
    if not row.value():
        errors.append((at, "sets no value"))
    return [(n, where, why) for where, why in errors]


def take(parsed: Parsed, policy: Policy, size: int) -> tuple[list[tuple[int, BulkRow]], list[Error], bool]:
    """The next ``size`` lines: their rows, their errors, and whether the file ended."""
    rows: list[tuple[int, BulkRow]] = []
    errors: list[Error] = []
    for n, row in parsed:
        if isinstance(row, str):
            errors.append((n, f"line {n}", row))
        else:
            errors += row_errors(n, row, policy)
            rows.append((n, row))
        if len(rows) + len(errors) >= size:
            return rows, errors, False
    return rows, errors, True


STAGE = """
CREATE TEMP TABLE _import (user_id text, preference_type text, channel text, category text, content_type text,
    context jsonb, context_key text, value jsonb, priority integer, expires_at timestamptz, shard_key bigint,
    line integer, doc text, custom bytea)
ON COMMIT DROP
"""


STAGE_COLUMNS = ("user_id", "preference_type", "channel", "category", "content_type", "context", "context_key",
                 "value", "priority", "expires_at", "shard_key", "line", "doc")  # custom: sealed later (_seal_custom)


def _stage_record(n: int, r: BulkRow) -> tuple:
    ctx = orjson.dumps(r.context).decode() if r.context else None
    expires = None if r.expires_at is None else _ts(r.expires_at)
    doc = msgspec.json.encode(Preference(**{f: getattr(r, f) for f in Preference.__struct_fields__})).decode()
    return (r.user_id, r.level, r.channel, r.category, r.content_type, ctx, context_key(r.context),
            msgspec.json.encode(r.value()).decode(), r.priority, expires, stable_hash(r.user_id), n, doc)


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


Progress = Callable[[str, int], None]  # ("staged" | "applied", rows so far)


async def import_rows(conn: asyncpg.Connection, ring: Keyring, parsed: Parsed, policy: Policy, actor: str | None, *,
                      progress: Progress = lambda phase, n: None, chunk_rows: int = CHUNK_ROWS,
                      statement_timeout_s: float | None = None) -> tuple[int, list[str]]:
    """Check and write every row of ``parsed`` in one transaction; returns the
    rows written and the users changed. Raises ImportFailed (and writes
    nothing) with the first MAX_ERRORS errors, in line order. Parsing runs in a
    worker thread, a chunk at a time. ``statement_timeout_s``: the bound of this
    transaction's statements (set-based writes of every row; None: the
    connection's)."""
    async with conn.transaction():
        if statement_timeout_s is not None:
            await db.set_local_timeout(conn, statement_timeout_s)
        await conn.execute(STAGE)
        staged, errors = await _stage(conn, parsed, policy, chunk_rows, progress)
        if staged:
            errors = errors + await _across_rows(conn, policy)
        if errors:
            raise ImportFailed([(where, why) for _, where, why in sorted(errors, key=lambda e: e[0])][:MAX_ERRORS])
        if not staged:
            return 0, []
        await conn.execute("INSERT INTO users (user_id, shard_key) SELECT DISTINCT user_id, shard_key FROM _import "
                           "ON CONFLICT (user_id) DO NOTHING")
        # users first, in one order, as a UserShard's write does: no deadlock with one
        await conn.execute("SELECT 1 FROM users WHERE user_id IN (SELECT user_id FROM _import) "
                           "ORDER BY user_id FOR UPDATE")
        await conn.execute(
            "DELETE FROM user_preferences p USING _import i WHERE p.user_id = i.user_id AND p.channel = i.channel "
            "AND p.category = i.category AND p.content_type = i.content_type AND p.context_key = i.context_key")
        await _seal_custom(conn, ring)  # in the staging table (temporary: never in the WAL), before the real one
        await conn.execute(
            "INSERT INTO user_preferences (user_id, preference_type, channel, category, content_type, context, "
            "context_key, value, priority, expires_at, custom) SELECT user_id, preference_type, channel, category, "
            "content_type, context, context_key, value, priority, expires_at, custom FROM _import")
        await _check_rules(conn, ring, policy)
        users = await _write_users(conn, ring, actor, progress)
    return staged, users


async def _stage(conn: asyncpg.Connection, parsed: Parsed, policy: Policy, chunk_rows: int,
                 progress: Progress) -> tuple[int, list[Error]]:
    """COPY every row into ``_import``, a chunk at a time; the rows staged and
    the first MAX_ERRORS errors of single rows."""
    staged, errors, ended = 0, [], False
    while not ended:
        records, errs, ended = await asyncio.to_thread(_take_records, parsed, policy, chunk_rows)  # CPU: off the loop
        errors = (errors + errs)[:MAX_ERRORS]
        if records:
            await conn.copy_records_to_table("_import", records=records, columns=STAGE_COLUMNS)
            staged += len(records)
            progress("staged", staged)
    return staged, errors


def _take_records(parsed: Parsed, policy: Policy, size: int) -> tuple[list[tuple], list[Error], bool]:
    rows, errors, ended = take(parsed, policy, size)
    return [_stage_record(n, r) for n, r in rows], errors, ended


ACROSS_ROWS = """
SELECT line, first, k FROM (
    SELECT line, min(line) OVER (PARTITION BY user_id, channel, category, content_type, context_key) AS first,
           row_number() OVER (PARTITION BY user_id ORDER BY line) AS k
    FROM _import) s
WHERE line <> first OR k = $1
ORDER BY line LIMIT $2
"""


async def _across_rows(conn: asyncpg.Connection, policy: Policy) -> list[Error]:
    """The same user and key on two lines; more rows for a user than allowed
    (named at the first line over)."""
    most = policy.cfg.max_rows
    errors: list[Error] = []
    for line, first, k in await conn.fetch(ACROSS_ROWS, most + 1, MAX_ERRORS):
        if line != first:
            errors.append((line, f"line {line}", f"same user and key as line {first}"))
        if k == most + 1:
            uid = await conn.fetchval("SELECT user_id FROM _import WHERE line = $1", line)
            errors.append((line, f"line {line}", f"more than {most} rows for user {uid!r}"))
    return errors


SWITCHED_OFF = """
SELECT DISTINCT user_id FROM _import
WHERE value @> '{"enabled": false}' OR value @> '{"frequency": "never"}' OR context IS NOT NULL
ORDER BY user_id
"""


async def _seal_custom(conn: asyncpg.Connection, ring: Keyring) -> None:
    """Move the staged rows' custom values out of their value, sealed under each
    user's key, so the set-based insert never writes them in the clear."""
    cursor = await conn.cursor("SELECT line, user_id, value->'custom' FROM _import WHERE value ? 'custom'")
    while rows := await cursor.fetch(5000):
        keys = await pii.data_keys(conn, ring, {r[1] for r in rows}, create=True)
        await conn.executemany("UPDATE _import SET custom = $2, value = value - 'custom' WHERE line = $1",
                               [(r[0], pii.seal_json(keys[r[1]], pii.CUSTOM, r[1], orjson.loads(r[2])))
                                for r in rows])


async def _check_rules(conn: asyncpg.Connection, ring: Keyring, policy: Policy) -> None:
    """Mandatory categories, for the users whose import switches something off."""
    if not policy.mandatory():
        return
    errors: list[tuple[str, str]] = []
    cursor = await conn.cursor(SWITCHED_OFF)
    while len(errors) < MAX_ERRORS and (chunk := [r[0] for r in await cursor.fetch(5000)]):
        prefs = await state_store.load_prefs(conn, ring, chunk)
        consent = await state_store.load_consent(conn, chunk)
        templates = {r[0]: r[1] for r in await conn.fetch(
            f"SELECT user_id, template_id FROM users WHERE user_id = {db.keys(1, 'text')} AND template_id IS NOT NULL",
            chunk)}
        chains: dict[str, tuple] = {}
        for uid in chunk:
            tid = templates.get(uid)
            if tid and tid not in chains:
                chains[tid] = await prefs_store.template_chain(conn, tid)
            for _, why in rule_errors(list(prefs.get(uid, ())), chains.get(tid, ()) if tid else (), policy,
                                      time.time(), consent=consent.get(uid, (frozenset(),))[0]):
                errors.append((f"user {uid}", why))
    if errors:
        raise ImportFailed(errors[:MAX_ERRORS])


async def _write_users(conn: asyncpg.Connection, ring: Keyring, actor: str | None, progress: Progress) -> list[str]:
    """Each imported user's version bumped once, with one change-feed and one
    audit row (the rows it set, in file order), ``USERS_PER_WRITE`` users at a time."""
    users: list[str] = []
    group: dict[str, list[bytes]] = {}
    done = 0
    cursor = await conn.cursor("SELECT user_id, doc FROM _import ORDER BY user_id, line")
    while rows := await cursor.fetch(CHUNK_ROWS):
        for uid, doc in rows:  # a user's rows are together: a group never splits one
            if uid not in group and len(group) >= USERS_PER_WRITE:
                users += await _feed_and_audit(conn, ring, group, actor)
                group = {}
            group.setdefault(uid, []).append(doc.encode())
        done += len(rows)
        progress("applied", done)
    if group:
        users += await _feed_and_audit(conn, ring, group, actor)
    return users


async def _feed_and_audit(conn: asyncpg.Connection, ring: Keyring, per_user: dict[str, list[bytes]],
                          actor: str | None) -> list[str]:
    ids = list(per_user)
    versions = {r[0]: r[1] for r in await conn.fetch(
        "UPDATE users SET prefs_version = prefs_version + 1, state = NULL, updated_at = now() "
        f"WHERE user_id = {db.keys(1, 'text')} RETURNING user_id, prefs_version", ids)}
    feed, entries = [], []
    keys = await pii.data_keys(conn, ring, ids, create=True)
    for uid, docs in per_user.items():
        change = {"set": [orjson.loads(d) for d in docs]}
        feed.append((uid, versions[uid], "import", "import", "{}", pii.seal_json(keys[uid], pii.FEED, uid, change)))
        entries.append(audit.Entry(uid, "preferences.import", None, change, actor))
    await conn.copy_records_to_table("preference_sync_log", columns=(
        "user_id", "version", "sync_type", "source", "changes", "sealed"), records=feed)
    await conn.copy_records_to_table("preference_audit_log", columns=audit.COLUMNS,
                                     records=await audit.prepare(conn, ring, entries))
    return ids


# -- export --------------------------------------------------------------------

EXPORT = """
SELECT user_id, channel, category, content_type, context, value, priority, extract(epoch FROM expires_at)::float8,
       custom
FROM user_preferences WHERE is_active ORDER BY user_id, channel, category, content_type, context_key
"""


async def export_rows(conn: asyncpg.Connection, ring: Keyring, fmt: str, batch: int = 5000) -> AsyncIterator[bytes]:
    """The stored rows as NDJSON or CSV chunks (inside a transaction: a cursor),
    custom values opened (each user's key read once per chunk of rows)."""
    if fmt == "csv":
        yield (",".join(CSV_COLUMNS) + "\r\n").encode()
    cursor = await conn.cursor(EXPORT)
    while recs := await cursor.fetch(batch):
        sealed = {r[0] for r in recs if r[8] is not None}
        keys = await pii.data_keys(conn, ring, sealed) if sealed else {}
        chunk: list[bytes] = []
        for rec in recs:
            p = prefs_store.row_to_pref(*list(rec)[1:8])
            if rec[8] is not None:
                p = msgspec.structs.replace(p, custom=pii.open_custom(keys.get(rec[0]), rec[0], rec[8]))
            chunk.append(_ndjson(rec[0], p) if fmt == "ndjson" else _csv(rec[0], p))
        yield b"".join(chunk)


def _ndjson(user_id: str, p: Preference) -> bytes:
    return b'{"user_id":' + msgspec.json.encode(user_id) + b"," + msgspec.json.encode(p)[1:] + b"\n"


def _csv(user_id: str, p: Preference) -> bytes:
    out = io.StringIO()
    data = msgspec.to_builtins(p)
    cells = [user_id]
    for col in CSV_COLUMNS[1:]:
        v = data.get(col)
        if v is None or v == {}:
            cells.append("")
        elif col == "context":
            cells.append(context_key(v))
        elif col in ("quiet_hours", "time_windows", "custom"):
            cells.append(orjson.dumps(v).decode())
        elif col == "enabled":
            cells.append("true" if v else "false")
        else:
            cells.append(str(v))
    csv.writer(out).writerow(cells)
    return out.getvalue().encode()

