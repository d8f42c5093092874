"""Amazon SNS HTTP(S) notifications, and the SES events they carry.

SNS signs each message with the key of an X.509 certificate it serves at
``SigningCertURL``: ``Signature`` is base64 RSA over the message's
canonical text, the listed fields as ``name\\nvalue\\n`` in a fixed order, with
SHA1 (``SignatureVersion`` 1) or SHA256 (2). The certificate is fetched only
from the SNS host of the topic's own region, over HTTPS, at SNS's certificate
path (``sns_url_ok``), so a message cannot bring its own key. A
``SubscriptionConfirmation`` is confirmed by a GET of its ``SubscribeURL`` (the
same host).

AWS two-way SMS publishes the texts people send to our numbers to a topic too
(``sms_inbound``).

SES publishes its sending events to a topic (a configuration set's event
destination, or an identity's notifications): ``Bounce`` (``Permanent``: the
address is gone), ``Complaint`` and ``Delivery``, each naming the message
(``mail.messageId``) and its tags (``mail.tags.notification_id``, which the
SES provider sets).
"""

from __future__ import annotations

import base64
import re
import time
import urllib.parse
from collections.abc import Mapping
from datetime import datetime

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from providers.tracking.common import PayloadError, SignatureError, TrackingEvent, TrackingStatus, _detail

MESSAGE_TYPE_HEADER = "x-amz-sns-message-type"
TOPIC_ARN = re.compile(r"arn:(aws|aws-cn|aws-us-gov):sns:([a-z0-9-]+):[0-9]{12}:[A-Za-z0-9_.-]{1,256}")
CERT_PATH = re.compile(r"/SimpleNotificationService-[0-9a-f]+\.pem")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOLERANCE_S = 3600.0  # SNS retries a delivery for up to an hour with the first Timestamp
# the canonical fields of each message type, in SNS's order (absent optional ones skipped)
FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}


class SnsMessage(msgspec.Struct, rename="pascal", forbid_unknown_fields=False):
    """An SNS HTTP message (the JSON body SNS POSTs)."""

    type: str
    message_id: str
    topic_arn: str
    message: str
    timestamp: str
    signature_version: str
    signature: str
    signing_cert_url: str = msgspec.field(name="SigningCertURL")
    subject: str | None = None
    subscribe_url: str | None = msgspec.field(name="SubscribeURL", default=None)
    token: str | None = None


def parse_sns(body: bytes) -> SnsMessage:
    try:
        m = msgspec.json.decode(body, type=SnsMessage)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:  # deep: msgspec's limit
        raise PayloadError(f"not an SNS message: {exc}") from None
    if m.type not in FIELDS:
        raise PayloadError(f"unknown SNS message type {m.type!r}")
    return m


def canonical(m: SnsMessage) -> bytes:
    """The text SNS signs for ``m``."""
    fields = FIELDS.get(m.type)
    if fields is None:
        raise PayloadError(f"unknown SNS message type {m.type!r}")
    values = {"Message": m.message, "MessageId": m.message_id, "Subject": m.subject, "Timestamp": m.timestamp,
              "TopicArn": m.topic_arn, "Type": m.type, "SubscribeURL": m.subscribe_url, "Token": m.token}
    return "".join(f"{name}\n{values[name]}\n" for name in fields if values[name] is not None).encode()


def sns_host(topic_arn: str) -> str | None:
    """The SNS endpoint host of the topic's region and partition, or None for
    what is not a topic ARN."""
    m = TOPIC_ARN.fullmatch(topic_arn)
    if m is None:
        return None
    return f"sns.{m.group(2)}.amazonaws.com" + (".cn" if m.group(1) == "aws-cn" else "")


def sns_url_ok(url: str, topic_arn: str, kind: str, prefix: str | None = None) -> bool:
    """Whether SNS may send us to ``url`` for a message of ``topic_arn``: its
    signing certificate (``kind`` "cert": ``/SimpleNotificationService-<hex>.pem``,
    no query) or a SubscribeURL ("subscribe"), over HTTPS on the SNS host of the
    topic's own region (``sns_host``), no user info, the default port. A loopback
    ``prefix`` (a test's SNS) replaces the host rule, never the path rule's spirit:
    the URL must then be on that very scheme, host and port, under its path."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.username is not None or parts.password is not None or parts.fragment:
        return False
    if prefix:
        base = urllib.parse.urlsplit(prefix)
        return (base.hostname in LOOPBACK and base.path.endswith("/") and parts.scheme == base.scheme
                and parts.hostname == base.hostname and port == base.port and parts.path.startswith(base.path))
    host = sns_host(topic_arn)
    if host is None or parts.scheme != "https" or port not in (None, 443) or parts.hostname != host:
        return False
    if kind == "cert":
        return not parts.query and bool(CERT_PATH.fullmatch(parts.path))
    return parts.path in ("", "/") and "Action=ConfirmSubscription" in parts.query


def precheck(m: SnsMessage, topics: frozenset[str]) -> None:
    """What can be refused before the certificate is fetched: SignatureError for
    a topic this engine does not listen to or a SignatureVersion SNS does not use."""
    if m.topic_arn not in topics:
        raise SignatureError("a topic this engine does not listen to")
    if m.signature_version not in ("1", "2"):
        raise SignatureError(f"unknown SignatureVersion {m.signature_version!r}")


def verify_sns(m: SnsMessage, cert_pem: bytes, topics: frozenset[str], now: float | None = None) -> None:
    """SignatureError unless ``m`` comes from one of ``topics``, is signed by the
    key of ``cert_pem`` (the certificate from its SigningCertURL) and is recent."""
    precheck(m, topics)
    algorithm = hashes.SHA1() if m.signature_version == "1" else hashes.SHA256()
    try:
        key = x509.load_pem_x509_certificate(cert_pem).public_key()
        signature = base64.b64decode(m.signature, validate=True)
    except ValueError as exc:
        raise SignatureError(f"unusable certificate or signature: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError("the certificate's key is not RSA")
    try:
        key.verify(signature, canonical(m), padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise SignatureError("signature does not match") from None
    try:
        at = datetime.fromisoformat(m.timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise SignatureError("bad Timestamp") from None
    if abs((time.time() if now is None else now) - at) > TOLERANCE_S:
        raise SignatureError("Timestamp too far from now")


def _tag(mail: Mapping, name: str) -> str | None:
    values = (mail.get("tags") or {}).get(name) if isinstance(mail.get("tags"), dict) else None
    return values[0] if isinstance(values, list) and values and isinstance(values[0], str) else None


def ses_events(message: str, now: float | None = None) -> list[TrackingEvent]:
    """The TrackingEvents of one SES event (the SNS message's ``Message``): one
    per recipient it names. Other event types (Send, Open, Click...) give none."""
    try:
        doc = msgspec.json.decode(message)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise PayloadError(f"the SNS Message is not an SES event: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("mail"), dict):
        raise PayloadError("an SES event needs mail")
    kind = doc.get("eventType") or doc.get("notificationType")
    mail = doc["mail"]
    nid, message_id = _tag(mail, "notification_id"), mail.get("messageId")
    now = time.time() if now is None else now
    events = []

    def add(address, status: TrackingStatus | None, hard: bool, at, *detail) -> None:
        when = at if isinstance(at, str) else ""
        try:
            stamp = datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
        except ValueError:
            stamp = now
        events.append(TrackingEvent(provider="ses", notification_id=nid, provider_message_id=message_id
                                    if isinstance(message_id, str) else None, channel="email",
                                    address=address if isinstance(address, str) else None, status=status, hard=hard,
                                    at=stamp, detail=_detail(*detail), event=str(kind).lower()))

    if kind == "Bounce" and isinstance(doc.get("bounce"), dict):
        b = doc["bounce"]
        hard = b.get("bounceType") == "Permanent"
        for r in b.get("bouncedRecipients") or []:
            if isinstance(r, dict):
                add(r.get("emailAddress"), "bounced" if hard else None, hard, b.get("timestamp"),
                    b.get("bounceType"), b.get("bounceSubType"), r.get("diagnosticCode"))
    elif kind == "Complaint" and isinstance(doc.get("complaint"), dict):
        c = doc["complaint"]
        spam = c.get("complaintFeedbackType") != "not-spam"  # ARF: the reporter says it is not spam
        for r in c.get("complainedRecipients") or []:
            if isinstance(r, dict):
                add(r.get("emailAddress"), "complained" if spam else None, spam, c.get("timestamp"),
                    c.get("complaintFeedbackType"))
    elif kind == "Delivery" and isinstance(doc.get("delivery"), dict):
        d = doc["delivery"]
        for address in d.get("recipients") or []:
            add(address, "delivered", False, d.get("timestamp"), d.get("smtpResponse"))
    return events


def sms_inbound(message: str) -> tuple[str, str, str]:
    """(the sender's number, the text, the message's id) of a text a person sent
    to one of our numbers, as AWS two-way SMS publishes it to a topic
    (``originationNumber``, ``messageBody``, ``inboundMessageId``)."""
    try:
        doc = msgspec.json.decode(message)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise PayloadError(f"the SNS Message is not an inbound SMS: {exc}") from None
    if not isinstance(doc, dict):
        raise PayloadError("an inbound SMS is an object")
    number, body, mid = doc.get("originationNumber"), doc.get("messageBody"), doc.get("inboundMessageId")
    if not isinstance(number, str) or not number or not isinstance(body, str) or not isinstance(mid, str) or not mid:
        raise PayloadError("an inbound SMS needs originationNumber, messageBody and inboundMessageId")
    return number, body, mid


__all__ = ["MESSAGE_TYPE_HEADER", "SnsMessage", "canonical", "parse_sns", "precheck", "ses_events", "sns_host",
           "sms_inbound", "sns_url_ok", "verify_sns"]
