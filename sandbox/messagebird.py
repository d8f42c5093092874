"""A loopback server speaking MessageBird's REST ``POST /messages``, as
MessageBird documents it."""

from __future__ import annotations

import asyncio
import re
import secrets
import urllib.parse
from datetime import UTC, datetime

import aiohttp
import msgspec
import yarl
from aiohttp import web

from providers.tracking.messagebird import SIGNATURE_HEADER, messagebird_jwt
from sandbox.http import _HttpSink

_MSISDN = re.compile(r"[1-9][0-9]{6,14}")
_NUMERIC_ORIGINATOR = re.compile(r"\+?[0-9]{1,17}")
_ALPHA_ORIGINATOR = re.compile(r"[A-Za-z0-9 ]{1,11}")
# Recipients under this prefix are not valid numbers, like Twilio's sink's
# +1555000: tests can make many distinct bad numbers.
INVALID_PREFIX = "1555000"
_AUTH_ERROR = msgspec.json.encode({"errors": [{"code": 2, "description": "Request not allowed (incorrect access_key)",
                                                "parameter": "access_key"}]})


class _Refused(Exception):
    """A 422 answer: (code, description, parameter)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


class MessageBirdSink(_HttpSink):
    """An HTTP server with MessageBird's ``POST /messages`` (JSON body),
    answering as MessageBird documents:

    - 401 ``{"errors": [{"code": 2, "description": "Request not allowed
      (incorrect access_key)", "parameter": "access_key"}]}`` unless
      ``Authorization: AccessKey <access_key>``.
    - 422 ``{"errors": [{code, description, parameter}]}`` for a body it
      refuses: not a JSON object (21 "Bad request"), no originator (9
      "originator is required"), an originator longer than 11 characters
      (alphanumeric) or 17 digits (10 "originator is invalid"), no body (9
      "body is required"), no valid recipient (9 "no (correct) recipients
      found": each must be an msisdn, number or digit string, and not start
      with ``1555000``), a datacoding other than plain/unicode/auto (10); and
      with ``balance`` at 0, 25 "Not enough balance" (each accepted message
      costs 1 when ``balance`` is not None; that MessageBird answers 25 with
      422 is this sink's assumption).
    - 201 with the message object: ``id``, ``href``, ``originator``, ``body``,
      ``datacoding``, ``recipients`` ({totalCount, totalSentCount, items:
      [{recipient, status "sent", statusDatetime}]}).

    Counts: ``messages`` (accepted requests), ``recipients`` (accepted msisdns),
    ``rejected`` (401/422), ``failed`` (injected). ``bodies`` holds decoded
    bodies when ``keep_bodies``; ``last_id`` the last id given.

    Status reports: with a ``signing_key``, each accepted message with a
    ``reportUrl`` gets a report per recipient, a GET to that URL with ``id``,
    ``reference`` (as sent), ``recipient``, ``status`` (``report_status``,
    "delivered"), ``statusReason`` (``report_reason``), ``statusErrorCode`` and
    ``statusDatetime``, signed as MessageBird signs webhooks
    (``MessageBird-Signature-JWT``). ``reports_sent`` counts them,
    ``report_answers`` keeps the HTTP statuses. ``send_inbound`` posts a text
    as if a person sent it to one of our numbers, signed the same way.

    Failure injection as the other sinks: ``fail_status``/``fail_next``; 429 adds
    ``Retry-After: <retry_after>``; the body is MessageBird's errors list
    (code 99 "Internal error" for 5xx, no code otherwise).
    """

    _stats_name = "messagebird"
    _stats_counts = ("messages", "recipients", "rejected", "failed")

    def __init__(self, access_key: str, host: str = "127.0.0.1", port: int = 0, *, keep_bodies: bool = False,
                 balance: int | None = None, signing_key: str | None = None):
        self.access_key = access_key
        self.signing_key = signing_key
        self.report_status, self.report_reason, self.report_error = "delivered", "successfully delivered", "0"
        self.reports_sent = 0
        self.report_answers: list[int] = []
        self._tasks: set[asyncio.Task] = set()
        self.host = host
        self.port = port
        self.keep_bodies = keep_bodies
        self.balance = balance
        self.messages = self.recipients = self.rejected = self.failed = 0
        self.bodies: list = []
        self.last_id: str | None = None
        self.fail_status: int | None = None
        self.fail_next = 0
        self.retry_after = "1"
        self._auth = f"AccessKey {access_key}"
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/messages", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.fail_status is not None:
            return self._failure()
        if not secrets.compare_digest(request.headers.get("Authorization", "").encode(), self._auth.encode()):
            self.rejected += 1
            return web.Response(status=401, body=_AUTH_ERROR, content_type="application/json")
        try:
            doc = msgspec.json.decode(raw)
            recipients = self._check(doc)
        except (msgspec.DecodeError, _Refused) as exc:
            self.rejected += 1
            code, description, parameter = exc.args if isinstance(exc, _Refused) else (21, "Bad request", None)
            return web.json_response({"errors": [{"code": code, "description": description,
                                                  "parameter": parameter}]}, status=422)
        if self.balance is not None:
            self.balance -= 1
        if self.keep_bodies:
            self.bodies.append(doc)
        self.messages += 1
        self.recipients += len(recipients)
        self.last_id = secrets.token_hex(16)
        now = _now()
        if self.signing_key is not None and isinstance(doc.get("reportUrl"), str):
            for r in recipients:
                report = {"id": self.last_id, "reference": doc.get("reference") or "", "recipient": str(r),
                          "status": self.report_status, "statusReason": self.report_reason,
                          "statusErrorCode": self.report_error, "statusDatetime": now}
                task = asyncio.get_running_loop().create_task(self._report(doc["reportUrl"], report))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return web.json_response({
            "id": self.last_id, "href": f"{self.url}/messages/{self.last_id}", "direction": "mt", "type": "sms",
            "originator": doc["originator"], "body": doc["body"], "reference": doc.get("reference"),
            "validity": None, "gateway": 10, "typeDetails": {}, "datacoding": doc.get("datacoding", "plain"),
            "mclass": 1, "scheduledDatetime": None, "createdDatetime": now,
            "recipients": {"totalCount": len(recipients), "totalSentCount": len(recipients),
                           "totalDeliveredCount": 0, "totalDeliveryFailedCount": 0,
                           "items": [{"recipient": r, "status": "sent", "statusDatetime": now}
                                     for r in recipients]},
        }, status=201)

    async def _report(self, url: str, params: dict[str, str]) -> None:
        await asyncio.sleep(0.05)  # after the send's answer, as a carrier's report comes
        self.reports_sent += 1
        full = f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode(params)}"
        self.report_answers.append((await self.signed_request("GET", full))[0])

    async def signed_request(self, method: str, url: str, body: bytes = b"",
                             content_type: str | None = None) -> tuple[int, bytes]:
        """``method`` ``url`` with ``body``, signed with ``signing_key``: (status, body)."""
        assert self.signing_key is not None
        headers = {SIGNATURE_HEADER: messagebird_jwt(self.signing_key, url, body)}
        if content_type:
            headers["Content-Type"] = content_type
        try:  # sent as signed: yarl would otherwise normalise the quoting (%3A to ":") after the signing
            async with aiohttp.ClientSession() as s, s.request(method, yarl.URL(url, encoded=True), data=body or None,
                                                               headers=headers) as r:
                return r.status, await r.read()
        except aiohttp.ClientError:
            return 0, b""

    async def send_inbound(self, url: str, originator: str, recipient: str, text: str) -> tuple[int, dict]:
        """Post a text a person sent (``originator``, E.164 without the ``+``) to
        our number ``recipient``, as MessageBird forwards one: (status, JSON answer)."""
        body = urllib.parse.urlencode({"id": secrets.token_hex(16), "originator": originator,
                                       "recipient": recipient, "body": text, "createdDatetime": _now()}).encode()
        status, raw = await self.signed_request("POST", url, body, "application/x-www-form-urlencoded")
        return status, msgspec.json.decode(raw) if raw else {}

    def _check(self, doc) -> list[int]:
        if not isinstance(doc, dict):
            raise _Refused(21, "Bad request", None)
        originator = doc.get("originator")
        if originator is None or originator == "":
            raise _Refused(9, "originator is required", "originator")
        if not isinstance(originator, str) or not (_NUMERIC_ORIGINATOR.fullmatch(originator)
                                                   or _ALPHA_ORIGINATOR.fullmatch(originator)):
            raise _Refused(10, "originator is invalid", "originator")
        body = doc.get("body")
        if not isinstance(body, str) or not body:
            raise _Refused(9, "body is required", "body")
        if doc.get("datacoding", "plain") not in ("plain", "unicode", "auto"):
            raise _Refused(10, "datacoding is invalid", "datacoding")
        raw = doc.get("recipients")
        items = raw if isinstance(raw, list) else [raw] if raw is not None else []
        recipients = []
        for r in items:
            text = str(r) if isinstance(r, int) and not isinstance(r, bool) else r if isinstance(r, str) else ""
            if _MSISDN.fullmatch(text) and not text.startswith(INVALID_PREFIX):
                recipients.append(int(text))
        if not recipients:
            raise _Refused(9, "no (correct) recipients found", "recipients")
        if self.balance is not None and self.balance <= 0:
            raise _Refused(25, "Not enough balance", None)
        return recipients

    def _failure(self) -> web.Response:
        status = self._take_failure()
        headers = {"Retry-After": self.retry_after} if status == 429 else None
        code, description = (99, "Internal error") if status >= 500 else (None, "injected failure")
        return web.json_response({"errors": [{"code": code, "description": description, "parameter": None}]},
                                 status=status, headers=headers)


__all__ = ["INVALID_PREFIX", "MessageBirdSink"]
