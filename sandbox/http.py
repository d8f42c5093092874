"""The loopback webhook receiver (aiohttp) that verifies every signature, and the
base the HTTP sinks share."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import msgspec
from aiohttp import web

from providers.webhook.signing import ID_HEADER, SIGNATURE_HEADER, SignatureError, verify
from sandbox.faults import Faults, garbage_body, verdict

# listen(2) backlog (Linux's default somaxconn): aiohttp's 128 overflowed when a
# ChannelShard opened its connections at once, and each SYN dropped was sent again a
# second later, a second in the benchmarks' p99 (bench/RESULTS.md, "... listen backlogs")
LISTEN_BACKLOG = 4096


class _HttpSink:
    """An aiohttp sink: subclasses say what ``app()`` serves; this listens and stops."""

    host: str
    port: int
    _runner: web.AppRunner | None = None

    fail_status: int | None = None
    fail_next = 0
    failed = 0

    _stats_name: str  # "sink" in stats()
    _stats_counts: tuple[str, ...] = ()  # the counters stats() reports, in order

    @property
    def url(self) -> str:
        """The base URL, as a provider's ``base_url`` (a subclass may add a path)."""
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        raise NotImplementedError

    def stats(self) -> dict:
        """The sink's name and counts, as ``python -m sandbox`` prints them."""
        return {"sink": self._stats_name, **{name: getattr(self, name) for name in self._stats_counts}}

    def _take_failure(self) -> int:
        """The status to fail this request with; counts it, and clears
        ``fail_status`` when the last of ``fail_next`` is used."""
        status = self.fail_status
        assert status is not None
        if self.fail_next > 0:
            self.fail_next -= 1
            if self.fail_next == 0:
                self.fail_status = None
        self.failed += 1
        return status

    async def start(self) -> None:
        """Listen on ``host:port``; port 0 lets the OS pick, read it from ``port``."""
        if self._runner is not None:
            return
        # No access log: the benchmark sends tens of thousands of requests.
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=LISTEN_BACKLOG)
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


class WebhookSink(_HttpSink):
    """An HTTP server with ``POST /hook`` (and ``/hook/<anything>``) that
    verifies ``Tidings-Signature`` with ``secret``.

    Valid requests get 200 with an ``X-Message-Id`` header and count in
    ``received``; a repeated ``Tidings-Delivery-Id`` also counts in
    ``duplicates``. Bad or missing signatures get 401 and count in
    ``bad_signatures``. ``paths`` counts accepted requests per path; ``bodies``
    holds decoded JSON bodies when ``keep_bodies``.

    Failure injection: with ``fail_status`` set every request gets that status
    (429 adds ``Retry-After: <retry_after>``). With ``fail_next`` = N > 0 only the
    next N requests fail, after which ``fail_status`` is cleared. ``faults``
    (sandbox/faults.py: 5xx, hangs, garbage bodies, a delay) apply to requests
    with a valid signature; ``PUT /_sink/faults`` replaces them while it runs.

    Per notification id (the ``Tidings-Delivery-Id`` header's first part):
    ``attempts`` counts every signed request, ``accepted`` those answered 2xx;
    ``GET /_sink/ids`` answers both.
    """

    _stats_name = "webhook"
    _stats_counts = ("received", "duplicates", "bad_signatures", "failed")

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
        self.faults = Faults()
        self.rng = random.Random(self.faults.seed)
        self.accepted: Counter[str] = Counter()  # notification id -> requests answered 2xx
        self.attempts: Counter[str] = Counter()  # notification id -> signed requests
        self._seen: set[str] = set()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        app.router.add_post("/hook/{tail:.*}", self._handle)
        app.router.add_get("/_sink/ids", self._ids)
        app.router.add_put("/_sink/faults", self._set_faults)
        return app

    async def _ids(self, request: web.Request) -> web.Response:
        return web.json_response({"accepted": dict(self.accepted), "attempts": dict(self.attempts)})

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            faults = msgspec.json.decode(await request.read(), type=Faults)
        except msgspec.DecodeError as exc:  # a ValidationError names the field
            return web.json_response({"error": str(exc)}, status=400)
        self.faults, self.rng = faults, random.Random(faults.seed)
        return web.json_response(msgspec.to_builtins(faults))

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
        nid = delivery.rsplit(":", 1)[0]
        self.attempts[nid] += 1
        if self.faults.delay_s:
            await asyncio.sleep(self.faults.delay_s)
        # decided and counted with no await in between: a PUT of faults applies to every request after it
        what = verdict(self.faults, self.rng)
        if what != "accept":
            return await self._refuse(what == "hang")
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
        self.accepted[nid] += 1
        headers = {"X-Message-Id": f"hook-{self.received}"}
        if self.faults.garbage:
            return web.Response(body=garbage_body(self.rng), status=200, headers=headers,
                                content_type="application/json")
        return web.json_response({"ok": True}, headers=headers)

    async def _refuse(self, hang: bool) -> web.Response:
        """A 5xx (garbage body with ``faults.garbage``); held ``hang_s`` first when ``hang``."""
        if hang:
            await asyncio.sleep(self.faults.hang_s)
        if self.faults.garbage:
            return web.Response(body=garbage_body(self.rng), status=self.rng.choice((500, 502, 503)),
                                content_type="application/json")
        return web.json_response({"error": "injected failure"}, status=503)

    def _failure(self) -> web.Response:
        status = self._take_failure()
        headers = {"Retry-After": self.retry_after} if status == 429 else None
        return web.json_response({"error": "injected failure"}, status=status, headers=headers)
