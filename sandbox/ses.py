"""A loopback server speaking Amazon SES API v2 ``SendEmail``
(``POST /v2/email/outbound-emails``, simple content), checking AWS Signature
Version 4 as SES does (``sandbox.aws``)."""

from __future__ import annotations

import secrets

import msgspec
from aiohttp import web
from botocore.credentials import Credentials

from policy.email import is_address
from sandbox.aws import refusal
from sandbox.http import _HttpSink

MAX_RECIPIENTS = 50  # SES's limit per message


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status, headers={"X-Amzn-ErrorType": kind})


class SesSink(_HttpSink):
    """An HTTP server with SES v2's ``SendEmail``, answering as SES documents:

    - 403 ``UnrecognizedClientException`` / ``InvalidSignatureException`` (the
      signature recomputed with botocore's signer over the signed headers and
      the body; an unknown key, a wrong secret, region or service, or a date more
      than 5 minutes away refused);
    - 400 ``BadRequestException`` for a body that is not the documented one: no
      ``FromEmailAddress``, no ``Destination.ToAddresses`` (or more than 50, or
      one that is not an address), no subject, no text or HTML body, a header
      that is not ``{Name, Value}`` or a ``List-Unsubscribe`` not in ``<>``;
    - 400 ``MessageRejected`` when ``FromEmailAddress`` is not in ``identities``
      (an unverified sender, as in the SES sandbox), 404 ``NotFoundException``
      for a ``ConfigurationSetName`` not in ``configuration_sets``;
    - 200 ``{"MessageId"}``.

    Counts: ``messages``, ``rejected``, ``failed`` (injected); ``bodies`` holds
    the decoded documents when ``keep_bodies``; ``last_id``. ``fail_status``/
    ``fail_next`` inject failures (429 ``TooManyRequestsException``, 500
    ``InternalFailure``, 503 ``ServiceUnavailable``).
    """

    _stats_name = "ses"
    _stats_counts = ("messages", "rejected", "failed")

    def __init__(self, access_key_id: str, secret_access_key: str, region: str = "us-east-1",
                 host: str = "127.0.0.1", port: int = 0, *, identities: tuple[str, ...] = ("noreply@tidings.test",),
                 configuration_sets: tuple[str, ...] = ("tidings",), keep_bodies: bool = False):
        self.credentials = Credentials(access_key_id, secret_access_key)
        self.region = region
        self.host, self.port = host, port
        self.identities = set(identities)
        self.configuration_sets = set(configuration_sets)
        self.keep_bodies = keep_bodies
        self.messages = self.rejected = self.failed = 0
        self.bodies: list[dict] = []
        self.last_id: str | None = None
        self.fail_status: int | None = None
        self.fail_next = 0
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/email/outbound-emails", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail_status is not None:
            return self._failure()
        refused = refusal(request, body, self.credentials, "ses", self.region)
        if refused is not None:
            self.rejected += 1
            status, code, message = refused
            kind = "UnrecognizedClientException" if code == "InvalidClientTokenId" else "InvalidSignatureException"
            return _error(status, kind, message)
        try:
            doc = msgspec.json.decode(body)
            answer = self._check(doc)
        except msgspec.DecodeError:
            answer = _error(400, "BadRequestException", "body is not JSON")
        if answer is not None:
            self.rejected += 1
            return answer
        if self.keep_bodies:
            self.bodies.append(doc)
        self.messages += 1
        self.last_id = f"0100{secrets.token_hex(8)}-{secrets.token_hex(4)}-000000"
        return web.json_response({"MessageId": self.last_id})

    def _check(self, doc) -> web.Response | None:
        bad = lambda why: _error(400, "BadRequestException", why)  # noqa: E731
        if not isinstance(doc, dict):
            return bad("body is not an object")
        sender = doc.get("FromEmailAddress")
        if not isinstance(sender, str) or not sender:
            return bad("FromEmailAddress is required")
        to = (doc.get("Destination") or {}).get("ToAddresses") if isinstance(doc.get("Destination"), dict) else None
        if not isinstance(to, list) or not to or len(to) > MAX_RECIPIENTS \
                or not all(isinstance(a, str) and is_address(a) for a in to):
            return bad("Destination.ToAddresses must hold 1-50 addresses")
        simple = ((doc.get("Content") or {}).get("Simple") if isinstance(doc.get("Content"), dict) else None) or {}
        subject = (simple.get("Subject") or {}).get("Data") if isinstance(simple.get("Subject"), dict) else None
        if not isinstance(subject, str) or not subject:
            return bad("Content.Simple.Subject.Data is required")
        body = simple.get("Body") if isinstance(simple.get("Body"), dict) else {}
        if not any(isinstance(body.get(k), dict) and isinstance(body[k].get("Data"), str) for k in ("Text", "Html")):
            return bad("Content.Simple.Body needs Text or Html")
        for h in simple.get("Headers") or []:
            if not (isinstance(h, dict) and isinstance(h.get("Name"), str) and isinstance(h.get("Value"), str)):
                return bad("Headers must be {Name, Value}")
            if h["Name"].lower() == "list-unsubscribe" and not (h["Value"].startswith("<") and h["Value"].endswith(">")):
                return bad("List-Unsubscribe must be <URI>")
        address = sender.rsplit("<", 1)[-1].rstrip(">").strip()
        if address not in self.identities:
            return _error(400, "MessageRejected", f"Email address is not verified: {address}")
        cs = doc.get("ConfigurationSetName")
        if cs is not None and cs not in self.configuration_sets:
            return _error(404, "NotFoundException", f"Configuration set <{cs}> does not exist.")
        return None

    def _failure(self) -> web.Response:
        status = self._take_failure()
        kind = {429: "TooManyRequestsException", 500: "InternalFailure"}.get(status, "ServiceUnavailable")
        return _error(status, kind, "injected failure")


__all__ = ["SesSink"]
