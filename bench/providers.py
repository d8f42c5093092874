"""Each provider client against its loopback server, and that server's own ceiling.

    python -m bench.providers [--n 3000] [--concurrency 64] [--rounds 3] [--only sendgrid,fcm] [--json PATH]

For every provider type, the sink that speaks its API (``sandbox.*``) runs in
a child process (multiprocessing, spawn), so client and server do not share a GIL;
both processes run uvloop, as the engine and ``python -m sandbox`` do. Per
case, after ``--warmup`` sends by each client, ``--rounds`` alternating pairs of
timed phases (provider, then bare: a busy moment on the machine hits both alike);
the table shows the median of the rounds, the JSON every round.

* ``provider/s``: N ``provider.send(task)`` calls, a distinct DeliveryTask each
  (built before the clock starts), ``--concurrency`` in flight (a fixed pool of
  workers). The provider's pool is ``max_connections = --concurrency`` (APNs: a
  cap on HTTP/2 connections; it opens one).
* ``bare/s``: the same sink driven by a bare client that replays one request the
  provider made -- method, URL, headers and body, captured once after the warm-up
  (an aiohttp TraceConfig on the provider's session; for APNs, the sink hands over
  the next request it gets) -- N times, same concurrency: aiohttp for HTTP/1.1, a
  minimal h2 client on one TLS connection for APNs. This is the server's ceiling
  for exactly that request.
* ``ratio`` = provider/s / bare/s (of the medians; ``rounds' ratios``: the lowest
  and highest ratio within one round, to show the noise): how much of the
  server's ceiling the provider reaches. It falls below 1 only where the client
  process is the slower side: when the sink needs more CPU per request than the
  client, the client's cost is hidden (it runs on the other core), so read it
  with the next two columns.
* ``client CPU µs/send`` (provider/bare): this process's CPU time (all threads)
  per timed send -- building, signing or encrypting the request, the HTTP client,
  the Receipt -- against the bare client's for the same request. The difference
  is the provider client's own cost.
* ``sink CPU µs/req`` (provider phase/bare phase): the sink process's CPU per request.
* ``errors``: provider sends that raised / bare answers that were not 2xx;
  ``sink refused``: what the sink counted as refused in each timed phase (Vonage
  answers refusals with HTTP 200, so only the sink sees those).

Every case is bounded by ``--timeout``, the whole run by ``--deadline``; the child
is always stopped (terminated, then killed, if it does not stop when asked).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing as mp
import os
import platform
import ssl
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from importlib.metadata import version
from typing import NamedTuple

import aiohttp
import uvloop
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, ResponseReceived, StreamEnded, StreamReset, WindowUpdated
from rich.console import Console
from rich.table import Table
from yarl import URL

from bench.report import write_json
from policy.types import Content, DeliveryTask
from providers import registry
from providers.push.apns import ApnsProvider
from sandbox.apns import ApnsSink, make_signing_key
from sandbox.fcm import FcmSink, make_service_account
from sandbox.http import WebhookSink
from sandbox.mailgun import MailgunSink
from sandbox.messagebird import MessageBirdSink
from sandbox.sendgrid import SendGridSink
from sandbox.ses import SesSink
from sandbox.sns import SnsSink
from sandbox.twilio import TwilioSink
from sandbox.vonage import VonageSink
from sandbox.webpush import WebPushSink

SECRET = "bench-s3cret"
TWILIO_ACCOUNT = "AC" + "a1" * 16
PHONE, SENDER = "+14155552671", "+15005550006"
CONTENT = Content(subject="Your order shipped", text="It arrives Tuesday", html="<p>It arrives Tuesday</p>",
                  data={"order": "A-17"})
REFUSED = ("rejected", "unauthorized", "gone", "bad_vapid", "bad_signatures", "failed")
SKIP_HEADERS = {"host", "content-length"}  # the bare client sets both, to the same values


class Case(NamedTuple):
    """One provider type and its loopback server. ``make_sink`` runs in the child
    process; ``settings(info)`` and ``address(info)`` in the parent, with what
    the child sent back (``info``: port, url, ca_file, subscription)."""

    make_sink: Callable
    type: str
    channel: str
    settings: Callable[[dict], dict]
    address: Callable[[dict], str]

    def provider(self, name: str, info: dict, pool: dict):
        """The provider as the engine builds it (the registry), plus ``pool``."""
        return registry.create(self.type, name, {**self.settings(info), **pool})

    def task_maker(self, info: dict) -> Callable[[int], DeliveryTask]:
        address = self.address(info)
        return lambda i: DeliveryTask(f"bench-{i}", "u1", self.channel, "orders", address, CONTENT)


def sendgrid() -> Case:
    return Case(partial(SendGridSink, SECRET), "sendgrid", "email", lambda info: {
        "api_key": SECRET, "sender": "Tidings <noreply@tidings.test>", "base_url": info["url"]},
        lambda info: "user@example.com")


def mailgun() -> Case:
    return Case(partial(MailgunSink, SECRET, "mg.tidings.test"), "mailgun", "email", lambda info: {
        "api_key": SECRET, "domain": "mg.tidings.test", "sender": "Tidings <noreply@tidings.test>",
        "base_url": info["url"]}, lambda info: "user@example.com")


def twilio_sms() -> Case:
    return Case(partial(TwilioSink, TWILIO_ACCOUNT, SECRET), "twilio_sms", "sms", lambda info: {
        "account_sid": TWILIO_ACCOUNT, "auth_token": SECRET, "from": SENDER, "base_url": info["url"]},
        lambda info: PHONE)


def messagebird() -> Case:
    return Case(partial(MessageBirdSink, SECRET), "messagebird", "sms", lambda info: {
        "access_key": SECRET, "originator": "Tidings", "base_url": info["url"]}, lambda info: PHONE)


def vonage() -> Case:
    return Case(partial(VonageSink, "benchkey", SECRET), "vonage", "sms", lambda info: {
        "api_key": "benchkey", "api_secret": SECRET, "from": "Tidings", "base_url": info["url"]},
        lambda info: PHONE)


def ses() -> Case:
    return Case(partial(SesSink, "AKIDTIDINGSBENCH0002", SECRET, "us-east-1"), "ses", "email", lambda info: {
        "access_key_id": "AKIDTIDINGSBENCH0002", "secret_access_key": SECRET, "region": "us-east-1",
        "sender": "Tidings <noreply@tidings.test>", "base_url": info["url"]}, lambda info: "user@example.com")


def sns() -> Case:
    return Case(partial(SnsSink, "AKIDTIDINGSBENCH0001", SECRET, "us-east-1"), "sns", "sms", lambda info: {
        "access_key_id": "AKIDTIDINGSBENCH0001", "secret_access_key": SECRET, "region": "us-east-1",
        "base_url": info["url"]}, lambda info: PHONE)


def twilio_voice() -> Case:
    return Case(partial(TwilioSink, TWILIO_ACCOUNT, SECRET), "twilio_voice", "voice", lambda info: {
        "account_sid": TWILIO_ACCOUNT, "auth_token": SECRET, "from": SENDER, "base_url": info["url"]},
        lambda info: PHONE)


def fcm() -> Case:
    account = make_service_account("tidings-bench")  # the RSA key is made here, the sink gets a copy
    return Case(partial(FcmSink, account), "fcm", "push", lambda info: {
        "service_account": {**account, "token_uri": f"{info['url']}/token"}, "base_url": info["url"]},
        lambda info: "fcm-registration-token-1")


def apns() -> Case:
    key = make_signing_key()
    ids = ("ABC123DEFG", "TEAM123456", "com.example.tidings")
    return Case(partial(ApnsSink, key, *ids), "apns", "push", lambda info: {
        "key": key, "key_id": ids[0], "team_id": ids[1], "topic": ids[2], "host": "127.0.0.1",
        "port": info["port"], "ca_file": info["ca_file"]}, lambda info: f"{1:064x}")


def webpush() -> Case:
    vapid = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return Case(partial(WebPushSink, keep_payloads=False), "webpush", "web", lambda info: {
        "vapid_private_key": vapid, "vapid_subject": "mailto:ops@tidings.test", "allow_http": True,
        "egress_allow": ["127.0.0.0/8", "::1/128"]},
        lambda info: json.dumps(info["subscription"]))


def webhook() -> Case:
    return Case(partial(WebhookSink, SECRET), "webhook", "webhook", lambda info: {
        "secret": SECRET, "url": info["url"]}, lambda info: "u1")
CASES: dict[str, Callable] = {f.__name__: f for f in (sendgrid, mailgun, ses, twilio_sms, messagebird, vonage, sns,
                                                     twilio_voice, fcm, apns, webpush, webhook)}


# -- the child: builds the sink, says where it is, answers commands until "stop" ----

def child(make_sink: Callable, conn) -> None:
    uvloop.run(_serve(make_sink, conn))


async def _serve(make_sink: Callable, conn) -> None:
    sink = make_sink()
    await sink.start()
    info = {"port": sink.port, "url": getattr(sink, "url", None), "ca_file": getattr(sink, "ca_file", None)}
    if isinstance(sink, WebPushSink):
        info["subscription"] = sink.subscribe()
    conn.send(info)
    loop, ready, captured = asyncio.get_running_loop(), asyncio.Event(), {}
    loop.add_reader(conn.fileno(), ready.set)

    def capture_once(headers, body):  # ApnsSink.handle, for the next request only
        del sink.handle
        captured.update(headers=[(str(k), str(v)) for k, v in headers], body=body)  # h2's HeaderTuple won't pickle
        return sink.handle(headers, body)

    try:
        while True:
            await ready.wait()
            ready.clear()
            while conn.poll():
                try:
                    cmd = conn.recv()
                except EOFError:  # the parent is gone
                    return
                if cmd == "stop":
                    return
                if cmd == "arm":
                    sink.handle = capture_once
                conn.send(dict(captured) if cmd == "captured" else {**sink.stats(), "cpu_s": time.process_time()})
    finally:
        loop.remove_reader(conn.fileno())
        await sink.stop()
        try:
            conn.send(sink.stats())
        except OSError:
            pass


async def ask(conn, cmd: str | None, timeout: float = 30):
    """Send ``cmd`` (None: send nothing) to the child and wait for its answer."""
    if cmd is not None:
        conn.send(cmd)

    def recv():
        try:
            if not conn.poll(timeout):
                raise TimeoutError(f"sink process did not answer {cmd!r} in {timeout:.0f} s")
            return conn.recv()
        except EOFError:
            raise RuntimeError("sink process exited (its traceback, if any, is on stderr)") from None
    return await asyncio.get_running_loop().run_in_executor(None, recv)


# -- driving and replaying -------------------------------------------------------

async def drive(n: int, concurrency: int, send: Callable[[int], Awaitable[bool]]) -> tuple[float, int, str | None]:
    """``send(0..n-1)`` with ``concurrency`` workers: (sends per second, errors, first error)."""
    items, errors, first = iter(range(n)), 0, None

    async def worker() -> None:
        nonlocal errors, first
        for i in items:
            try:
                ok = await send(i)
            except Exception as exc:  # noqa: BLE001 -- a DeliveryError, a broken connection: counted
                ok, first = False, first or f"{type(exc).__name__}: {exc}"[:200]
            errors += not ok
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started), errors, first


async def capture_http(provider, task: DeliveryTask) -> dict:
    """One ``provider.send(task)``, as aiohttp wrote it: method, url, headers, body."""
    got: dict = {"body": bytearray()}

    async def headers_sent(session, ctx, params):
        got.update(method=params.method, url=str(params.url), headers=list(params.headers.items()))

    async def chunk_sent(session, ctx, params):
        got["body"] += params.chunk
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(headers_sent)
    trace.on_request_chunk_sent.append(chunk_sent)
    trace.freeze()
    provider._session.trace_configs.append(trace)
    try:
        await provider.send(task)
    finally:
        provider._session.trace_configs.remove(trace)
    got.update(body=bytes(got["body"]), path=URL(got["url"]).path_qs)
    length = {k.lower(): v for k, v in got["headers"]}.get("content-length")
    assert length is None or int(length) == len(got["body"]), "captured body is incomplete"
    return got


async def capture_h2(conn, provider, task: DeliveryTask) -> dict:
    """One ``provider.send(task)`` as the APNs sink received it: headers (with the
    pseudo-headers) and body."""
    await ask(conn, "arm")
    await provider.send(task)
    req = await ask(conn, "captured")
    return {**req, "path": dict(req["headers"])[":path"]}


@asynccontextmanager
async def bare_http(req: dict, info: dict, concurrency: int):
    """A ``send(i)`` that replays ``req`` with a bare aiohttp session (no per-request
    timer, as the providers' sessions; ``concurrency`` pooled connections)."""
    headers = [(k, v) for k, v in req["headers"] if k.lower() not in SKIP_HEADERS]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)) as session:
        async def send(_: int) -> bool:
            async with session.request(req["method"], req["url"], data=req["body"], headers=headers,
                                       allow_redirects=False) as resp:
                await resp.read()
                return 200 <= resp.status < 300
        yield send


class H2Replay(asyncio.Protocol):
    """A minimal HTTP/2 client that sends one request (headers, body) again and again."""

    def __init__(self, headers: list, body: bytes):
        self.headers, self.body = headers, body
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.waiting: dict[int, asyncio.Future] = {}
        self.status: dict[int, int] = {}
        self.window = asyncio.Event()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def connection_lost(self, exc) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, ResponseReceived):
                self.status[ev.stream_id] = int(dict(ev.headers)[":status"])
            elif isinstance(ev, DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (StreamEnded, StreamReset)) and ev.stream_id in self.waiting:
                self.waiting.pop(ev.stream_id).set_result(self.status.pop(ev.stream_id, 0))
            elif isinstance(ev, WindowUpdated):
                self.window.set()
            elif isinstance(ev, ConnectionTerminated):
                self.transport.close()
        self.transport.write(self.conn.data_to_send())

    async def send(self, _: int) -> bool:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self.headers)
        while self.conn.local_flow_control_window(sid) < len(self.body):
            self.transport.write(self.conn.data_to_send())
            self.window.clear()
            await self.window.wait()
        self.conn.send_data(sid, self.body, end_stream=True)
        self.waiting[sid] = fut = asyncio.get_running_loop().create_future()
        self.transport.write(self.conn.data_to_send())
        return 200 <= await fut < 300


@asynccontextmanager
async def bare_h2(req: dict, info: dict, concurrency: int):
    """A ``send(i)`` that replays ``req`` on one HTTP/2 connection (as the provider uses)."""
    ctx = ssl.create_default_context(cafile=info["ca_file"])
    ctx.set_alpn_protocols(["h2"])
    transport, client = await asyncio.get_running_loop().create_connection(
        lambda: H2Replay(req["headers"], req["body"]), "127.0.0.1", info["port"], ssl=ctx)
    try:
        yield client.send
    finally:
        transport.close()


# -- one case --------------------------------------------------------------------

def refused(stats: dict) -> int:
    return sum(v for k, v in stats.items() if k in REFUSED)


@asynccontextmanager
async def sink_child(make_sink: Callable, name: str):
    """The sink ``make_sink`` builds, in a child process (spawn); yields the pipe
    to it. The child is always stopped: asked, then terminated, then killed."""
    ctx = mp.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=child, args=(make_sink, child_conn), name=f"bench-sink-{name}", daemon=True)
    proc.start()
    child_conn.close()
    try:
        yield conn
    finally:
        if proc.is_alive():
            with suppress(OSError):
                conn.send("stop")  # a no-op if it was sent already
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        conn.close()


async def run_cases(names: list[str], known, one: Callable, timeout_s: float, deadline_s: float,
                    line: Callable[[dict], str]) -> dict:
    """``one(name)`` for each of ``names`` (all of ``known`` when empty), each
    within ``timeout_s`` and all within ``deadline_s``; a case that fails or runs
    out of time is dropped with its reason. Prints ``line(result)`` per case."""
    names = names or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(known)}")
    results, dropped, deadline = {}, {}, time.monotonic() + deadline_s
    for name in names:
        budget = min(timeout_s, deadline - time.monotonic())
        if budget <= 0:
            dropped[name] = f"run deadline of {deadline_s:.0f} s reached"
            continue
        try:
            results[name] = await asyncio.wait_for(one(name), budget)
        except TimeoutError as exc:  # asyncio.wait_for's has no message; ask()'s has
            dropped[name] = str(exc) or f"did not finish in {budget:.0f} s"
        except Exception as exc:  # noqa: BLE001 -- any failure drops the case, with its reason
            dropped[name] = f"{type(exc).__name__}: {exc}"[:300]
        print(f"{name}: " + (line(results[name]) if name in results else dropped[name]), file=sys.stderr)
    return {"results": results, "dropped": dropped}


async def run_case(name: str, args) -> dict:
    case = CASES[name]()
    async with sink_child(case.make_sink, name) as conn:
        return await _measure(name, case, conn, args)


async def _measure(name: str, case: Case, conn, args) -> dict:
    provider = None
    try:
        info = await ask(conn, None)
        provider = case.provider(name, info, {"max_connections": args.concurrency, "timeout_s": 5})
        make_task = case.task_maker(info)
        await provider.start()
        n, rounds = args.n, args.rounds
        tasks = [make_task(i) for i in range(rounds * n + args.warmup + 1)]  # built before any clock starts

        async def send(offset: int, i: int) -> bool:
            await provider.send(tasks[offset + i])  # a Receipt, or it raises
            return True

        async def timed(send_one) -> dict:
            """N sends; the client's (this process's) and the sink's CPU per send."""
            before, cpu = await ask(conn, "stats"), time.process_time()
            rate, errors, first = await drive(n, args.concurrency, send_one)
            cpu, after = time.process_time() - cpu, await ask(conn, "stats")
            return {"per_s": round(rate), "errors": errors, "first_error": first,
                    "client_cpu_us": round(cpu / n * 1e6),
                    "sink_cpu_us": round((after["cpu_s"] - before["cpu_s"]) / n * 1e6),
                    "sink_refused": refused(after) - refused(before)}
        await drive(args.warmup, args.concurrency, partial(send, rounds * n))
        one, h2 = tasks[-1], isinstance(provider, ApnsProvider)
        req = await (capture_h2(conn, provider, one) if h2 else capture_http(provider, one))
        out: dict = {"rounds": []}
        async with (bare_h2 if h2 else bare_http)(req, info, args.concurrency) as bare:
            await drive(args.warmup, args.concurrency, bare)
            for r in range(rounds):  # alternating, so a busy moment on the machine hits both sides alike
                out["rounds"].append({"provider": await timed(partial(send, r * n)), "bare": await timed(bare)})
        await provider.close()
        provider = None
        for side in ("provider", "bare"):
            runs = [r[side] for r in out["rounds"]]
            out[side] = {k: statistics.median(x[k] for x in runs) for k in ("per_s", "client_cpu_us", "sink_cpu_us")}
            out[side].update({k: sum(x[k] for x in runs) for k in ("errors", "sink_refused")},
                             first_error=next((x["first_error"] for x in runs if x["first_error"]), None))
        out["ratio"] = round(out["provider"]["per_s"] / out["bare"]["per_s"], 3)
        out["round_ratios"] = [round(r["provider"]["per_s"] / r["bare"]["per_s"], 3) for r in out["rounds"]]
        out["sink"] = await ask(conn, "stop")
        return {**out, "replayed": {"method": req.get("method", "POST"), "path": req["path"],
                                    "body_bytes": len(req["body"])}}
    finally:
        if provider is not None:
            await provider.close()


async def run(args) -> dict:
    return await run_cases([n for n in args.only.split(",") if n], CASES, lambda name: run_case(name, args),
                           args.timeout, args.deadline,
                           lambda r: f"{r['provider']['per_s']:,.0f} vs {r['bare']['per_s']:,.0f}/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.providers", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=3000, help="timed sends per phase")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="timed provider and bare phases, alternating; medians shown")
    p.add_argument("--only", default="", help=f"comma-separated, of: {','.join(CASES)}")
    p.add_argument("--timeout", type=float, default=120, help="seconds per case")
    p.add_argument("--deadline", type=float, default=900, help="seconds for the whole run")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    out = uvloop.run(run(args))
    table = Table(title=f"providers vs. bare client: median of {args.rounds} rounds of n={args.n}, "
                        f"{args.concurrency} in flight, {os.cpu_count()} cores shared by client and sink")
    for col in ("provider", "provider/s", "bare/s", "ratio", "rounds' ratios", "client CPU µs/send",
                "sink CPU µs/req", "errors", "sink refused"):
        table.add_column(col, justify="left" if col == "provider" else "right")
    for name, r in out["results"].items():
        p, b = r["provider"], r["bare"]
        table.add_row(name, f"{p['per_s']:,.0f}", f"{b['per_s']:,.0f}", f"{r['ratio']:.2f}",
                      f"{min(r['round_ratios']):.2f}-{max(r['round_ratios']):.2f}",
                      *(f"{p[k]:.0f}/{b[k]:.0f}" for k in ("client_cpu_us", "sink_cpu_us", "errors", "sink_refused")))
    console = Console(width=140)
    console.print(table)
    for name, r in out["results"].items():
        for ph in ("provider", "bare"):
            if r[ph]["first_error"]:
                console.print(f"[yellow]{name} {ph}[/yellow]: {r[ph]['errors']} errors, first: {r[ph]['first_error']}")
    for name, why in out["dropped"].items():
        console.print(f"[red]dropped {name}[/red]: {why}")
    if args.json:
        doc = {"command": "python -m bench.providers " + " ".join(sys.argv[1:] if argv is None else argv),
               "date": datetime.date.today().isoformat(), "n": args.n, "concurrency": args.concurrency,
               "warmup": args.warmup, "rounds_per_case": args.rounds,
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           **{pkg: version(pkg) for pkg in ("aiohttp", "uvloop", "h2", "aioapns")}},
               **out}
        write_json(args.json, doc)
    return 0 if not out["dropped"] else 1


if __name__ == "__main__":
    sys.exit(main())
