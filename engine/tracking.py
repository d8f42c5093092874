"""Provider tracking webhooks: verify their signatures and normalize their
events. Pure parsing and verification, no I/O (``engine.http_tracking`` serves
the routes and writes the results).

- SendGrid Event Webhook: a JSON array of events, signed with ECDSA P-256 over
  ``timestamp + raw body`` (``X-Twilio-Email-Event-Webhook-Signature``: base64
  DER signature; ``X-Twilio-Email-Event-Webhook-Timestamp``), verified with the
  account's public key (base64 DER SubjectPublicKeyInfo, as SendGrid shows it;
  PEM is accepted too).
- Mailgun webhooks: one JSON event per request, ``{"signature": {"timestamp",
  "token", "signature"}, "event-data": {...}}``; ``signature`` is hex
  HMAC-SHA256(webhook signing key, timestamp + token). Timestamps more than
  five minutes away from now and tokens already seen are refused.
- Twilio status callbacks (SMS and voice): form-encoded; ``X-Twilio-Signature``
  is base64 HMAC-SHA1(auth token, full URL + each POST parameter's name and
  value, sorted by name).

Every event becomes a ``TrackingEvent``; ``status`` is None for events that only
go on the timeline (opens, clicks, deferrals, in-flight states).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from email.utils import parsedate_to_datetime
from typing import Literal

import msgspec
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

TrackingStatus = Literal["delivered", "bounced", "complained", "failed"]

SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"
MAILGUN_TOLERANCE_S = 300.0  # Mailgun: refuse timestamps further than this from now
MAX_DETAIL = 500


class SignatureError(Exception):
    """The request is not signed by the provider (answer 401)."""


class PayloadError(ValueError):
    """The body is not what the provider sends (answer 400)."""


class TrackingEvent(msgspec.Struct, frozen=True):
    """One provider event, normalized.

    ``status``: what the delivery became (None: timeline only). ``hard``: the
    address must not be used again (hard bounce, complaint). ``at``: when the
    provider says it happened (epoch seconds). ``event``: the provider's own
    name of the event ("bounce", "failed", "undelivered", ...).
    """

    provider: str
    notification_id: str | None
    provider_message_id: str | None
    channel: str
    address: str | None
    status: TrackingStatus | None
    hard: bool
    at: float
    detail: str
    event: str = ""


def _detail(*parts) -> str:
    text = " ".join(str(p).strip() for p in parts if p is not None and p is not False and str(p).strip())
    return text[:MAX_DETAIL]


def _str(value) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _float(value, default: float) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return default
    return f if math.isfinite(f) else default


# -- SendGrid -----------------------------------------------------------------

def load_sendgrid_key(key: str) -> ec.EllipticCurvePublicKey:
    """The public key of SendGrid's Signed Event Webhook settings: base64 DER
    (SubjectPublicKeyInfo), or PEM. ValueError when it is neither, or not EC."""
    text = key.strip() if isinstance(key, str) else ""
    try:
        if text.startswith("-----BEGIN"):
            public = serialization.load_pem_public_key(text.encode())
        else:
            public = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm, TypeError) as exc:
        raise ValueError(f"not a base64 DER or PEM public key: {exc}") from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve (ECDSA) public key")
    return public


def verify_sendgrid(public_key: ec.EllipticCurvePublicKey | str | Sequence[ec.EllipticCurvePublicKey | str],
                    signature: str | None, timestamp: str | None, body: bytes, *, now: float | None = None,
                    tolerance_s: float = 0.0) -> None:
    """Raise SignatureError unless ``signature`` (base64 DER ECDSA) signs
    ``timestamp + body`` with SHA-256 under ``public_key`` (or one of several).
    With ``tolerance_s`` > 0, a timestamp further than that from ``now`` is
    refused as well."""
    keys = [public_key] if isinstance(public_key, (str, ec.EllipticCurvePublicKey)) else list(public_key)
    keys = [load_sendgrid_key(k) if isinstance(k, str) else k for k in keys]
    if not keys:
        raise SignatureError("no public key configured")
    if not signature:
        raise SignatureError(f"missing {SENDGRID_SIGNATURE_HEADER} header")
    if not timestamp:
        raise SignatureError(f"missing {SENDGRID_TIMESTAMP_HEADER} header")
    try:
        der = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not base64") from None
    signed = timestamp.encode() + body
    for key in keys:
        try:
            key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
            break
        except InvalidSignature:
            continue
    else:
        raise SignatureError("signature does not match")
    if tolerance_s > 0:
        _check_age(timestamp, now, tolerance_s)


def _check_age(timestamp: str, now: float | None, tolerance_s: float) -> float:
    try:
        ts = float(timestamp)
    except ValueError:
        raise SignatureError(f"timestamp {timestamp[:40]!r} is not epoch seconds") from None
    now = time.time() if now is None else now
    if not abs(now - ts) <= tolerance_s:
        raise SignatureError(f"timestamp is {now - ts:.0f} s from now (tolerance {tolerance_s:.0f} s)")
    return ts


def _sg_message_id(value) -> str | None:
    """SendGrid's ``sg_message_id`` is ``<X-Message-Id>.<filter>...``: the part
    before the first dot is what the send answered."""
    text = _str(value)
    return text.split(".", 1)[0] if text else None


_SG_DROPPED_BOUNCE = ("bounced address", "invalid")
_SG_DROPPED_COMPLAINT = ("spam reporting address",)


def sendgrid_event(item: dict, now: float | None = None) -> TrackingEvent:
    """One SendGrid event object as a TrackingEvent (see ``SENDGRID_STATUS``)."""
    event = item.get("event")
    if not isinstance(event, str) or not event:
        raise PayloadError("a SendGrid event needs an 'event' string")
    status: TrackingStatus | None = None
    hard = False
    reason = item.get("reason")
    if event == "delivered":
        status = "delivered"
        detail = _detail(item.get("response"))
    elif event == "bounce":
        kind = item.get("type") or "bounce"
        if kind == "blocked":  # a soft bounce: the receiver refused this time, not the address
            status = "failed"
        else:
            status, hard = "bounced", True
        detail = _detail(kind, item.get("status"), reason)
    elif event == "dropped":
        text = str(reason or "").strip().lower()
        if text in _SG_DROPPED_BOUNCE:
            status, hard = "bounced", True
        elif text in _SG_DROPPED_COMPLAINT:
            status, hard = "complained", True
        else:
            status = "failed"
        detail = _detail(reason)
    elif event == "spamreport":
        status, hard = "complained", True
        detail = "spam report"
    elif event == "deferred":
        detail = _detail(item.get("attempt") and f"attempt {item.get('attempt')}:", item.get("response"))
    elif event == "click":
        detail = _detail(item.get("url"))
    else:  # processed, open, unsubscribe, group_unsubscribe, group_resubscribe, ...
        detail = _detail(item.get("useragent") if event == "open" else None)
    nid = item.get("notification_id")
    return TrackingEvent(
        provider="sendgrid", notification_id=nid if isinstance(nid, str) and nid else None,
        provider_message_id=_sg_message_id(item.get("sg_message_id")), channel="email",
        address=_str(item.get("email")), status=status, hard=hard,
        at=_float(item.get("timestamp"), time.time() if now is None else now), detail=detail, event=event)


def parse_sendgrid(body: bytes, now: float | None = None) -> list[TrackingEvent]:
    """The events of a SendGrid Event Webhook body (a JSON array of objects)."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"not JSON: {exc}") from None
    if not isinstance(doc, list):
        raise PayloadError("a SendGrid Event Webhook body is a JSON array of events")
    events = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            raise PayloadError(f"event {i} is not an object")
        try:
            events.append(sendgrid_event(item, now))
        except PayloadError as exc:
            raise PayloadError(f"event {i}: {exc}") from None
    return events


# -- Mailgun ------------------------------------------------------------------

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
        at=_float(data.get("timestamp"), time.time() if now is None else now), detail=detail, event=event)


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


# -- Twilio -------------------------------------------------------------------

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
    code = int(raw_code) if raw_code.isdigit() else None
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


_REASON = re.compile(r"[^a-z0-9]+")


def reason_of(event: TrackingEvent) -> str:
    """The tracking row's ``reason`` for a status an event sets: the provider's
    event name in snake case ("bounce", "spamreport", "no_answer")."""
    return _REASON.sub("_", event.event.lower()).strip("_")[:64] or "tracking"


__all__ = [
    "MAILGUN_TOLERANCE_S",
    "SENDGRID_SIGNATURE_HEADER",
    "SENDGRID_TIMESTAMP_HEADER",
    "TWILIO_GONE_CODES",
    "TWILIO_SIGNATURE_HEADER",
    "TWILIO_STOP_CODE",
    "MailgunWebhook",
    "PayloadError",
    "SignatureError",
    "TokenMemory",
    "TrackingEvent",
    "load_sendgrid_key",
    "mailgun_event",
    "mailgun_signature",
    "parse_form",
    "parse_mailgun",
    "parse_sendgrid",
    "parse_twilio",
    "read_mailgun",
    "reason_of",
    "sendgrid_event",
    "twilio_event",
    "twilio_signature",
    "url_variants",
    "verify_mailgun",
    "verify_sendgrid",
    "verify_twilio",
]
