"""A sink in its own process: ``python -m sandbox`` and ``SinkProcess``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from sandbox.fcm import FcmSink
from sandbox.http import WebhookSink
from sandbox.otlp import OtlpSink
from sandbox.ports import free_port, port_open
from sandbox.sendgrid import SendGridSink
from sandbox.smtp import SmtpSink
from sandbox.twilio import TwilioSink


async def _serve(args: argparse.Namespace) -> dict:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.kind == "webhook":
        sink = WebhookSink(args.secret, args.host, args.port)
    elif args.kind == "sendgrid":
        sink = SendGridSink(args.api_key, args.host, args.port)
    elif args.kind == "twilio":
        sink = TwilioSink(args.account_sid, args.auth_token, args.host, args.port)
    elif args.kind == "fcm":
        with open(args.service_account) as f:
            account = json.load(f)
        os.unlink(args.service_account)  # a private key: gone from disk once read
        sink = FcmSink(account, args.host, args.port)
    elif args.kind == "otlp":
        sink = OtlpSink(args.host, args.port, keep=False)  # counts only: a long run would fill the memory
    if args.kind != "smtp":
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
        if isinstance(sink, SmtpSink):
            sink.stop()
        else:
            await sink.stop()
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


# Resolved before any fork: between fork and exec the child only calls it.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent():
    """A ``preexec_fn``: the sink gets SIGTERM when the thread that started it
    ends, so a killed harness leaves no sink behind (as ``engine.children``
    does for the embedded servers; the loopback servers may not import it)."""
    if _prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before that: no signal will come
            os._exit(1)

    return preexec


class SinkProcess:
    """A sink in its own process (``python -m sandbox``), so it does not share
    a GIL or a core's time slice with the engine it is measuring. ``secret``:
    the webhook signing secret, SendGrid's API key, or Twilio's auth token (with
    ``account``, the account SID); for FCM, ``account`` is the service account
    (a dict, handed over in a file only the child reads)."""

    def __init__(self, kind: str, *, secret: str | None = None, account: str | dict | None = None, port: int = 0,
                 stats_dir: str | None = None):
        self.kind, self.secret, self.account = kind, secret, account
        self.port = port or free_port()
        self.stats_file = os.path.join(stats_dir or tempfile.gettempdir(), f"tidings-{kind}-sink-{self.port}.json")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> SinkProcess:
        cmd = [sys.executable, "-m", "sandbox", self.kind, "--port", str(self.port),
               "--stats-file", self.stats_file]
        if self.kind == "webhook":
            cmd += ["--secret", self.secret or ""]
        elif self.kind == "sendgrid":
            cmd += ["--api-key", self.secret or ""]
        elif self.kind == "twilio":
            cmd += ["--account-sid", str(self.account), "--auth-token", self.secret or ""]
        elif self.kind == "fcm":
            fd, self.account_file = tempfile.mkstemp(prefix="tidings-fcm-account-", suffix=".json")  # 0600, new
            with os.fdopen(fd, "w") as f:
                json.dump(self.account, f)
            cmd += ["--service-account", self.account_file]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     preexec_fn=_die_with_parent())
        deadline = time.monotonic() + timeout_s
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                self.proc = None
                self._remove_files()
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
        self._remove_files()
        return final

    def _remove_files(self) -> None:
        for path in (self.stats_file, getattr(self, "account_file", None)):
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m sandbox``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="Run a loopback sink.")
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
    twilio = sub.add_parser("twilio", help="Twilio Messages and Calls look-alike")
    twilio.add_argument("--host", default="127.0.0.1")
    twilio.add_argument("--port", type=int, default=0)
    twilio.add_argument("--account-sid", required=True)
    twilio.add_argument("--auth-token", required=True)
    fcm = sub.add_parser("fcm", help="FCM HTTP v1 and Google's OAuth token endpoint look-alike")
    fcm.add_argument("--host", default="127.0.0.1")
    fcm.add_argument("--port", type=int, default=0)
    fcm.add_argument("--service-account", required=True, help="the service account JSON file (its public key checks "
                                                               "the token requests)")
    otlp = sub.add_parser("otlp", help="OTLP/HTTP trace receiver (counts spans)")
    otlp.add_argument("--host", default="127.0.0.1")
    otlp.add_argument("--port", type=int, default=0)
    for p in (hook, smtp, sendgrid, twilio, fcm, otlp):
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
