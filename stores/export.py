"""Everything held about one person, for GDPR Art. 15 (access) and 20
(portability) and CCPA's right to know: their profile and addresses, current
preferences and every change to them, consent, deliveries and engagement,
in-app messages, audit entries and the suppressions of their addresses.

``collect`` reads each section with one query (``SECTIONS``: the name, the
columns and where they come from); ``as_jsonld`` and ``as_zip`` shape the same
rows. The JSON-LD context is ``CONTEXT``, documented term by term in
``docs/export.md``. What retention already deleted (tracking rows past
``tracking_days``, read inbox messages past ``inbox_read_days``) is not held, so
it is not exported.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
import zipfile
from dataclasses import dataclass

import asyncpg
import msgspec
import orjson

from infra.pii import Keyring, PiiError
from stores import audit, pii

VOCAB = "https://tidings.dev/ns/export/v1#"


@dataclass(frozen=True)
class Section:
    name: str
    columns: tuple[str, ...]
    sql: str  # $1 is the user id; columns in this order, JSON as text (then ``sealed``'s, if any)
    json_columns: frozenset[str] = frozenset()
    # "address", "custom", "feed", "evidence" or "audit": the query's last column is sealed under the user's key
    sealed: str | None = None


def _open(section: Section, row: dict, blob: bytes | None, key: bytes | None, user_id: str) -> None:
    """Fill the columns a sealed value holds; left empty when there is nothing
    to open, or no key (the person was erased while the export ran)."""
    if blob is None or key is None:
        return
    try:
        if section.sealed == "address":
            row["address"] = pii.open_address(key, user_id, row["channel"], blob)
        elif section.sealed == "custom":
            row["value"] = {**(row["value"] or {}), "custom": pii.open_json(key, pii.CUSTOM, user_id, blob)}
        elif section.sealed == "feed":
            row["changes"] = pii.open_json(key, pii.FEED, user_id, blob)
        elif section.sealed == "evidence":
            row["evidence"] = pii.open_json(key, pii.EVIDENCE, user_id, blob)
        else:
            values = audit.open_row(key, user_id, blob)
            row.update(old_value=values.get("old"), new_value=values.get("new"), ip_address=values.get("ip"),
                       user_agent=values.get("user_agent"))
    except PiiError:
        row["unreadable"] = True


SECTIONS = (
    Section("profile", ("user_id", "timezone", "locale", "template_id", "preferences_version", "created_at",
                        "updated_at"),
            "SELECT user_id, timezone, locale, template_id, prefs_version, created_at, updated_at "
            "FROM users WHERE user_id = $1"),
    Section("addresses", ("channel", "address", "verified", "updated_at"),
            "SELECT channel, NULL, verified, updated_at, sealed FROM user_addresses WHERE user_id = $1 "
            "ORDER BY channel", sealed="address"),
    Section("preferences", ("channel", "category", "content_type", "context", "value", "priority", "expires_at",
                            "active", "metadata", "created_at", "updated_at"),
            "SELECT channel, category, content_type, context::text, value::text, priority, expires_at, is_active, "
            "metadata::text, created_at, updated_at, custom FROM user_preferences WHERE user_id = $1 "
            "ORDER BY channel, category, content_type, context_key", frozenset({"context", "value", "metadata"}),
            sealed="custom"),
    Section("preference_history", ("version", "type", "source", "changes", "at"),
            "SELECT version, sync_type, source, changes::text, created_at, sealed FROM preference_sync_log "
            "WHERE user_id = $1 ORDER BY version", frozenset({"changes"}), sealed="feed"),
    Section("consent", ("channel", "purpose", "status", "basis", "source", "text_version", "expires_at",
                        "granted_at", "withdrawn_at", "updated_at", "evidence"),
            "SELECT channel, purpose, status, basis, source, text_version, expires_at, granted_at, withdrawn_at, "
            "updated_at, NULL, evidence FROM preference_consent WHERE user_id = $1 ORDER BY channel, purpose",
            sealed="evidence"),
    Section("consent_history", ("channel", "purpose", "status", "basis", "source", "text_version", "expires_at",
                                "actor", "at", "evidence"),
            "SELECT channel, purpose, status, basis, source, text_version, expires_at, actor, at, NULL, evidence "
            "FROM preference_consent_history WHERE user_id = $1 ORDER BY id", sealed="evidence"),
    Section("deliveries", ("notification_id", "channel", "category", "priority", "status", "reason", "provider",
                           "provider_message_id", "attempts", "timeline", "errors", "accepted_at", "completed_at",
                           "broadcast_id", "digest_id"),
            "SELECT notification_id, channel, category, priority, status, reason, provider, provider_message_id, "
            "attempts, timeline::text, errors::text, accepted_at, completed_at, parent_id, digest_id "
            "FROM delivery_tracking WHERE user_id = $1 ORDER BY created_at, channel",
            frozenset({"timeline", "errors"})),
    Section("held", ("kind", "notification_id", "channel", "category", "due_at", "status", "request", "created_at"),
            "SELECT kind, notification_id, channel, category, due_at, status, request, created_at "
            "FROM scheduled_notifications WHERE user_id = $1 ORDER BY id", frozenset({"request"})),
    Section("devices", ("device_id", "service", "platform", "app", "kind", "last_seen_at", "created_at"),
            "SELECT device_id, service, platform, app, kind, last_seen_at, created_at FROM user_devices "
            "WHERE user_id = $1 ORDER BY device_id"),
    Section("topics", ("topic_id", "subscribed_at", "source"),
            "SELECT topic_id, subscribed_at, source FROM topic_subscribers WHERE user_id = $1 ORDER BY topic_id"),
    Section("engagement", ("notification_id", "channel", "type", "at", "source"),
            "SELECT notification_id, channel, type, at, source FROM engagement_events WHERE user_id = $1 ORDER BY id"),
    Section("experiments", ("experiment_id", "notification_id", "variant", "assigned_at"),
            "SELECT experiment_id, notification_id, variant, assigned_at FROM user_experiment_participation "
            "WHERE user_id = $1 ORDER BY assigned_at, notification_id"),
    Section("inbox", ("seq", "notification_id", "category", "title", "body", "data", "priority", "created_at",
                      "seen_at", "read_at"),
            "SELECT seq, notification_id, category, title, body, data::text, priority, created_at, seen_at, read_at "
            "FROM inbox_messages WHERE user_id = $1 ORDER BY seq", frozenset({"data"})),
    Section("audit", ("id", "action", "old_value", "new_value", "reason", "performed_by", "ip_address",
                      "user_agent", "at"),
            "SELECT id, action, old_value::text, new_value::text, reason, performed_by, host(ip_address), user_agent, "
            "created_at, sealed FROM preference_audit_log WHERE user_id = $1 ORDER BY id",
            frozenset({"old_value", "new_value"}), sealed="audit"),
    Section("suppressions", ("channel", "address", "reason", "source", "created_at"),
            "SELECT s.channel, NULL, s.reason, s.source, s.created_at, a.sealed FROM suppressions s "
            "JOIN user_addresses a ON a.channel = s.channel AND a.blind = s.blind WHERE a.user_id = $1 "
            "ORDER BY s.channel", sealed="address"),
)

CONTEXT = {
    "@vocab": VOCAB,
    "schema": "https://schema.org/",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "user_id": "schema:identifier",
    "address": "schema:contactPoint",
    "timezone": "schema:timezone",
    "locale": "schema:inLanguage",
    "generated_at": {"@id": "schema:dateCreated", "@type": "xsd:dateTime"},
    **{k: {"@type": "xsd:dateTime"} for k in ("created_at", "updated_at", "expires_at", "granted_at",
                                              "withdrawn_at", "accepted_at", "completed_at", "at", "seen_at",
                                              "read_at", "due_at")},
    **{k: {"@type": "@json"} for k in ("context", "value", "changes", "timeline", "data", "old_value",
                                       "new_value", "metadata", "errors", "request", "evidence")},
}


def _plain(value):
    """A column value as JSON and CSV carry it: instants in ISO 8601 UTC, ids as text."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


async def collect(conn: asyncpg.Connection, ring: Keyring, user_id: str) -> dict[str, list[dict]] | None:
    """Every section's rows (JSON columns parsed, sealed values opened), or None
    if there is no such user. One repeatable-read snapshot: the sections agree
    with each other."""
    out: dict[str, list[dict]] = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        key = (await pii.data_keys(conn, ring, [user_id])).get(user_id)
        for s in SECTIONS:
            rows = []
            for r in await conn.fetch(s.sql, user_id):
                row = {}
                for col, value in zip(s.columns, r[:len(s.columns)], strict=True):
                    if col in s.json_columns and value is not None:
                        # jsonb as text; a held request as the MessagePack it is stored as
                        value = msgspec.msgpack.decode(value) if isinstance(value, bytes) else orjson.loads(value)
                    row[col] = _plain(value)
                if s.sealed is not None:
                    _open(s, row, r[len(s.columns)], key, user_id)
                rows.append(row)
            out[s.name] = rows
    return out if out["profile"] else None


def as_jsonld(user_id: str, sections: dict[str, list[dict]], generated_at: dt.datetime) -> dict:
    profile = sections["profile"][0] if sections["profile"] else {}
    return {
        "@context": CONTEXT,
        "@type": "PersonalDataExport",
        "@id": f"urn:tidings:export:{uuid.uuid5(uuid.NAMESPACE_URL, user_id + generated_at.isoformat())}",
        "generated_at": _plain(generated_at),
        "subject": {"@id": f"urn:tidings:user:{uuid.uuid5(uuid.NAMESPACE_URL, 'tidings:' + user_id)}",
                    "@type": "schema:Person", **profile},
        **{name: rows for name, rows in sections.items() if name != "profile"},
    }


FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    if isinstance(value, str) and value.startswith(FORMULA):
        # a spreadsheet would run it as a formula (CSV injection): quoted as text
        return "'" + value
    return str(value)


def as_zip(sections: dict[str, list[dict]], generated_at: dt.datetime) -> bytes:
    """One CSV per section (a header row, JSON values as JSON text), and README.txt."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("README.txt", f"Personal data export, generated {_plain(generated_at)}.\n"
                                 "One CSV file per kind of data; the terms are described in docs/export.md.\n"
                                 f"Files: {', '.join(s.name + '.csv' for s in SECTIONS)}\n")
        for s in SECTIONS:
            text = io.StringIO()
            w = csv.writer(text, lineterminator="\r\n")
            w.writerow(s.columns)
            for row in sections[s.name]:
                w.writerow([_cell(row[c]) for c in s.columns])
            z.writestr(f"{s.name}.csv", text.getvalue())
    return buf.getvalue()


__all__ = ["CONTEXT", "SECTIONS", "as_jsonld", "as_zip", "collect"]
