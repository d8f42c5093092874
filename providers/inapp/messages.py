"""What the in-app channel stores, serves and publishes: the inbox row as JSON,
the NATS subject of a user's inbox and the event published on it. Shared by the
provider (writer) and ``engine.http.inbox`` (readers)."""

from __future__ import annotations

import datetime as dt

import msgspec

# Same rule as the preference subjects: a plain id is its own token, any other
# id is "~" + unpadded base64url (so "." "*" ">" never reach a subject).
from policy.subjects import user_token

# The columns every reader selects, in the order ``from_row`` expects.
COLUMNS = ("seq, notification_id, category, title, body, data::text AS data, priority, "
           "created_at, seen_at, read_at")


class InboxMessage(msgspec.Struct, kw_only=True):
    """One inbox message as the HTTP API and the WebSocket show it. Times are
    seconds since the epoch; ``seen_at``/``read_at`` are null until marked."""

    seq: int
    notification_id: str
    category: str
    title: str | None
    body: str | None
    data: msgspec.Raw  # the stored JSON object, passed through as it is
    priority: str
    created_at: float
    seen_at: float | None
    read_at: float | None


# ``Event.message`` of an event that is only a wake-up (msgspec cannot decode
# ``Raw | None``, so the absent message is the JSON null).
NO_MESSAGE = msgspec.Raw(b"null")


class Event(msgspec.Struct, kw_only=True):
    """Published on ``<prefix>.inbox.<user token>`` after the row committed.

    ``prev`` is the user's previous seq when the row was written (None for the
    user's first message): a reader that has sent everything up to ``prev``
    may forward ``message`` at once, any other reader first reads what it
    missed from PostgreSQL. ``message`` is null when the message would not fit
    in one NATS message (the event is then only a wake-up)."""

    user_id: str
    seq: int
    prev: int | None
    message: msgspec.Raw = NO_MESSAGE


def _epoch(t: dt.datetime | None) -> float | None:
    return None if t is None else t.timestamp()


def from_row(row) -> InboxMessage:
    """The message for an asyncpg record of ``COLUMNS``."""
    return InboxMessage(seq=row["seq"], notification_id=str(row["notification_id"]), category=row["category"],
                        title=row["title"], body=row["body"], data=msgspec.Raw(row["data"].encode()),
                        priority=row["priority"], created_at=row["created_at"].timestamp(),
                        seen_at=_epoch(row["seen_at"]), read_at=_epoch(row["read_at"]))


def inbox_subject(prefix: str, user_id: str) -> str:
    """``<prefix>.inbox.<user token>``."""
    return f"{prefix}.inbox.{user_token(user_id)}"


__all__ = ["COLUMNS", "NO_MESSAGE", "Event", "InboxMessage", "from_row", "inbox_subject", "user_token"]
