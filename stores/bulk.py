"""Bulk preference import and export (NDJSON and CSV, the same row shape both
ways: a preference row plus ``user_id``).

An import is all or nothing: every row is parsed and validated first (every
error reported with its line), then everything is written in one transaction —
rows upserted by key, each user's version bumped once, one audit row and one
change-feed row per user. It is the one writer besides the UserShards (a single
transaction cannot span them); it bumps versions in SQL, so a concurrent shard
write sees a version conflict instead of losing either change, and the shards
reload the imported users once it has committed.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import msgspec
import orjson

from policy.prefs import Preference, context_key
from policy.rules import Policy
from policy.sharding import stable_hash
from policy.types import UserId
from policy.validate import key_errors, rule_errors
from policy.windows import window_errors
from stores import prefs as prefs_store, state as state_store
from stores.audit import chain_hash

CSV_COLUMNS = ("user_id", "channel", "category", "content_type", "context", "enabled", "frequency",
               "quiet_hours", "time_windows", "custom", "priority", "expires_at")
MAX_ERRORS = 100


class BulkRow(Preference, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    user_id: UserId


class ImportFailed(Exception):
    """The import applies nothing; ``errors`` are (where, reason) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        super().__init__(f"{len(errors)} errors")
        self.errors = errors


_row = msgspec.json.Decoder(BulkRow)


def parse_ndjson(data: bytes) -> Iterator[tuple[int, BulkRow | str]]:
    """(line number, row or the reason it is not one) for each non-blank line."""
    for n, line in enumerate(data.splitlines(), 1):
        if line.strip():
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


def parse_csv(data: bytes) -> Iterator[tuple[int, BulkRow | str]]:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
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


def validate_rows(parsed: Iterator[tuple[int, BulkRow | str]], policy: Policy,
                  progress: Callable[[int], None] = lambda n: None) -> list[BulkRow]:
    """All rows, or ImportFailed with every error (the first MAX_ERRORS)."""
    rows: list[BulkRow] = []
    errors: list[tuple[str, str]] = []
    seen: dict[tuple, int] = {}
    per_user: dict[str, int] = {}
    for n, row in parsed:
        at = f"line {n}"
        if isinstance(row, str):
            errors.append((at, row))
            continue
        errors += key_errors(row, policy, at)
        if row.quiet_hours is not None:
            errors += window_errors(row.quiet_hours, "quiet", f"{at}.quiet_hours")
        if row.time_windows is not None:
            errors += window_errors(row.time_windows, "allowed", f"{at}.time_windows")
        if not row.value():
            errors.append((at, "sets no value"))
        first = seen.setdefault((row.user_id, *row.key()), n)
        if first != n:
            errors.append((at, f"same user and key as line {first}"))
        rows.append(row)
        per_user[row.user_id] = per_user.get(row.user_id, 0) + 1
        if per_user[row.user_id] == policy.cfg.max_rows + 1:
            errors.append((at, f"more than {policy.cfg.max_rows} rows for user {row.user_id!r}"))
        if len(rows) % 10_000 == 0:
            progress(len(rows))
    if errors:
        raise ImportFailed(errors[:MAX_ERRORS])
    return rows


STAGE = """
CREATE TEMP TABLE _import (user_id text, preference_type text, channel text, category text, content_type text,
    context jsonb, context_key text, value jsonb, priority integer, expires_at timestamptz, shard_key bigint)
ON COMMIT DROP
"""


def _stage_record(r: BulkRow) -> tuple:
    ctx = orjson.dumps(r.context).decode() if r.context else None
    expires = None if r.expires_at is None else _ts(r.expires_at)
    return (r.user_id, r.level, r.channel, r.category, r.content_type, ctx, context_key(r.context),
            msgspec.json.encode(r.value()).decode(), r.priority, expires, stable_hash(r.user_id))


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


async def apply_rows(conn: asyncpg.Connection, rows: list[BulkRow], policy: Policy, actor: str | None,
                     progress: Callable[[int], None] = lambda n: None) -> list[str]:
    """Write every row in one transaction; returns the users changed. Raises
    ImportFailed (and writes nothing) if the result breaks a rule."""
    async with conn.transaction():
        await conn.execute(STAGE)
        await conn.copy_records_to_table("_import", records=[_stage_record(r) for r in rows])
        progress(len(rows) // 3)
        await conn.execute("INSERT INTO users (user_id, shard_key) SELECT DISTINCT user_id, shard_key FROM _import "
                           "ON CONFLICT (user_id) DO NOTHING")
        # users first, in one order, as a UserShard's write does: no deadlock with one
        await conn.execute("SELECT 1 FROM users WHERE user_id IN (SELECT user_id FROM _import) "
                           "ORDER BY user_id FOR UPDATE")
        await conn.execute(
            "DELETE FROM user_preferences p USING _import i WHERE p.user_id = i.user_id AND p.channel = i.channel "
            "AND p.category = i.category AND p.content_type = i.content_type AND p.context_key = i.context_key")
        await conn.execute(
            "INSERT INTO user_preferences (user_id, preference_type, channel, category, content_type, context, "
            "context_key, value, priority, expires_at) SELECT user_id, preference_type, channel, category, "
            "content_type, context, context_key, value, priority, expires_at FROM _import")
        progress(2 * len(rows) // 3)
        await _check_rules(conn, rows, policy)
        versions = await conn.fetch(
            "UPDATE users u SET prefs_version = u.prefs_version + 1, state = NULL, updated_at = now() "
            "FROM (SELECT DISTINCT user_id FROM _import) i WHERE u.user_id = i.user_id "
            "RETURNING u.user_id, u.prefs_version")
        await _feed_and_audit(conn, rows, dict(versions), actor)
    return [r[0] for r in versions]


async def _check_rules(conn: asyncpg.Connection, rows: list[BulkRow], policy: Policy) -> None:
    """Mandatory categories, for the users whose import switches something off."""
    if not policy.mandatory():
        return
    users = sorted({r.user_id for r in rows if r.enabled is False or r.frequency == "never" or r.context})
    errors: list[tuple[str, str]] = []
    for i in range(0, len(users), 5000):
        chunk = users[i:i + 5000]
        prefs = await state_store.load_prefs(conn, chunk)
        consent = await state_store.load_consent(conn, chunk)
        templates = {r[0]: r[1] for r in await conn.fetch(
            "SELECT user_id, template_id FROM users WHERE user_id = ANY($1::text[]) AND template_id IS NOT NULL",
            chunk)}
        chains: dict[str, tuple] = {}
        for uid in chunk:
            tid = templates.get(uid)
            if tid and tid not in chains:
                chains[tid] = await prefs_store.template_chain(conn, tid)
            for _, why in rule_errors(list(prefs.get(uid, ())), chains.get(tid, ()) if tid else (), policy,
                                      time.time(), consent=consent.get(uid, frozenset())):
                errors.append((f"user {uid}", why))
        if len(errors) >= MAX_ERRORS:
            break
    if errors:
        raise ImportFailed(errors[:MAX_ERRORS])


async def _feed_and_audit(conn: asyncpg.Connection, rows: list[BulkRow], versions: dict[str, int],
                          actor: str | None) -> None:
    per_user: dict[str, list] = {}
    for r in rows:
        per_user.setdefault(r.user_id, []).append(msgspec.to_builtins(Preference(**{
            f: getattr(r, f) for f in Preference.__struct_fields__})))
    ids = list(per_user)
    prev = {r[0]: r[1] for r in await conn.fetch(
        "SELECT DISTINCT ON (user_id) user_id, hash FROM preference_audit_log "
        "WHERE user_id = ANY($1::text[]) ORDER BY user_id, id DESC", ids)}
    feed, audit = [], []
    for uid, set_rows in per_user.items():
        change = {"set": set_rows}
        text = orjson.dumps(change).decode()
        feed.append((uid, versions[uid], "import", "import", text))
        audit.append((uid, "preferences.import", None, text, actor, prev.get(uid),
                      chain_hash(prev.get(uid), uid, "preferences.import", change)))
    await conn.copy_records_to_table("preference_sync_log", columns=(
        "user_id", "version", "sync_type", "source", "changes"), records=feed)
    await conn.copy_records_to_table("preference_audit_log", columns=(
        "user_id", "action", "old_value", "new_value", "performed_by", "prev_hash", "hash"), records=audit)


# -- export --------------------------------------------------------------------

EXPORT = """
SELECT user_id, channel, category, content_type, context, value, priority, extract(epoch FROM expires_at)::float8
FROM user_preferences WHERE is_active ORDER BY user_id, channel, category, content_type, context_key
"""


async def export_rows(conn: asyncpg.Connection, fmt: str, batch: int = 5000) -> AsyncIterator[bytes]:
    """The stored rows as NDJSON or CSV chunks (inside a transaction: a cursor)."""
    if fmt == "csv":
        yield (",".join(CSV_COLUMNS) + "\r\n").encode()
    chunk: list[bytes] = []
    async for rec in conn.cursor(EXPORT, prefetch=batch):
        p = prefs_store.row_to_pref(*list(rec)[1:])
        chunk.append(_ndjson(rec[0], p) if fmt == "ndjson" else _csv(rec[0], p))
        if len(chunk) >= batch:
            yield b"".join(chunk)
            chunk = []
    if chunk:
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

