"""Mailgun webhooks: HMAC-signed JSON events, timestamps checked, tokens not reused."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Sequence

import msgspec

from providers.tracking.common import (
    MAILGUN_TOLERANCE_S,
    PayloadError,
    SignatureError,
    TrackingEvent,
    TrackingStatus,
    _check_age,
    _detail,
    _float,
    _str,
)


class TokenMemory:
    """Mailgun tokens seen in the last ``window_s`` seconds, at most
    ``max_tokens`` of them (the oldest are forgotten first): a replayed request
    is refused while its token is remembered, and its timestamp is refused once
    it is older than the window. Per process."""

    def __init__(self, max_tokens: int = 100_000, window_s: float = MAILGUN_TOLERANCE_S):
        self.max_tokens = max_tokens
        self.window_s = window_s
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, token: str) -> bool:
        return token in self._seen

    def remember(self, token: str, now: float | None = None) -> bool:
        """Remember ``token``; False when it was already remembered (a replay)."""
        now = time.time() if now is None else now
        horizon = now - 2 * self.window_s  # timestamps may be up to window_s in the future too
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if at >= horizon:
                break
            del self._seen[oldest]
        if token in self._seen:
            return False
        self._seen[token] = now
        while len(self._seen) > self.max_tokens:
            self._seen.popitem(last=False)
        return True

    def forget(self, token: str) -> None:
        """Forget ``token`` (its request was not processed; the provider's retry
        with the same token must be let in)."""
        self._seen.pop(token, None)


class MailgunWebhook(msgspec.Struct, frozen=True):
    timestamp: str
    token: str
    signature: str
    event_data: dict


def read_mailgun(body: bytes) -> MailgunWebhook:
    """The signature and event of a Mailgun webhook body. PayloadError when it
    is not a JSON object; SignatureError when it carries no usable signature."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"not JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("not JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise PayloadError("a Mailgun webhook body is a JSON object")
    sig = doc.get("signature")
    if not isinstance(sig, dict):
        raise SignatureError("no 'signature' object")
    timestamp, token, signature = _str(sig.get("timestamp")), sig.get("token"), sig.get("signature")
    if not timestamp or not isinstance(token, str) or not token or not isinstance(signature, str) or not signature:
        raise SignatureError("the signature needs timestamp, token and signature")
    data = doc.get("event-data")
    if not isinstance(data, dict):
        raise PayloadError("no 'event-data' object")
    return MailgunWebhook(timestamp, token, signature, data)


def mailgun_signature(signing_key: str, timestamp: str, token: str) -> str:
    """Hex HMAC-SHA256(signing_key, timestamp + token)."""
    return hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def verify_mailgun(signing_key: str | Sequence[str], timestamp: str, token: str, signature: str, *,
                   now: float | None = None, tolerance_s: float = MAILGUN_TOLERANCE_S,
                   tokens: TokenMemory | None = None) -> None:
    """Raise SignatureError unless ``signature`` is the HMAC of ``timestamp +
    token`` under the key (or one of several), compared in constant time; the
    timestamp is within ``tolerance_s`` of ``now``; and (with ``tokens``) the
    token was not seen before. A token that passes is remembered."""
    keys = [signing_key] if isinstance(signing_key, str) else list(signing_key)
    if not keys:
        raise SignatureError("no signing key configured")
    given = signature.strip().lower().encode("utf-8", "replace")
    if not any(hmac.compare_digest(mailgun_signature(k, timestamp, token).encode(), given) for k in keys):
        raise SignatureError("signature does not match")
    now = time.time() if now is None else now
    _check_age(timestamp, now, tolerance_s)
    if tokens is not None and not tokens.remember(token, now):
        raise SignatureError("token already used (a replayed request)")


def mailgun_event(data: dict, now: float | None = None) -> TrackingEvent:
    """A Mailgun ``event-data`` object as a TrackingEvent (see the module doc)."""
    event = data.get("event")
    if not isinstance(event, str) or not event:
        raise PayloadError("event-data needs an 'event' string")
    status: TrackingStatus | None = None
    hard = False
    reason = data.get("reason")
    ds = data.get("delivery-status") if isinstance(data.get("delivery-status"), dict) else {}
    ds_text = _detail(ds.get("code"), ds.get("message") or ds.get("description"))
    if event == "delivered":
        status = "delivered"
        detail = ds_text
    elif event == "failed":
        severity = data.get("severity")
        if severity == "permanent":
            if reason == "suppress-complaint":
                status, hard = "complained", True
            elif reason in ("bounce", "suppress-bounce"):
                status, hard = "bounced", True
            else:  # old, generic, espblock, suppress-unsubscribe: not the address's fault
                status = "failed"
        detail = _detail(severity, reason, ds_text and f"({ds_text})")
    elif event == "complained":
        status, hard = "complained", True
        detail = "complaint"
    elif event == "rejected":
        status = "failed"
        reject = data.get("reject") if isinstance(data.get("reject"), dict) else {}
        detail = _detail(reject.get("reason"), reject.get("description"))
    elif event == "clicked":
        detail = _detail(data.get("url"))
    else:  # accepted, opened, unsubscribed, stored, ...
        detail = ""
    variables = data.get("user-variables")
    nid = variables.get("notification_id") if isinstance(variables, dict) else None
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    mid = _str(headers.get("message-id")) if isinstance(headers, dict) else None
    return TrackingEvent(
        provider="mailgun", notification_id=nid if isinstance(nid, str) and nid else None,
        provider_message_id=mid.strip().removeprefix("<").removesuffix(">") if mid else None, channel="email",
        address=_str(data.get("recipient")), status=status, hard=hard,
        at=_float(data.get("timestamp"), time.time() if now is None else now), detail=detail, event=event,
        engagement=event if event in ("opened", "clicked") else None)


def parse_mailgun(body: bytes, signing_key: str | Sequence[str], *, now: float | None = None,
                  tolerance_s: float = MAILGUN_TOLERANCE_S, tokens: TokenMemory | None = None) -> TrackingEvent:
    """Read, verify (``verify_mailgun``) and parse one Mailgun webhook. A token
    whose event does not parse is forgotten again."""
    hook = read_mailgun(body)
    verify_mailgun(signing_key, hook.timestamp, hook.token, hook.signature, now=now, tolerance_s=tolerance_s,
                   tokens=tokens)
    try:
        return mailgun_event(hook.event_data, now)
    except PayloadError:
        if tokens is not None:
            tokens.forget(hook.token)
        raise
