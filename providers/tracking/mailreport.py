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

- DSN ``failed`` with a 5.x.x status: ``bounced``, hard (the address is
  suppressed); ``failed`` with any other status: ``failed``, soft (the MTA gave
  up retrying; the address may work tomorrow);
- DSN ``delayed``: on the timeline only; ``delivered``/``relayed``/``expanded``:
  ``delivered``;
- ARF abuse, fraud, virus, other (and a missing type): ``complained``, hard;
  ``not-spam`` and ``auth-failure``: on the timeline only.

Anything else (an auto-reply, a bounce without a DSN part) is not a report.
Pure: no I/O, the caller verifies the token and applies the events.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from email.message import Message
from typing import Literal

import msgspec

from providers.tracking.common import TrackingEvent, _detail

STATUS_CODE = re.compile(r"([245])\.\d{1,3}\.\d{1,3}")
HARD_FEEDBACK = frozenset({"abuse", "fraud", "virus", "other"})
MAX_RECIPIENTS = 50  # blocks read from one report: a report is about one message


class Report(msgspec.Struct, frozen=True):
    """A report's events (without their notification: the caller finds it), the
    addresses it names, and the texts that may carry the notification's token."""

    kind: Literal["dsn", "arf"]
    events: list[TrackingEvent]
    addresses: list[str]
    token_texts: list[str]  # Message-ID, Return-Path ... of the quoted original


def parse(raw: bytes, provider: str, now: float) -> Report | None:
    """The report in ``raw``, or None when it is not a DSN or an ARF report."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    if msg.get_content_type() != "multipart/report":
        return None
    kind = (msg.get_param("report-type") or "")
    kind = kind.lower() if isinstance(kind, str) else ""
    original = _original_headers(msg)
    token_texts = [original.get(h, "") for h in ("Message-ID", "Return-Path", "References")] if original else []
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
    """The header blocks of a ``message/delivery-status`` or ``message/feedback-report``."""
    if part is None:
        return []
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, Message)]
    if isinstance(payload, str):  # some writers give it a transfer encoding the parser left as text
        return [email.message_from_string(chunk) for chunk in re.split(r"\r?\n\r?\n", payload) if chunk.strip()]
    return []


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
    events, addresses = [], []
    for block in blocks[1:1 + MAX_RECIPIENTS]:
        action = str(block.get("Action", "")).strip().lower()
        code = STATUS_CODE.search(str(block.get("Status", "")))
        status_code = code.group(0) if code else ""
        for name in ("Original-Recipient", "Final-Recipient"):
            addr = _address(block.get(name))
            if addr and addr not in addresses:
                addresses.append(addr)
        detail = _detail(action, status_code, str(block.get("Diagnostic-Code", "")) or None)
        at = _at(block, _at(per_message, now))
        if action == "failed":
            hard = status_code.startswith("5.")
            events.append(_event(provider, "bounced" if hard else "failed", hard, at, detail, "bounce"))
        elif action == "delayed":
            events.append(_event(provider, None, False, at, detail, "delayed"))
        elif action in ("delivered", "relayed", "expanded"):
            events.append(_event(provider, "delivered", False, at, detail, action))
    if not events:
        return None
    if original is not None and not addresses:
        addresses += [a for _, a in email.utils.getaddresses([str(original.get("To", ""))]) if "@" in a]
    return Report("dsn", events, addresses, token_texts)


def _arf(msg: Message, provider: str, now: float, original: Message | None, token_texts: list[str]) -> Report | None:
    blocks = _blocks(_part(msg, "message/feedback-report"))
    if not blocks:
        return None
    fields = blocks[0]
    kind = str(fields.get("Feedback-Type", "other")).strip().lower() or "other"
    addresses: list[str] = []
    for name in ("Original-Rcpt-To", "Removal-Recipient"):
        for value in fields.get_all(name, []):
            addr = _address(value)
            if addr and addr not in addresses:
                addresses.append(addr)
    if original is not None:
        addresses += [a for _, a in email.utils.getaddresses([str(original.get("To", ""))])
                      if "@" in a and a not in addresses]
    hard = kind in HARD_FEEDBACK
    at = _at(fields, now)
    detail = _detail(kind, str(fields.get("User-Agent", "")) or None)
    event = _event(provider, "complained" if hard else None, hard, at, detail,
                   "complaint" if hard else kind)
    return Report("arf", [event], addresses, token_texts)


__all__ = ["Report", "parse"]
