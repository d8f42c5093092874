"""A loopback server speaking Amazon SNS's Query API ``Publish`` to a phone
number, checking AWS Signature Version 4 as SNS does; and an SNS topic that
delivers signed messages to an HTTP subscription (``SnsTopic``)."""

from __future__ import annotations

import base64
import datetime
import re
import secrets
import urllib.parse
import uuid

import aiohttp
import msgspec
from aiohttp import web
from botocore.credentials import Credentials

from providers.sms import segments
from sandbox.aws import refusal
from sandbox.http import _HttpSink

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
# Numbers under this prefix are not valid, like the other sinks' invalid prefixes.
INVALID_PREFIX = "+1555000"
_NS = "http://sns.amazonaws.com/doc/2010-03-31/"


def _error(status: int, code: str, message: str, kind: str = "Sender") -> web.Response:
    body = (f'<ErrorResponse xmlns="{_NS}"><Error><Type>{kind}</Type><Code>{code}</Code>'
            f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")
    return web.Response(status=status, text=body, content_type="text/xml")


class SnsSink(_HttpSink):
    """An HTTP server with SNS's ``POST /`` (``Action=Publish`` to a
    ``PhoneNumber``), answering as SNS documents:

    - 403 ``InvalidClientTokenId`` for an unknown access key, 403
      ``SignatureDoesNotMatch`` when the SigV4 signature (recomputed with
      botocore's signer over the signed headers and the body) does not match or
      is for another region or service, 400 ``SignatureDoesNotMatch`` ("Signature
      expired") when ``X-Amz-Date`` is more than 5 minutes from now;
    - 400 ``InvalidParameter`` for a PhoneNumber that is not E.164 (or starts
      with ``+1555000``), an empty Message, an SMSType other than Transactional
      or Promotional, a SenderID that is not 1-11 letters and digits with a
      letter; a number in ``opted_out`` is answered 200 and dropped, as SNS does
      (counted in ``dropped_opted_out``);
    - 200 ``PublishResponse/PublishResult/MessageId``.

    Counts: ``messages``, ``segments``, ``rejected``, ``failed`` (injected);
    ``bodies`` holds each accepted request's parameters when ``keep_bodies``;
    ``last_id`` the last MessageId. ``fail_status``/``fail_next`` inject
    failures (500 InternalError, 503 ServiceUnavailable, 400 Throttling for 429).
    """

    _stats_name = "sns"
    _stats_counts = ("messages", "segments", "rejected", "failed")

    def __init__(self, access_key_id: str, secret_access_key: str, region: str = "us-east-1",
                 host: str = "127.0.0.1", port: int = 0, *, keep_bodies: bool = False):
        self.credentials = Credentials(access_key_id, secret_access_key)
        self.region = region
        self.host, self.port = host, port
        self.keep_bodies = keep_bodies
        self.messages = self.segments = self.rejected = self.failed = 0
        self.bodies: list[dict[str, str]] = []
        self.opted_out: set[str] = set()
        self.dropped_opted_out = 0
        self.last_token: str | None = None
        self.last_id: str | None = None
        self.fail_status: int | None = None
        self.fail_next = 0
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self._handle)
        return app

    def _verify(self, request: web.Request, body: bytes) -> web.Response | None:
        refused = refusal(request, body, self.credentials, "sns", self.region)
        return None if refused is None else _error(*refused)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail_status is not None:
            return self._failure()
        refused = self._verify(request, body)
        if refused is None:
            p = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            refused = self._check(p)
        if refused is not None:
            self.rejected += 1
            return refused
        if self.keep_bodies:
            self.bodies.append(p)
        self.last_token = request.headers.get("X-Amz-Security-Token")
        self.messages += 1
        self.segments += len(segments.split(p["Message"]))
        self.last_id = str(uuid.uuid4())
        return web.Response(text=f'<PublishResponse xmlns="{_NS}"><PublishResult><MessageId>{self.last_id}'
                                 f"</MessageId></PublishResult><ResponseMetadata><RequestId>{uuid.uuid4()}"
                                 "</RequestId></ResponseMetadata></PublishResponse>", content_type="text/xml")

    def _check(self, p: dict[str, str]) -> web.Response | None:
        if p.get("Action") != "Publish":
            return _error(400, "InvalidAction", "only Publish is served here")
        number = p.get("PhoneNumber", "")
        if not _E164.fullmatch(number) or number.startswith(INVALID_PREFIX):
            return _error(400, "InvalidParameter", "Invalid parameter: PhoneNumber Reason: not a valid number")
        if number in self.opted_out:  # SNS answers 200 and drops it (its delivery logs say "opted out")
            self.dropped_opted_out += 1
        if not p.get("Message"):
            return _error(400, "InvalidParameter", "Invalid parameter: Message Reason: empty")
        attributes = {p[k]: p.get(k.replace(".Name", ".Value.StringValue"), "")
                      for k in p if k.startswith("MessageAttributes.entry.") and k.endswith(".Name")}
        if attributes.get("AWS.SNS.SMS.SMSType", "Transactional") not in ("Transactional", "Promotional"):
            return _error(400, "InvalidParameter", "Invalid parameter: SMSType")
        sender_id = attributes.get("AWS.SNS.SMS.SenderID")
        if sender_id is not None and not re.fullmatch(r"(?=.*[A-Za-z])[A-Za-z0-9]{1,11}", sender_id):
            return _error(400, "InvalidParameter", "Invalid parameter: SenderID")
        return None

    def _failure(self) -> web.Response:
        status = self._take_failure()
        if status == 429:
            return _error(400, "Throttling", "Rate exceeded")
        return _error(status, "InternalError" if status == 500 else "ServiceUnavailable", "injected failure",
                      "Receiver")




class SnsTopic(_HttpSink):
    """An SNS topic delivering to an HTTP subscription, as SNS does: each message
    signed with the key of a self-signed certificate this server serves at
    ``/cert.pem`` (``SignatureVersion`` 2, SHA256; 1, SHA1, on request), and a
    ``SubscribeURL`` (``/confirm?Token=...``) whose GETs it counts in
    ``confirmations``. ``publish`` posts a Notification (an SES event, say);
    ``subscribe`` posts the SubscriptionConfirmation."""

    _stats_name = "sns-topic"
    _stats_counts = ("published", "confirmations", "cert_fetches")

    def __init__(self, topic_arn: str = "arn:aws:sns:us-east-1:123456789012:tidings-ses", host: str = "127.0.0.1",
                 port: int = 0):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.topic_arn = topic_arn
        self.host, self.port = host, port
        self.published = self.confirmations = self.cert_fetches = 0
        self.fail_status: int | None = None
        self.fail_next = 0
        self.failed = 0
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.us-east-1.amazonaws.com")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self._key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30)).sign(self._key, hashes.SHA256()))
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/cert.pem", self._cert)
        app.router.add_get("/confirm", self._confirm)
        return app

    async def _cert(self, request: web.Request) -> web.Response:
        self.cert_fetches += 1
        return web.Response(body=self.cert_pem, content_type="application/x-pem-file")

    async def _confirm(self, request: web.Request) -> web.Response:
        self.confirmations += 1
        return web.Response(text="<ConfirmSubscriptionResponse/>", content_type="text/xml")

    def message(self, kind: str, message: str, *, version: str = "2", **extra: str) -> dict[str, str]:
        """A signed SNS message of ``kind`` (``Notification``, ``SubscriptionConfirmation``)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        from providers.tracking.sns import SnsMessage, canonical

        doc = {"Type": kind, "MessageId": str(uuid.uuid4()), "TopicArn": self.topic_arn, "Message": message,
               "Timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
               "SignatureVersion": version, "SigningCertURL": f"{self.url}/cert.pem", **extra}
        if kind == "SubscriptionConfirmation":
            token = secrets.token_hex(16)
            doc.update(Token=token, SubscribeURL=f"{self.url}/confirm?Token={token}")
        unsigned = msgspec.convert({**doc, "Signature": ""}, SnsMessage)
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        doc["Signature"] = base64.b64encode(self._key.sign(canonical(unsigned), padding.PKCS1v15(), digest)).decode()
        return doc

    async def post(self, url: str, doc: dict[str, str]) -> tuple[int, bytes]:
        """POST ``doc`` to a subscriber as SNS does (text/plain JSON and the message type header)."""
        self.published += 1
        async with aiohttp.ClientSession() as s, s.post(url, data=msgspec.json.encode(doc), headers={
                "Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": doc["Type"]}) as r:
            return r.status, await r.read()

    async def publish(self, url: str, message: str, **extra: str) -> tuple[int, bytes]:
        return await self.post(url, self.message("Notification", message, **extra))

    async def subscribe(self, url: str) -> tuple[int, bytes]:
        return await self.post(url, self.message("SubscriptionConfirmation", "You have chosen to subscribe..."))


__all__ = ["INVALID_PREFIX", "SnsSink", "SnsTopic"]
