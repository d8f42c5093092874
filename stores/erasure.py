"""Erasure (GDPR Art. 17, CCPA deletion) by crypto-shredding, and legal holds.

``erase`` runs in one transaction, under the user's row lock: a legal hold
refuses it; otherwise the user's data key goes first (everything sealed under it,
audit rows and every copy in backups included, can no longer be opened), then
every row that is theirs and may be deleted, then one audit row, ``gdpr.erase``,
that says what was deleted. The audit chain itself stays: its rows cannot be
deleted (the log is append-only) and still verify, their personal values now
unreadable. The receipt names that audit row and its hash, which the signed
checkpoints cover, so it can be checked later. A second erase of the same user
returns the first receipt. Suppressions stay: they hold only a blind index, and
an erased address must stay suppressed. docs/privacy.md has the details.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import asdict, dataclass

import asyncpg
import orjson

from infra.pii import Keyring
from stores import audit

# The user's data key first: from the moment it is gone nothing sealed opens.
DELETES = (
    ("user_keys", "DELETE FROM user_keys WHERE user_id = $1"),
    ("user_addresses", "DELETE FROM user_addresses WHERE user_id = $1"),
    ("user_preferences", "DELETE FROM user_preferences WHERE user_id = $1"),
    ("preference_consent", "DELETE FROM preference_consent WHERE user_id = $1"),
    ("preference_consent_history", "DELETE FROM preference_consent_history WHERE user_id = $1"),
    ("preference_sync_log", "DELETE FROM preference_sync_log WHERE user_id = $1"),
    ("scheduled_notifications", "DELETE FROM scheduled_notifications WHERE user_id = $1"),
    ("digest_buckets", "DELETE FROM digest_buckets WHERE user_id = $1"),
    ("inbox_messages", "DELETE FROM inbox_messages WHERE user_id = $1"),
    ("engagement_events", "DELETE FROM engagement_events WHERE user_id = $1"),
    ("user_experiment_participation", "DELETE FROM user_experiment_participation WHERE user_id = $1"),
    ("delivery_tracking", "DELETE FROM delivery_tracking WHERE user_id = $1"),
    # status events not yet published, and those a subscriber's URL never took (migration 024)
    ("status_events", "DELETE FROM status_events WHERE user_id = $1"),
    ("event_dead_letters", "DELETE FROM event_dead_letters WHERE event->>'user_id' = $1"),
    ("topic_subscribers", "DELETE FROM topic_subscribers WHERE user_id = $1"),
    ("user_devices", "DELETE FROM user_devices WHERE user_id = $1"),
    ("users", "DELETE FROM users WHERE user_id = $1"),
)


class Held(Exception):
    """The user is under a legal hold; ``reason`` is the hold's reference."""

    def __init__(self, reason: str):
        super().__init__("under legal hold")
        self.reason = reason


@dataclass
class Receipt:
    id: str
    user_id: str
    erased_at: str
    requested_by: str | None
    deleted: dict[str, int]
    key_destroyed: bool
    audit_row: int
    audit_hash: str

    def as_dict(self) -> dict:
        return asdict(self)


def _receipt(r) -> Receipt:
    deleted = orjson.loads(r["deleted"])
    return Receipt(id=str(r["id"]), user_id=r["user_id"],
                   erased_at=r["erased_at"].astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
                   requested_by=r["requested_by"], deleted=deleted, key_destroyed=deleted.get("user_keys", 0) > 0,
                   audit_row=r["audit_row"], audit_hash=bytes(r["audit_hash"]).hex())


async def receipt_of(conn: asyncpg.Connection, user_id: str) -> Receipt | None:
    """The newest erasure receipt of a user id, if it was ever erased."""
    r = await conn.fetchrow("SELECT * FROM erasure_receipts WHERE user_id = $1 ORDER BY erased_at DESC LIMIT 1",
                            user_id)
    return None if r is None else _receipt(r)


async def erase(conn: asyncpg.Connection, ring: Keyring, user_id: str, requested_by: str | None) -> Receipt | None:
    """Erase a user (see the module docstring). Returns the receipt; the earlier
    one if the user was erased already; None if there never was such a user.
    Raises ``Held`` under a legal hold (nothing is deleted)."""
    async with conn.transaction():
        row = await conn.fetchrow("SELECT legal_hold FROM users WHERE user_id = $1 FOR UPDATE", user_id)
        if row is None:
            return await receipt_of(conn, user_id)
        if row["legal_hold"] is not None:
            raise Held(row["legal_hold"])
        deleted = {}
        for table, sql in DELETES:
            status = await conn.execute(sql, user_id)
            deleted[table] = int(status.rsplit(" ", 1)[-1])
        receipt_id = uuid.uuid4()
        await audit.append(conn, ring, [audit.Entry(user_id, "gdpr.erase", None,
                                                    {"receipt": str(receipt_id), "deleted": deleted},
                                                    actor=requested_by, personal=False)])
        head = await conn.fetchrow("SELECT id, hash FROM preference_audit_log WHERE user_id = $1 "
                                   "ORDER BY id DESC LIMIT 1", user_id)
        r = await conn.fetchrow(
            "INSERT INTO erasure_receipts (id, user_id, requested_by, deleted, audit_row, audit_hash) "
            "VALUES ($1, $2, $3, $4::jsonb, $5, $6) RETURNING *",
            receipt_id, user_id, requested_by, orjson.dumps(deleted).decode(), head["id"], head["hash"])
    return _receipt(r)


async def set_hold(conn: asyncpg.Connection, ring: Keyring, user_id: str, reason: str | None,
                   actor: str | None) -> bool:
    """Place (``reason``) or lift (None) a legal hold, audited; False if there is no such user."""
    async with conn.transaction():
        before = await conn.fetchrow("SELECT legal_hold FROM users WHERE user_id = $1 FOR UPDATE", user_id)
        if before is None:
            return False
        await conn.execute("UPDATE users SET legal_hold = $2 WHERE user_id = $1", user_id, reason)
        await audit.append(conn, ring, [audit.Entry(
            user_id, "legal_hold.place" if reason is not None else "legal_hold.lift",
            {"hold": before["legal_hold"]}, {"hold": reason}, actor=actor, personal=False)])
    return True


__all__ = ["DELETES", "Held", "Receipt", "erase", "receipt_of", "set_hold"]
