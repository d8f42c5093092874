"""Mail that reports on mail we sent: delivery status notifications (DSN, RFC 3464)
and feedback-loop complaints (ARF, RFC 5965), read into tracking events.

A report is ``multipart/report``: with ``report-type=delivery-status`` its
``message/delivery-status`` part holds one block per recipient (``Action``:
failed, delayed, delivered, relayed, expanded; ``Status``: an RFC 3463 code, 5.x.x
permanent and 4.x.x transient; ``Diagnostic-Code``: the remote server's words);
with ``report-type=feedback-report`` its ``message/feedback-report`` part says
``Feedback-Type`` (abuse, fraud, virus, other, not-spam, auth-failure). Both
usually quote the original message or its headers (``message/rfc822``,
``text/rfc822-headers``), whose Message-ID names the notification
(``providers.email.verp``).

Mapped as the other email providers' events are (``providers.tracking``):

- DSN ``failed`` with a status that says the address is bad (5.1.x: no such
  mailbox, domain or syntax; 5.2.1 disabled; 5.4.4 unroutable): ``bounced``, hard
  (the address is suppressed); ``failed`` with any other status (a policy or spam
  block, DMARC, mailbox full, too big, 4.x.x): ``failed``, soft: not the address's
  fault, as SendGrid's ``blocked`` and Mailgun's ``espblock`` are taken, so one
  blocklisting does not suppress a whole mailbox provider's users;
- DSN ``delayed``, ``relayed`` and ``expanded``: on the timeline only (relayed: handed
  to a system that reports nothing more); ``delivered``: ``delivered``;
- ARF ``abuse`` and ``fraud``: ``complained``, hard; ``virus``, ``other``,
  ``not-spam``, ``auth-failure`` (and any other type, read as ``feedback``): on the
  timeline only. A report without ``Feedback-Type`` is not a report.

Each event comes with the addresses its own block names (a DSN's
``Original-Recipient`` and ``Final-Recipient``; an ARF's ``Original-Rcpt-To``,
``Removal-Recipient`` and the quoted ``To``), so one recipient's failure never
stands for another's. Anything else (an auto-reply, a bounce without a DSN part)
is not a report. Pure: no I/O, the caller verifies the token and applies the
events. ``parse`` reads what it is given; bounding the size is the caller's.
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import quopri
import re
from email.message import Message
from typing import Literal

import msgspec

from providers.tracking.common import TrackingEvent, _detail

STATUS_CODE = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![0-9.])", re.ASCII)
HARD_STATUS = re.compile(r"5\.1\.\d{1,3}|5\.2\.1|5\.4\.4", re.ASCII)  # the address itself is bad
FEEDBACK_TYPES = frozenset({"abuse", "fraud", "virus", "other", "not-spam", "auth-failure"})
HARD_FEEDBACK = frozenset({"abuse", "fraud"})
MAX_RECIPIENTS = 50  # blocks read from one report: a report is about one message
MAX_TOKEN_TEXT = 998  # a header line's limit: what is searched for a token


class Report(msgspec.Struct, frozen=True):
    """A report's events (without their notification: the caller finds it), the
    addresses it names, and the texts that may carry the notification's token."""

    kind: Literal["dsn", "arf"]
    events: list[TrackingEvent]
    addresses: list[list[str]]  # per event: the addresses its block names
    token_texts: list[str]  # Message-ID, Return-Path ... of the quoted original


def parse(raw: bytes, provider: str, now: float) -> Report | None:
    """The report in ``raw``, or None when it is not a DSN or an ARF report."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    if msg.get_content_type() != "multipart/report":
        return None
    kind = (msg.get_param("report-type") or "")
    kind = kind.lower() if isinstance(kind, str) else ""
    original = _original_headers(msg)
    # str(): compat32 gives a Header object for a value with 8-bit bytes
    token_texts = [str(original.get(h, ""))[:MAX_TOKEN_TEXT] for h in ("Message-ID", "Return-Path")] \
        if original is not None else []
    if kind == "delivery-status":
        return _dsn(msg, provider, now, original, token_texts)
    if kind == "feedback-report":
        return _arf(msg, provider, now, original, token_texts)
    return None


def _part(msg: Message, content_type: str) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == content_type:
            return part
    return None


def _blocks(part: Message | None) -> list[Message]:
    """The header blocks of a ``message/delivery-status`` or ``message/feedback-report``
    (at most one per recipient we read, and the per-message one)."""
    if part is None:
        return []
    payload = part.get_payload()
    if not isinstance(payload, list):
        return []
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding in ("base64", "quoted-printable"):
        # some writers encode the part; the parser then reads its text as one header-less block
        text = "\n".join(str(b.get_payload()) for b in payload if isinstance(b, Message)).encode("ascii", "replace")
        try:
            text = base64.b64decode(text) if encoding == "base64" else quopri.decodestring(text)
        except ValueError:
            return []
        chunks = [c for c in re.split(rb"\r?\n\r?\n", text) if c.strip()][:MAX_RECIPIENTS + 1]
        return [email.message_from_bytes(c.strip(b"\r\n") + b"\n", policy=email.policy.compat32) for c in chunks]
    return [b for b in payload[:MAX_RECIPIENTS + 1] if isinstance(b, Message)]


def _original_headers(msg: Message) -> Message | None:
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0]
        elif ctype == "text/rfc822-headers":
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                return email.message_from_bytes(text, policy=email.policy.compat32)
    return None


def _address(value: str | None) -> str | None:
    """``rfc822; a@b`` (or a bare address) as ``a@b``; None for other address types."""
    if not value:
        return None
    kind, sep, rest = str(value).partition(";")
    if sep and kind.strip().lower() != "rfc822":
        return None
    _, addr = email.utils.parseaddr((rest if sep else kind).strip())
    return addr if "@" in addr else None


def _at(block: Message, now: float) -> float:
    for name in ("Last-Attempt-Date", "Arrival-Date"):
        value = block.get(name)
        if value:
            try:
                parsed = email.utils.parsedate_to_datetime(str(value))
            except (TypeError, ValueError, IndexError):
                continue
            if parsed is not None and parsed.tzinfo is not None:
                return parsed.timestamp()
    return now


def _event(provider: str, status, hard: bool, at: float, detail: str, event: str) -> TrackingEvent:
    return TrackingEvent(provider=provider, notification_id=None, provider_message_id=None, channel="email",
                         address=None, status=status, hard=hard, at=at, detail=detail, event=event)


def _dsn(msg: Message, provider: str, now: float, original: Message | None, token_texts: list[str]) -> Report | None:
    blocks = _blocks(_part(msg, "message/delivery-status"))
    if len(blocks) < 2:
        return None  # the per-message block, then at least one recipient
    per_message = blocks[0]
    quoted_to = _quoted_to(original)
    events, addresses = [], []
    for block in blocks[1:]:
        action = str(block.get("Action", "")).strip().lower()
        code = STATUS_CODE.match(str(block.get("Status", "")).strip())
        status_code = code.group(0) if code else ""
        named = []
        for name in ("Original-Recipient", "Final-Recipient"):
            addr = _address(block.get(name))
            if addr and addr not in named:
                named.append(addr)
        detail = _detail(action, status_code, str(block.get("Diagnostic-Code", "")) or None)
        at = _at(block, _at(per_message, now))
        if action == "failed":
            hard = HARD_STATUS.fullmatch(status_code) is not None
            event = _event(provider, "bounced" if hard else "failed", hard, at, detail,
                           "bounce" if hard else "soft_bounce")
        elif action in ("delayed", "relayed", "expanded"):
            event = _event(provider, None, False, at, detail, action)
        elif action == "delivered":
            event = _event(provider, "delivered", False, at, detail, action)
        else:
            continue
        events.append(event)
        # a block naming nobody (some MTAs) stands for the quoted original's recipient
        addresses.append(named or quoted_to)
    if not events:
        return None
    return Report("dsn", events, addresses, token_texts)


def _quoted_to(original: Message | None) -> list[str]:
    if original is None:
        return []
    return [a for _, a in email.utils.getaddresses([str(original.get("To", ""))[:MAX_TOKEN_TEXT]]) if "@" in a][:5]


def _arf(msg: Message, provider: str, now: float, original: Message | None, token_texts: list[str]) -> Report | None:
    blocks = _blocks(_part(msg, "message/feedback-report"))
    if not blocks or blocks[0].get("Feedback-Type") is None:
        return None
    fields = blocks[0]
    kind = str(fields.get("Feedback-Type", "")).strip().lower()
    kind = kind if kind in FEEDBACK_TYPES else "feedback"  # a fixed vocabulary: it is stored as the event's name
    addresses: list[str] = []
    for name in ("Original-Rcpt-To", "Removal-Recipient"):
        for value in (fields.get_all(name) or [])[:5]:
            addr = _address(value)
            if addr and addr not in addresses:
                addresses.append(addr)
    addresses += [a for a in _quoted_to(original) if a not in addresses]
    hard = kind in HARD_FEEDBACK
    at = _at(fields, now)
    detail = _detail(kind, str(fields.get("User-Agent", ""))[:100] or None)
    event = _event(provider, "complained" if hard else None, hard, at, detail, "complaint" if hard else kind)
    return Report("arf", [event], [addresses], token_texts)


__all__ = ["Report", "parse"]
