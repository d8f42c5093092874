"""Every command stops every process it started: on success, on error, on Ctrl-C
and on SIGTERM. Each test runs a real ``tidings`` command as a subprocess with
its own home (so NATS, PostgreSQL, Redis and Ray are embedded ones it starts
itself), collects the processes it starts while it runs (its descendants, and
the servers whose command line names its home: PostgreSQL leaves the tree when
pg_ctl exits), and after it exits checks that none is alive and that the ports
they listened on (Ray's aside) are closed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 150  # one command, start to exit, on a busy 2-core machine


class Command:
    """A ``tidings`` command running as a subprocess, watched."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None):
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.config = home / "tidings.toml"
        self.config.write_text(f"""
[engine]
home = "{home}"
user_shards = 1
[nats]
embedded_port = 0
[redis]
embedded_port = 0
[ray]
dashboard = false
num_cpus = 1
[http]
port = 0
[channels.email]
shards = 1
""")  # few actors: each is a process to start, and starting is most of these tests' time
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("TIDINGS_", "RAY_ADDRESS"))}
        clean.update(RAY_USAGE_STATS_ENABLED="0", TIDINGS_CONFIG=str(self.config), **(env or {}))
        self.log = home / "output.txt"
        with open(self.log, "wb") as out:
            # its own session: a signal the test sends reaches only what it is sent to
            self.proc = subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=home, env=clean,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.me = psutil.Process(self.proc.pid)
        self.seen: dict[int, psutil.Process] = {}
        self.names: dict[int, str] = {}  # noted while alive: a process gone has no name to ask
        self.ports: set[int] = set()
        self.ray: set[int] = set()
        self.polls = 0

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def collect(self) -> None:
        """Note every process started so far, and the TCP ports they listen on."""
        with contextlib.suppress(psutil.Error):
            for p in self.me.children(recursive=True):
                self._note(p)
        self.polls += 1
        if self.polls % 4 == 1:  # the slower scans, once a second
            for p in psutil.process_iter(["cmdline"]):
                if p.pid != self.proc.pid and str(self.home) in " ".join(p.info["cmdline"] or ()):
                    self._note(p)
            with contextlib.suppress(psutil.Error):
                # Ray's ports are left out: some are fixed defaults (the autoscaler's
                # metrics on 44217) that another Ray on the machine takes next.
                mine = {pid for pid in self.seen if pid not in self.ray} | {self.proc.pid}
                self.ports |= {c.laddr.port for c in psutil.net_connections("tcp")
                               if c.status == psutil.CONN_LISTEN and c.pid in mine}

    def _note(self, p: psutil.Process) -> None:
        if p.pid not in self.seen:
            self.seen[p.pid] = p
        # named again at each sighting while it runs: one first seen between its
        # fork and its exec still had its parent's name (a raylet went unseen so)
        name = _name(p)
        if name != "?" or p.pid not in self.names:
            self.names[p.pid] = name
        with contextlib.suppress(psutil.Error):
            if self.names[p.pid].startswith("ray::") or "/ray/" in " ".join(p.cmdline()):
                self.ray.add(p.pid)

    def wait_until(self, ready, what: str) -> None:
        """Watch until ``ready()`` (a command still running) or fail."""
        deadline = time.monotonic() + DEADLINE_S
        while not ready():
            assert self.proc.poll() is None, f"exited with {self.proc.returncode} before {what}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {what} in {DEADLINE_S}s:\n{self.output()}"
            self.collect()
            time.sleep(0.25)
        self.collect()

    def finish(self) -> int:
        """Watch until it exits; its exit status."""
        deadline = time.monotonic() + DEADLINE_S
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running after {DEADLINE_S}s:\n{self.output()}"
            self.collect()
            time.sleep(0.25)
        return self.proc.returncode

    def printed(self, text: str) -> bool:
        return text in self.output()

    def started(self, name: str) -> bool:
        return name in self.names.values()

    def alive(self) -> list[str]:
        return [f"{self.names[p.pid]}[{p.pid}]" for p in self.seen.values() if _running(p)]

    def listening(self) -> list[int]:
        return sorted(port for port in self.ports if _accepts(port))

    def check_clean(self) -> None:
        assert self.seen and self.ports, f"no child process or port seen:\n{self.output()}"
        assert self.alive() == [], f"outlived the command:\n{self.output()}"
        assert self.listening() == [], f"ports still open:\n{self.output()}"

    def kill_all(self) -> None:
        """Teardown: whatever a failed test left running goes."""
        procs = [p for p in self.seen.values() if _running(p)]
        if self.proc.poll() is None:
            procs.append(self.me)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=10)


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return "?"


def _running(p: psutil.Process) -> bool:
    try:  # is_running() also tells a pid taken by a newer process from ours
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@pytest.fixture
def command():
    """Runs commands, each in a home of its own; kills what they left at the end.
    Not under pytest's tmp_path: another pytest session starting resets its
    folders to 0700, and the embedded PostgreSQL runs as its own user."""
    base = Path(tempfile.mkdtemp(prefix="tidings-exits-"))
    started: list[Command] = []

    def run(*args: str, env: dict[str, str] | None = None) -> Command:
        started.append(Command(base / f"run{len(started)}", *args, env=env))
        return started[-1]

    yield run
    for c in started:
        c.kill_all()
    shutil.rmtree(base, ignore_errors=True)


def test_demo_stopped_by_ctrl_c_leaves_nothing(command):
    """The demo's load, then serving; Ctrl-C at the terminal (SIGINT to the
    whole foreground group, loopback servers included)."""
    demo = command("demo", "--count", "20", "--users", "20", "--serve")
    demo.wait_until(lambda: demo.printed("Serving; Ctrl-C to stop."), "serving after the demo")
    assert demo.started("nats-server") and demo.started("redis-server") and demo.started("postgres")
    assert demo.started("raylet") and demo.started("gcs_server")
    os.killpg(demo.proc.pid, signal.SIGINT)
    assert demo.finish() == 0, demo.output()
    demo.check_clean()


def test_sigterm_while_starting_leaves_nothing(command):
    """SIGTERM (a process manager's stop) in the middle of the start, once Ray's
    raylet is up: the start is unwound and everything it began is stopped."""
    up = command("up")
    up.wait_until(lambda: up.started("raylet"), "raylet")
    up.proc.send_signal(signal.SIGTERM)
    up.finish()
    assert not up.printed("Traceback"), up.output()
    up.check_clean()


def test_failed_start_leaves_nothing_and_says_why_in_one_line(command):
    """``tidings up`` on a port that is taken: everything is started (services,
    Ray, actors) before the HTTP bind fails; all of it is stopped, and the error
    is one line, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = command("up", "--port", str(port))
        code = up.finish()
    out = up.output()
    assert code == 1, out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "address already in use" in errors[0], out
    assert up.started("raylet") and up.started("nats-server"), out
    up.ports.discard(port)  # ours, closed below
    up.check_clean()


def test_one_shot_command_failing_answers_in_one_line(command):
    """A one-shot command whose database does not answer: one line, no
    traceback, nothing left."""
    keys = command("keys", "list", env={"TIDINGS_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres"})
    code = keys.finish()
    out = keys.output()
    assert code == 1, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip() and "RuntimeDirWarning" not in line
             and "user_runtime_dir" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "refused" in lines[0], out
    assert keys.alive() == []


def test_bench_e2e_leaves_nothing(command):
    """The end-to-end harness at a tiny size: its sinks, its engine, its
    services and its Ray all gone after a normal exit (its embedded nats-server
    once outlived it, holding the port)."""
    bench = command("bench", "e2e", "--n", "20", "--users", "20", "--shards", "1", "--paced", "",
                    "--no-ceilings", "--timeout", "60")
    assert bench.finish() == 0, bench.output()
    assert bench.started("nats-server") and bench.started("raylet"), bench.output()
    bench.check_clean()
