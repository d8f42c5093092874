"""Loopback servers that receive what the engine sends: a real SMTP server
(aiosmtpd), a real webhook receiver (aiohttp) that checks signatures, and a
SendGrid v3 ``mail/send`` look-alike (aiohttp).

The demo, the tests and the benchmark point providers at these. Each counts what
it accepts and can be told to fail, to exercise error mapping and retries.

Run one in its own process (prints one JSON line of counts on SIGTERM/SIGINT)::

    python -m engine.sinks webhook --port 8099 --secret s3cret
    python -m engine.sinks smtp --port 2525
    python -m engine.sinks sendgrid --port 8098 --api-key SG.test
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import json
import math
import os
import re
import secrets
import signal
import subprocess
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import msgspec
from aiohttp import web
from aiosmtpd.controller import Controller

from engine.embedded import free_port, port_open
from providers.webhook.signing import ID_HEADER, SIGNATURE_HEADER, SignatureError, verify


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """One message as the SMTP sink saw it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str | None
    notification_id: str | None
    has_text: bool
    has_html: bool
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names


class SmtpSink:
    """An SMTP server on a background thread that accepts every message.

    ``count`` counts accepted messages; ``messages`` holds a ReceivedMail for
    each when ``keep_messages`` (parsing is skipped otherwise, to stay cheap
    under benchmark load); ``connections`` counts distinct client connections.
    Set ``fail_with`` to an SMTP code (e.g. 451, 550) to answer it instead of
    250, at ``fail_stage`` "data" (default) or "rcpt"; ``fail_message`` sets the
    text after the code.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, keep_messages: bool = True):
        self.host = host
        self.port = port
        self.keep_messages = keep_messages
        self.messages: list[ReceivedMail] = []
        self.count = 0
        self.failed = 0
        self.fail_with: int | None = None
        self.fail_stage = "data"
        self.fail_message: str | None = None
        self._peers: set[tuple] = set()
        self._controller: Controller | None = None

    @property
    def connections(self) -> int:
        return len(self._peers)

    def start(self) -> None:
        """Listen on ``host:port`` (a free port when ``port`` is 0); blocks
        until the server answers."""
        if self._controller is not None:
            return
        if self.port == 0:
            self.port = free_port(self.host)
        # server_hostname avoids socket.getfqdn() (a DNS lookup) per connection.
        self._controller = Controller(self, hostname=self.host, port=self.port, server_hostname="tidings-sink")
        self._controller.start()

    def stop(self) -> None:
        """Stop listening and drop open connections (idempotent)."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def stats(self) -> dict:
        return {"sink": "smtp", "count": self.count, "connections": self.connections, "failed": self.failed}

    def _failure(self) -> str:
        self.failed += 1
        code = self.fail_with
        text = self.fail_message or ("Try again later" if code is not None and code < 500 else "Mailbox unavailable")
        return f"{code} {text}"

    # aiosmtpd handler hooks; they run on the controller's thread.

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if self.fail_with is not None and self.fail_stage == "rcpt":
            return self._failure()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if self.fail_with is not None and self.fail_stage == "data":
            return self._failure()
        self._peers.add(session.peer)
        if self.keep_messages:
            self.messages.append(self._parse(envelope))
        self.count += 1
        return "250 OK"

    @staticmethod
    def _parse(envelope) -> ReceivedMail:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        types = {part.get_content_type() for part in msg.walk()}
        return ReceivedMail(
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            subject=msg["Subject"],
            notification_id=msg["Tidings-Notification-Id"],
            has_text="text/plain" in types,
            has_html="text/html" in types,
            content_type=msg.get_content_type(),
            headers={k.lower(): str(v) for k, v in msg.items()},
        )


class WebhookSink:
    """An HTTP server with ``POST /hook`` (and ``/hook/<anything>``) that
    verifies ``Tidings-Signature`` with ``secret``.

    Valid requests get 200 with an ``X-Message-Id`` header and count in
    ``received``; a repeated ``Tidings-Delivery-Id`` also counts in
    ``duplicates``. Bad or missing signatures get 401 and count in
    ``bad_signatures``. ``paths`` counts accepted requests per path; ``bodies``
    holds decoded JSON bodies when ``keep_bodies``.

    Failure injection: with ``fail_status`` set every request gets that status
    (429 adds ``Retry-After: <retry_after>``). With ``fail_next`` = N > 0 only the
    next N requests fail, after which ``fail_status`` is cleared.
    """

    def __init__(
        self,
        secret: bytes | str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keep_bodies: bool = False,
        tolerance_s: float = 300,
    ):
        self.secret = secret
        self.host = host
        self.port = port
        self.keep_bodies = keep_bodies
        self.tolerance_s = tolerance_s
        self.received = 0
        self.duplicates = 0
        self.bad_signatures = 0
        self.failed = 0
        self.bodies: list = []
        self.paths: Counter[str] = Counter()
        self.fail_status: int | None = None
        self.fail_next = 0
        self.retry_after = "1"
        self._seen: set[str] = set()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    async def start(self) -> None:
        """Listen on ``host:port``; port 0 lets the OS pick, read it from ``port``."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        app.router.add_post("/hook/{tail:.*}", self._handle)
        # No access log: the benchmark sends tens of thousands of requests.
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and close connections (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def stats(self) -> dict:
        return {
            "sink": "webhook",
            "received": self.received,
            "duplicates": self.duplicates,
            "bad_signatures": self.bad_signatures,
            "failed": self.failed,
        }

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail_status is not None:
            return self._failure()
        try:
            verify(
                self.secret,
                request.headers.get(SIGNATURE_HEADER, ""),
                body,
                now=time.time(),
                tolerance_s=self.tolerance_s,
            )
        except SignatureError as exc:
            self.bad_signatures += 1
            return web.json_response({"error": f"bad signature: {exc}"}, status=401)
        delivery = request.headers.get(ID_HEADER)
        if not delivery:
            return web.json_response({"error": f"missing {ID_HEADER} header"}, status=400)
        if self.keep_bodies:
            try:
                self.bodies.append(msgspec.json.decode(body))
            except msgspec.DecodeError:
                return web.json_response({"error": "body is not JSON"}, status=400)
        self.received += 1
        if delivery in self._seen:
            self.duplicates += 1
        else:
            self._seen.add(delivery)
        self.paths[request.path] += 1
        return web.json_response({"ok": True}, headers={"X-Message-Id": f"hook-{self.received}"})

    def _failure(self) -> web.Response:
        status = self.fail_status
        assert status is not None
        if self.fail_next > 0:
            self.fail_next -= 1
            if self.fail_next == 0:
                self.fail_status = None
        self.failed += 1
        headers = {"Retry-After": self.retry_after} if status == 429 else None
        return web.json_response({"error": "injected failure"}, status=status, headers=headers)


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


class SendGridSink:
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

    @property
    def url(self) -> str:
        """The base URL, as a provider's ``base_url``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen on ``host:port``; port 0 lets the OS pick, read it from ``port``."""
        if self._runner is not None:
            return
        # SendGrid takes up to 30 MB; aiohttp's default limit is 1 MiB.
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v3/mail/send", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and close connections (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def stats(self) -> dict:
        return {"sink": "sendgrid", "requests": self.requests, "recipients": self.recipients,
                "duplicates": self.duplicates, "rejected": self.rejected, "failed": self.failed}

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
        status = self.fail_status
        assert status is not None
        if self.fail_next > 0:
            self.fail_next -= 1
            if self.fail_next == 0:
                self.fail_status = None
        self.failed += 1
        headers = None
        if status == 429:
            headers = {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0",
                       "X-RateLimit-Reset": str(math.ceil(time.time()) + 1)}
        body = {"errors": [{"message": "injected failure", "field": None, "help": None}]}
        return web.json_response(body, status=status, headers=headers)


# -- standalone process --------------------------------------------------------


async def _serve(args: argparse.Namespace) -> dict:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.kind == "webhook":
        sink: WebhookSink | SendGridSink | SmtpSink = WebhookSink(args.secret, args.host, args.port)
        await sink.start()
        where = sink.url
    elif args.kind == "sendgrid":
        sink = SendGridSink(args.api_key, args.host, args.port)
        await sink.start()
        where = sink.url
    else:
        sink = SmtpSink(args.host, args.port, keep_messages=False)
        sink.start()
        where = f"smtp://{sink.host}:{sink.port}"
    # stderr, so stdout carries exactly one JSON line.
    print(f"{args.kind} sink listening on {where}", file=sys.stderr, flush=True)
    try:
        if args.stats_file:
            await _write_stats_until(stop, sink, args.stats_file)
        else:
            await stop.wait()
    finally:
        if isinstance(sink, (WebhookSink, SendGridSink)):
            await sink.stop()
        else:
            sink.stop()
    return sink.stats()


async def _write_stats_until(stop: asyncio.Event, sink, path: str, every_s: float = 0.25) -> None:
    """Keep ``path`` holding the sink's counts (replaced atomically) until stopped."""
    tmp = f"{path}.tmp"
    while True:
        with open(tmp, "w") as f:
            json.dump(sink.stats(), f)
        os.replace(tmp, path)
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return
        except TimeoutError:
            pass


class SinkProcess:
    """A sink in its own process (``python -m engine.sinks``), so it does not share
    a GIL or a core's time slice with the engine it is measuring. For kind
    "sendgrid", ``secret`` is the API key it accepts."""

    def __init__(self, kind: str, *, secret: str | None = None, port: int = 0, stats_dir: str | None = None):
        self.kind, self.secret = kind, secret
        self.port = port or free_port()
        self.stats_file = os.path.join(stats_dir or tempfile.gettempdir(), f"tidings-{kind}-sink-{self.port}.json")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> "SinkProcess":
        cmd = [sys.executable, "-m", "engine.sinks", self.kind, "--port", str(self.port),
               "--stats-file", self.stats_file]
        if self.kind == "webhook":
            cmd += ["--secret", self.secret or ""]
        elif self.kind == "sendgrid":
            cmd += ["--api-key", self.secret or ""]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + timeout_s
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"{self.kind} sink did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stats(self) -> dict:
        """The counts as of the last quarter second."""
        try:
            with open(self.stats_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def stop(self) -> dict:
        """Stop the process; returns its final counts."""
        if self.proc is None:
            return {}
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out = ""
        self.proc = None
        lines = [line for line in out.splitlines() if line.startswith("{")]
        final = json.loads(lines[-1]) if lines else self.stats()
        try:
            os.unlink(self.stats_file)
        except OSError:
            pass
        return final


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m engine.sinks``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m engine.sinks", description="Run a loopback sink.")
    sub = parser.add_subparsers(dest="kind", required=True)
    hook = sub.add_parser("webhook", help="signed-webhook receiver")
    hook.add_argument("--host", default="127.0.0.1")
    hook.add_argument("--port", type=int, default=0)
    hook.add_argument("--secret", required=True)
    smtp = sub.add_parser("smtp", help="SMTP server")
    smtp.add_argument("--host", default="127.0.0.1")
    smtp.add_argument("--port", type=int, default=0)
    sendgrid = sub.add_parser("sendgrid", help="SendGrid v3 mail/send look-alike")
    sendgrid.add_argument("--host", default="127.0.0.1")
    sendgrid.add_argument("--port", type=int, default=0)
    sendgrid.add_argument("--api-key", required=True)
    for p in (hook, smtp, sendgrid):
        p.add_argument("--stats-file", help="keep this file holding the counts, as JSON")
    args = parser.parse_args(argv)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    stats = asyncio.run(_serve(args))
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
