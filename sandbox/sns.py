"""A loopback server speaking Amazon SNS's Query API ``Publish`` to a phone
number, checking AWS Signature Version 4 as SNS does."""

from __future__ import annotations

import re
import urllib.parse
import uuid

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
      or Promotional, a SenderID that is not 1-11 letters and digits; a number in
      ``opted_out`` gets 400 ``InvalidParameter`` "Phone number is opted out";
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
        if number in self.opted_out:
            return _error(400, "InvalidParameter", "Invalid parameter: PhoneNumber Reason: Phone number is opted out")
        if not p.get("Message"):
            return _error(400, "InvalidParameter", "Invalid parameter: Message Reason: empty")
        attributes = {p[k]: p.get(k.replace(".Name", ".Value.StringValue"), "")
                      for k in p if k.startswith("MessageAttributes.entry.") and k.endswith(".Name")}
        if attributes.get("AWS.SNS.SMS.SMSType", "Transactional") not in ("Transactional", "Promotional"):
            return _error(400, "InvalidParameter", "Invalid parameter: SMSType")
        sender_id = attributes.get("AWS.SNS.SMS.SenderID")
        if sender_id is not None and not re.fullmatch(r"[A-Za-z0-9]{1,11}", sender_id):
            return _error(400, "InvalidParameter", "Invalid parameter: SenderID")
        return None

    def _failure(self) -> web.Response:
        status = self._take_failure()
        if status == 429:
            return _error(400, "Throttling", "Rate exceeded")
        return _error(status, "InternalError" if status == 500 else "ServiceUnavailable", "injected failure",
                      "Receiver")


__all__ = ["INVALID_PREFIX", "SnsSink"]
