"""A loopback server speaking Mailgun's messages API (``POST /v3/{domain}/messages``)."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from email.utils import getaddresses

from aiohttp import web

from sandbox.http import _HttpSink

_MG_ADDRESS = re.compile(r"[^\s<>@,]+@[^\s<>@,]+")


class _BadMessage(Exception):
    """A messages request Mailgun would refuse with 400: its ``message``."""


def _addresses(value: str) -> list[str] | None:
    """The addresses of a ``to``/``from`` value (an RFC 5322 address list: each
    bare or ``Name <addr>``, names quoted as needed); None when one of them is
    not an address."""
    found = [addr for _, addr in getaddresses([value])]
    if not found or not all(_MG_ADDRESS.fullmatch(a) for a in found):
        return None
    return found


def _check_message(form) -> int:
    """How many recipients (``to`` entries) a messages form has; raises
    _BadMessage with Mailgun's message for what it refuses."""
    sender = form.get("from")
    if not sender:
        raise _BadMessage("'from' parameter is missing")
    if len(_addresses(sender) or ()) != 1:
        raise _BadMessage("'from' parameter is not a valid address. please check documentation")
    tos = form.getall("to", [])
    if not tos:
        raise _BadMessage("'to' parameter is missing")
    recipients = 0
    for to in tos:
        found = _addresses(to)
        if found is None:
            raise _BadMessage("'to' parameter is not a valid address. please check documentation")
        recipients += len(found)
    if recipients > 1000:
        raise _BadMessage("Too many recipients (maximum is 1000)")
    if not (form.get("text") or form.get("html") or form.get("template")):
        raise _BadMessage("Need at least one of 'text', 'html' or 'template' parameters specified")
    return recipients


class MailgunSink(_HttpSink):
    """An HTTP server with Mailgun's ``POST /v3/{domain}/messages``, answering as
    Mailgun documents it: 401 ``Forbidden`` (text/plain) without HTTP Basic
    ``api:<api_key>``; 404 ``{"message": "Domain not found: …"}`` for a domain
    other than ``domain``; 400 ``{"message": …}`` for a form it would refuse (not
    a form; no or an invalid ``from``/``to``; no text, html or template; over
    1,000 recipients); else 200 ``{"id": "<…@domain>", "message": "Queued.
    Thank you."}``. Both multipart/form-data and urlencoded forms are parsed.

    Counts: ``requests`` (accepted), ``recipients`` (``to`` addresses accepted),
    ``notification_ids`` (``v:notification_id`` seen) with repeats in
    ``duplicates``, ``rejected`` (401/404/400), ``failed`` (injected). ``bodies``
    holds each accepted form as a dict (a field given more than once: a list)
    when ``keep_bodies``; ``last_message_id`` the last id given (with its angle
    brackets, as Mailgun answers it).

    Failure injection as the other sinks: ``fail_status`` (every request, before
    any check), ``fail_next`` = N to fail only the next N; 429 adds
    ``Retry-After: <retry_after>``.
    """

    _stats_name = "mailgun"
    _stats_counts = ("requests", "recipients", "duplicates", "rejected", "failed")

    def __init__(self, api_key: str, domain: str = "mg.tidings.test", host: str = "127.0.0.1", port: int = 0, *,
                 keep_bodies: bool = False):
        self.api_key = api_key
        self.domain = domain
        self.host = host
        self.port = port
        self.keep_bodies = keep_bodies
        self.requests = self.recipients = self.duplicates = self.rejected = self.failed = 0
        self.notification_ids: set[str] = set()
        self.bodies: list[dict] = []
        self.last_message_id: str | None = None
        self.fail_status: int | None = None
        self.fail_next = 0
        self.retry_after = "1"
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        # Mailgun takes messages up to 25 MB; aiohttp's default limit is 1 MiB.
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v3/{domain}/messages", self._handle)
        return app

    def _authorized(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == "api" and secrets.compare_digest(password.encode(), self.api_key.encode())

    async def _handle(self, request: web.Request) -> web.Response:
        if self.fail_status is not None:
            await request.read()
            return self._failure()
        if not self._authorized(request.headers.get("Authorization", "")):
            await request.read()
            self.rejected += 1
            return web.Response(status=401, text="Forbidden")
        domain = request.match_info["domain"]
        if domain != self.domain:
            await request.read()
            self.rejected += 1
            return web.json_response({"message": f"Domain not found: {domain}"}, status=404)
        if request.content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            await request.read()
            self.rejected += 1
            return web.json_response({"message": "Bad Request"}, status=400)
        try:
            form = await request.post()
            recipients = _check_message(form)
        except _BadMessage as exc:
            self.rejected += 1
            return web.json_response({"message": exc.args[0]}, status=400)
        except ValueError:  # a malformed multipart body
            self.rejected += 1
            return web.json_response({"message": "Bad Request"}, status=400)
        if self.keep_bodies:
            body: dict = {}
            for key in dict.fromkeys(form):
                values = [str(v) for v in form.getall(key)]
                body[key] = values[0] if len(values) == 1 else values
            self.bodies.append(body)
        self.requests += 1
        self.recipients += recipients
        nid = form.get("v:notification_id")
        if isinstance(nid, str):
            if nid in self.notification_ids:
                self.duplicates += 1
            self.notification_ids.add(nid)
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        self.last_message_id = f"<{stamp}.{secrets.token_hex(8)}@{self.domain}>"
        return web.json_response({"id": self.last_message_id, "message": "Queued. Thank you."})

    def _failure(self) -> web.Response:
        status = self._take_failure()
        headers = {"Retry-After": self.retry_after} if status == 429 else None
        return web.json_response({"message": "injected failure"}, status=status, headers=headers)


__all__ = ["MailgunSink"]
