"""Twilio status callbacks (SMS and voice): form posts signed with X-Twilio-Signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Iterable
from email.utils import parsedate_to_datetime

from providers.tracking.common import (
    TWILIO_SIGNATURE_HEADER,
    PayloadError,
    SignatureError,
    TrackingEvent,
    TrackingStatus,
    _detail,
)


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """The fields of a form-encoded (application/x-www-form-urlencoded) body."""
    try:
        return urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=1000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"not a form: {exc}") from None


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Base64 HMAC-SHA1(auth_token, url + name + value of each parameter, sorted
    by name (and a repeated name's values sorted)), as Twilio signs requests."""
    grouped: dict[str, set[str]] = {}
    for name, value in params:
        grouped.setdefault(name, set()).add(value)
    data = url + "".join(name + value for name in sorted(grouped) for value in sorted(grouped[name]))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def url_variants(url: str) -> list[str]:
    """``url`` and, as Twilio's own validators do, the same URL with its default
    port added (https 443, http 80) or removed."""
    parts = urllib.parse.urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    variants = [url]
    try:
        port = parts.port
    except ValueError:
        return variants
    if port is not None and port == default:
        variants.append(urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0])))
    elif port is None and default is not None and parts.netloc:
        variants.append(urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}")))
    return variants


def verify_twilio(auth_token: str, signature: str | None, urls: str | Iterable[str],
                  params: Iterable[tuple[str, str]]) -> None:
    """Raise SignatureError unless ``signature`` (``X-Twilio-Signature``) is
    Twilio's signature of one of ``urls`` (each with its default port added or
    removed) and ``params``, compared in constant time."""
    if not signature:
        raise SignatureError(f"missing {TWILIO_SIGNATURE_HEADER} header")
    params = list(params)
    given = signature.strip().encode("utf-8", "replace")
    ok = False
    for url in [urls] if isinstance(urls, str) else urls:
        for variant in url_variants(url):
            # no early exit: every candidate is computed, whichever matches
            ok |= hmac.compare_digest(twilio_signature(auth_token, variant, params).encode(), given)
    if not ok:
        raise SignatureError("signature does not match")


# Error codes that say the number is not there to be reached (bounced, the
# address is suppressed), and the one that says the recipient replied STOP
# (complained, suppressed). Other failures are "failed": they may pass next time.
TWILIO_GONE_CODES = frozenset({
    21211,  # invalid 'To' phone number
    21614,  # 'To' number is not a valid mobile number
    30005,  # unknown destination handset
    30006,  # landline or unreachable carrier
    13224,  # voice: invalid phone number
})
TWILIO_STOP_CODE = 21610  # attempt to send to unsubscribed recipient
_SMS_FINAL = {"delivered", "undelivered", "failed"}
_CALL_FAILED = {"busy", "no-answer", "failed", "canceled"}


def twilio_event(params: Iterable[tuple[str, str]], now: float | None = None) -> TrackingEvent:
    """A Twilio status callback (SMS: ``MessageSid``/``MessageStatus``; voice:
    ``CallSid``/``CallStatus``) as a TrackingEvent."""
    form: dict[str, str] = {}
    for name, value in params:
        form.setdefault(name, value)
    now = time.time() if now is None else now
    if form.get("CallSid"):
        channel, sid, event = "voice", form["CallSid"], form.get("CallStatus", "")
    elif form.get("MessageSid") or form.get("SmsSid"):
        channel = "sms"
        sid = form.get("MessageSid") or form["SmsSid"]
        event = form.get("MessageStatus") or form.get("SmsStatus", "")
    else:
        raise PayloadError("a Twilio status callback needs MessageSid or CallSid")
    if not event:
        raise PayloadError(f"a Twilio status callback needs {'CallStatus' if channel == 'voice' else 'MessageStatus'}")
    raw_code = form.get("ErrorCode") or ""
    # ASCII digits only: "²".isdigit() is true and int() refuses it
    code = int(raw_code) if raw_code.isascii() and raw_code.isdigit() and len(raw_code) <= 9 else None
    status: TrackingStatus | None = None
    hard = False
    if (channel == "sms" and event == "delivered") or (channel == "voice" and event == "completed"):
        status = "delivered"
    elif (channel == "sms" and event in _SMS_FINAL) or (channel == "voice" and event in _CALL_FAILED):
        if code == TWILIO_STOP_CODE:
            status, hard = "complained", True
        elif code in TWILIO_GONE_CODES:
            status, hard = "bounced", True
        else:
            status = "failed"
    at = now
    if form.get("Timestamp"):  # voice callbacks: RFC 2822
        try:
            at = parsedate_to_datetime(form["Timestamp"]).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            at = now
    detail = _detail(code is not None and f"error {code}", form.get("ErrorMessage"),
                     form.get("CallDuration") and f"{form['CallDuration']} s")
    return TrackingEvent(provider="twilio", notification_id=None, provider_message_id=sid, channel=channel,
                         address=form.get("To") or None, status=status, hard=hard, at=at, detail=detail,
                         event=event)


def parse_twilio(body: bytes, now: float | None = None) -> tuple[list[tuple[str, str]], TrackingEvent]:
    """The form fields and the event of a Twilio status callback body."""
    params = parse_form(body)
    return params, twilio_event(params, now)
