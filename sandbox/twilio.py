"""A loopback server speaking Twilio's 2010-04-01 REST API for Messages and
Calls, as Twilio documents it."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
import xml.etree.ElementTree as ET
from collections import Counter
from email.utils import formatdate

from aiohttp import web

from providers.sms import segments
from sandbox.http import _HttpSink

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
# Twilio's "magic" test numbers (Test Credentials docs): each always gets this
# error, so a test can provoke a refusal that depends on Twilio's state.
MAGIC_TO_MESSAGES = {
    "+15005550001": (21211, "The 'To' number +15005550001 is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number is not currently reachable via SMS."),
    "+15005550003": (21408, ("Permission to send an SMS has not been enabled for the region indicated by the "
                             "'To' number: +15005550003.")),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number is not a valid mobile number"),
}
MAGIC_TO_CALLS = {
    "+15005550001": (21217, "Phone number does not appear to be valid"),
    "+15005550002": (21214, "'To' phone number cannot be reached"),
    "+15005550003": (21215, "Account not authorized to call +15005550003."),
    "+15005550004": (21216, "Call blocked by Twilio blocklist"),
}
MAGIC_FROM = {
    "+15005550001": (21212, ("The 'From' number +15005550001 is not a valid phone number, shortcode, or "
                             "alphanumeric sender ID.")),
    "+15005550007": (21606, ("The From phone number +15005550007 is not a valid, SMS-capable inbound phone number "
                             "or short code for your account.")),
    "+15005550008": (21611, "This 'From' number has exceeded the maximum number of queued messages"),
}
MAGIC_FROM_CALLS = {
    "+15005550001": (21212, "The 'From' number +15005550001 is not a valid phone number."),
    "+15005550007": (21210, ("The source phone number provided, +15005550007, is not yet verified for your "
                             "account.")),
}
# Beyond the magic numbers: anything under this prefix is an invalid number
# (21211), so tests can make many distinct bad numbers.
INVALID_PREFIX = "+1555000"
MAX_BODY_CHARS = 1600
MAX_TWIML_CHARS = 4000


class _Refused(Exception):
    """A Twilio error answer: (status, code, message)."""


def _hex_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class TwilioSink(_HttpSink):
    """An HTTP server with Twilio's ``POST /2010-04-01/Accounts/{sid}/Messages.json``
    and ``.../Calls.json`` (form-encoded), answering as Twilio documents:

    - 401 ``{"code": 20003, "message": "Authenticate", ...}`` unless HTTP Basic
      auth is the account SID with ``auth_token``, or an API key SID in
      ``api_keys`` with its secret; 404 code 20404 for another account's path.
    - 400 ``{"code", "message", "more_info", "status"}`` for what Twilio refuses
      when the request is made. Messages: no To (21604), no From or
      MessagingServiceSid (21603), no Body (21602), Body over 1,600 characters
      (21617), a To that is not E.164 or starts with ``+1555000`` (21211), a To
      in ``unsubscribed`` (21610, the recipient replied STOP), and Twilio's
      magic test numbers (``MAGIC_TO_MESSAGES``, ``MAGIC_FROM``). Calls: no To
      (21201), no From (21213), none of Url/Twiml/ApplicationSid (21205 here: the
      code is this sink's choice), Twiml over 4,000 characters (32018), the same
      bad To rules (21211) and magic numbers (``MAGIC_TO_CALLS``,
      ``MAGIC_FROM_CALLS``). One liberty: Twiml that is not well-formed XML is
      refused at once (12100, which real Twilio reports when the call runs), so
      tests see escaping mistakes.
    - 201 with the new resource as JSON (``sid`` SM... or CA..., ``status``
      "queued", Messages also ``num_segments`` as carriers count them).

    Counts: ``messages`` and ``calls`` accepted, ``segments`` (sum over
    accepted messages), ``rejected`` (401/404/400), ``failed`` (injected),
    ``requests`` by resource. ``bodies`` holds each accepted request's form (a
    dict) when ``keep_bodies``; ``last_sid`` the last sid given.

    Failure injection as the other sinks: ``fail_status`` (every request, before
    any check) and ``fail_next`` = N to fail only the next N; the body is
    Twilio's error JSON (429 -> code 20429 with ``Retry-After: <retry_after>``,
    5xx -> 20500/20503).
    """

    _stats_name = "twilio"
    _stats_counts = ("messages", "calls", "segments", "rejected", "failed")

    def __init__(self, account_sid: str, auth_token: str, host: str = "127.0.0.1", port: int = 0, *,
                 api_keys: dict[str, str] | None = None, keep_bodies: bool = False):
        self.account_sid = account_sid
        self.host = host
        self.port = port
        self.keep_bodies = keep_bodies
        self.messages = self.calls = self.segments = self.rejected = self.failed = 0
        self.requests: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.unsubscribed: set[str] = set()
        self.last_sid: str | None = None
        self.fail_status: int | None = None
        self.fail_next = 0
        self.retry_after = "1"
        self._credentials = {account_sid: auth_token, **(api_keys or {})}
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._messages)
        app.router.add_post("/2010-04-01/Accounts/{sid}/Calls.json", self._calls)
        return app

    # -- requests ---------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.Response:
        return await self._handle(request, "Messages")

    async def _calls(self, request: web.Request) -> web.Response:
        return await self._handle(request, "Calls")

    async def _handle(self, request: web.Request, resource: str) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.requests[resource] += 1
        if self.fail_status is not None:
            return self._failure()
        try:
            self._authenticate(request)
            doc = self._check_message(form) if resource == "Messages" else self._check_call(form)
        except _Refused as exc:
            self.rejected += 1
            return self._error(*exc.args)
        if self.keep_bodies:
            self.bodies.append(form)
        self.last_sid = doc["sid"]
        return web.json_response(doc, status=201)

    def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        user = secret = None
        if header.startswith("Basic "):
            try:
                user, _, secret = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                pass
        if user is None or user not in self._credentials or not secrets.compare_digest(
                self._credentials[user].encode(), (secret or "").encode()):
            raise _Refused(401, 20003, "Authenticate")
        if request.match_info["sid"] != self.account_sid:
            raise _Refused(404, 20404, f"The requested resource {request.path} was not found")

    def _check_to(self, to: str, magic: dict) -> None:
        if to in magic:
            raise _Refused(400, *magic[to])
        if not _E164.fullmatch(to) or to.startswith(INVALID_PREFIX):
            raise _Refused(400, 21211, f"The 'To' number {to} is not a valid phone number.")

    def _check_message(self, form: dict) -> dict:
        to, sender, service, body = form.get("To"), form.get("From"), form.get("MessagingServiceSid"), form.get("Body")
        if not to:
            raise _Refused(400, 21604, "A 'To' phone number is required.")
        if not sender and not service:
            raise _Refused(400, 21603, "A 'From' phone number is required.")
        if not body:
            raise _Refused(400, 21602, "Message body is required.")
        if len(body) > MAX_BODY_CHARS:
            raise _Refused(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        if sender in MAGIC_FROM:
            raise _Refused(400, *MAGIC_FROM[sender])
        self._check_to(to, MAGIC_TO_MESSAGES)
        if to in self.unsubscribed:
            raise _Refused(400, 21610, "Attempt to send to unsubscribed recipient")
        _, n, _ = segments.count(body)
        self.messages += 1
        self.segments += n
        sid = _hex_sid("SM")
        return {**self._resource(sid, "Messages"), "to": to, "from": sender, "messaging_service_sid": service,
                "body": body, "num_segments": str(n), "num_media": "0", "direction": "outbound-api",
                "status": "queued" if sender else "accepted", "error_code": None, "error_message": None,
                "price": None, "price_unit": "USD"}

    def _check_call(self, form: dict) -> dict:
        to, sender, twiml = form.get("To"), form.get("From"), form.get("Twiml")
        if not to:
            raise _Refused(400, 21201, "No 'To' number is specified")
        if not sender:
            raise _Refused(400, 21213, "No 'From' number is specified")
        if not (twiml or form.get("Url") or form.get("ApplicationSid")):
            raise _Refused(400, 21205, "Url, ApplicationSid or Twiml is required")
        if sender in MAGIC_FROM_CALLS:
            raise _Refused(400, *MAGIC_FROM_CALLS[sender])
        self._check_to(to, MAGIC_TO_CALLS)
        if twiml is not None:
            if len(twiml) > MAX_TWIML_CHARS:
                raise _Refused(400, 32018, "Twiml size exceeded maximum allowed value of 4000 characters")
            try:
                ET.fromstring(twiml)
            except ET.ParseError as exc:
                raise _Refused(400, 12100, f"Document parse failure: {exc}") from exc
        self.calls += 1
        sid = _hex_sid("CA")
        return {**self._resource(sid, "Calls"), "to": to, "from": sender, "status": "queued",
                "direction": "outbound-api", "price": None, "duration": None}

    def _resource(self, sid: str, resource: str) -> dict:
        now = formatdate(time.time(), usegmt=True)
        return {"sid": sid, "account_sid": self.account_sid, "api_version": "2010-04-01", "date_created": now,
                "date_updated": now, "uri": f"/2010-04-01/Accounts/{self.account_sid}/{resource}/{sid}.json"}

    @staticmethod
    def _error(status: int, code: int, message: str, headers: dict | None = None) -> web.Response:
        body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status}
        if status == 401:
            headers = {**(headers or {}), "WWW-Authenticate": 'Basic realm="Twilio API"'}
        return web.json_response(body, status=status, headers=headers)

    def _failure(self) -> web.Response:
        status = self._take_failure()
        if status == 429:
            return self._error(429, 20429, "Too Many Requests", {"Retry-After": self.retry_after})
        code = {500: 20500, 503: 20503}.get(status, status)
        return self._error(status, code, "injected failure")


__all__ = ["INVALID_PREFIX", "MAGIC_FROM", "MAGIC_FROM_CALLS", "MAGIC_TO_CALLS", "MAGIC_TO_MESSAGES", "TwilioSink"]
