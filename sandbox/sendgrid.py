"""A loopback server speaking SendGrid v3 ``mail/send`` as documented."""

from __future__ import annotations

import math
import re
import secrets
import time

import msgspec
from aiohttp import web

from sandbox.http import _HttpSink


class _BadMail(Exception):
    """A ``mail/send`` body SendGrid would refuse with 400: (message, field)."""


_SG_AUTH_ERROR = msgspec.json.encode({"errors": [{
    "message": "The provided authorization grant is invalid, expired, or revoked", "field": None, "help": None}]})
_SG_ADDRESS = re.compile(r"[^\s<>@]+@[^\s<>@]+")
_SG_CONTENT_ORDER = ("If present, text/plain and text/html may only be provided in this order: "
                     "text/plain, text/html.")


def _check_mail(doc) -> tuple[int, list]:
    """``(recipients in "to", notification ids in custom_args)`` of a mail/send
    body; raises _BadMail with SendGrid's message and field for what it refuses."""
    if not isinstance(doc, dict):
        raise _BadMail("Bad Request", None)
    ps = doc.get("personalizations")
    if not isinstance(ps, list) or not ps:
        raise _BadMail("The personalizations field is required and must have at least one personalization.",
                       "personalizations")
    if len(ps) > 1000:
        raise _BadMail("The personalization block is limited to 1000 personalizations per API request. "
                       f"You have provided {len(ps)} personalizations.", "personalizations")
    sender = doc.get("from")
    if not isinstance(sender, dict) or not isinstance(sender.get("email"), str) \
            or not _SG_ADDRESS.fullmatch(sender["email"]):
        raise _BadMail("The from object must be provided for every email send. It is an object that requires "
                       "the email parameter, but may also contain a name parameter.", "from")
    subject = doc.get("subject")
    if not (isinstance(subject, str) and subject) and not all(isinstance(p, dict) and p.get("subject") for p in ps):
        raise _BadMail("The subject is required. You can get around this requirement if you use a template with "
                       "a subject defined or if every personalization has a subject defined.", "subject")
    content = doc.get("content")
    if not isinstance(content, list) or not content:
        raise _BadMail("Unless a valid template_id is provided, the content parameter is required. There must be "
                       "at least one defined content block.", "content")
    types = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("value"), str) or not part["value"]:
            raise _BadMail("The content value must be a string at least one character in length.", f"content.{i}.value")
        types.append(part.get("type"))
    if "text/html" in types and types.index("text/html") < (types.index("text/plain") if "text/plain" in types else 0):
        raise _BadMail(_SG_CONTENT_ORDER, "content")
    recipients, total, ids = 0, 0, []
    for i, p in enumerate(ps):
        to = p.get("to") if isinstance(p, dict) else None
        if not isinstance(to, list) or not to:
            raise _BadMail("The to array is required for all personalization objects, and must have at least one "
                           "email object with a valid email address.", f"personalizations.{i}.to")
        for j, rcpt in enumerate(to):
            addr = rcpt.get("email") if isinstance(rcpt, dict) else None
            if not isinstance(addr, str) or not _SG_ADDRESS.fullmatch(addr):
                raise _BadMail("Does not contain a valid address.", f"personalizations.{i}.to.{j}.email")
        recipients += len(to)
        total += len(to) + len(p.get("cc") or ()) + len(p.get("bcc") or ())
        args = p.get("custom_args")
        nid = args.get("notification_id") if isinstance(args, dict) else None
        if isinstance(nid, str):
            ids.append(nid)
    if total > 1000:
        raise _BadMail("There is a limit of 1000 total recipients (to + cc + bcc) per request.", "personalizations")
    return recipients, ids


class SendGridSink(_HttpSink):
    """An HTTP server with SendGrid's ``POST /v3/mail/send``, answering as SendGrid
    documents it: 401 for a missing or wrong ``Authorization: Bearer <api_key>``,
    400 ``{"errors": [{"message", "field"}]}`` for a body it would refuse (not
    JSON; no personalizations, from, subject or content; over 1,000
    personalizations or recipients; a personalization without a valid ``to``;
    text/html before text/plain), else 202 with an empty body and an
    ``X-Message-Id`` header.

    Counts: ``requests`` (accepted), ``recipients`` (``to`` entries accepted),
    ``notification_ids`` (``custom_args.notification_id`` seen) with repeats in
    ``duplicates``, ``rejected`` (401/400), ``failed`` (injected). ``bodies``
    holds decoded bodies when ``keep_bodies``; ``last_message_id`` the last id given.

    Failure injection as WebhookSink: ``fail_status`` (every request, before any
    check), ``fail_next`` = N to fail only the next N; 429 adds
    ``X-RateLimit-Reset`` (epoch seconds, 1-2 s from now).
    """

    _stats_name = "sendgrid"
    _stats_counts = ("requests", "recipients", "duplicates", "rejected", "failed")

    def __init__(self, api_key: str, host: str = "127.0.0.1", port: int = 0, *, keep_bodies: bool = False):
        self.api_key = api_key
        self.host = host
        self.port = port
        self.keep_bodies = keep_bodies
        self.requests = self.recipients = self.duplicates = self.rejected = self.failed = 0
        self.notification_ids: set[str] = set()
        self.bodies: list = []
        self.last_message_id: str | None = None
        self.fail_status: int | None = None
        self.fail_next = 0
        self._auth = f"Bearer {api_key}"
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        # SendGrid takes up to 30 MB; aiohttp's default limit is 1 MiB.
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v3/mail/send", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail_status is not None:
            return self._failure()
        if request.headers.get("Authorization") != self._auth:
            self.rejected += 1
            return web.Response(status=401, body=_SG_AUTH_ERROR, content_type="application/json")
        try:
            doc = msgspec.json.decode(body)
            recipients, ids = _check_mail(doc)
        except (msgspec.DecodeError, _BadMail) as exc:
            self.rejected += 1
            message, fld = exc.args if isinstance(exc, _BadMail) else ("Bad Request", None)
            return web.json_response({"errors": [{"message": message, "field": fld, "help": None}]}, status=400)
        if self.keep_bodies:
            self.bodies.append(doc)
        self.requests += 1
        self.recipients += recipients
        before = len(self.notification_ids)
        self.notification_ids.update(ids)
        self.duplicates += len(ids) - (len(self.notification_ids) - before)
        self.last_message_id = secrets.token_urlsafe(16)
        return web.Response(status=202, headers={"X-Message-Id": self.last_message_id})

    def _failure(self) -> web.Response:
        status = self._take_failure()
        headers = None
        if status == 429:
            headers = {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0",
                       "X-RateLimit-Reset": str(math.ceil(time.time()) + 1)}
        body = {"errors": [{"message": "injected failure", "field": None, "help": None}]}
        return web.json_response(body, status=status, headers=headers)
