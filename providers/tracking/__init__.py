"""Provider tracking webhooks: verify their signatures and normalize their
events. Pure parsing and verification, no I/O (``engine.http.tracking`` serves
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
- Vonage SMS API receipts and inbound messages (``providers.tracking.vonage``):
  query or form parameters, ``sig`` a digest of the others with the account's
  signature secret, ``timestamp`` and ``nonce`` against replays.
- MessageBird status reports and inbound messages
  (``providers.tracking.messagebird``): a JWT in ``MessageBird-Signature-JWT``
  keyed by the signing key, naming the URL called and the body.

Every event becomes a ``TrackingEvent``; ``status`` is None for events that
change no status (opens, clicks, deferrals, in-flight states); ``engagement``
names an open or a click, which is also stored as an engagement event.
"""

from providers.tracking.common import (
    MAILGUN_TOLERANCE_S,
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    TWILIO_SIGNATURE_HEADER,
    PayloadError,
    SignatureError,
    TrackingEvent,
    reason_of,
)
from providers.tracking.mailgun import (
    MailgunWebhook,
    TokenMemory,
    mailgun_event,
    mailgun_signature,
    parse_mailgun,
    read_mailgun,
    verify_mailgun,
)
from providers.tracking.sendgrid import load_sendgrid_key, parse_sendgrid, sendgrid_event, verify_sendgrid
from providers.tracking.twilio import (
    TWILIO_GONE_CODES,
    TWILIO_STOP_CODE,
    parse_form,
    parse_twilio,
    twilio_event,
    twilio_signature,
    url_variants,
    verify_twilio,
)

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

