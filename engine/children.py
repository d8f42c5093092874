"""What a command starts, it stops: on success, on error, on Ctrl-C and on
SIGTERM (docs/design.md, Clean exits).

- ``die_with_parent``: the ``preexec_fn`` of the servers we start (nats-server,
  redis-server): they get SIGTERM when the thread that started them ends, so
  even a SIGKILL of the command leaves none behind (Linux; elsewhere a no-op).
- ``command_scope``: what the CLI runs every command in. SIGTERM does what
  Ctrl-C does (the command's own clean-up runs); on the way out it shuts down
  the Ray it started and stops any child process still running."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator

import psutil

log = logging.getLogger(__name__)

STOP_WAIT_S = 5.0  # how long leftovers get to stop on SIGTERM before SIGKILL

_PR_SET_PDEATHSIG = 1
# Resolved here, before any fork: the child between fork and exec calls it only.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets SIGTERM when the
    thread that starts it ends (start it from one that lives as long as the
    command). None where the kernel has no such thing."""
    if _prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: no signal will come
            os._exit(1)

    return preexec


def _interrupt(signum, frame) -> None:
    # Route SIGTERM to whatever SIGINT means right now: asyncio's runner cancels
    # the main task, a serving engine sets its stop event, otherwise
    # KeyboardInterrupt. Either way the command's finally blocks run.
    signal.raise_signal(signal.SIGINT)


def term_as_interrupt() -> None:
    """Make SIGTERM behave as Ctrl-C (main thread only). Call again after
    anything that replaced it: ``ray.init`` installs ``sys.exit``, and an event
    loop closing resets the handlers it had."""
    signal.signal(signal.SIGTERM, _interrupt)


@contextlib.contextmanager
def command_scope() -> Iterator[None]:
    """Run a command so that nothing it started outlives it."""
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:  # set outside Python: nothing we can put back
        previous = signal.SIG_DFL
    term_as_interrupt()
    try:
        yield
    finally:
        # The clean-up is bounded; a second Ctrl-C must not cut it short.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            before = descendants()  # Ray's workers leave the tree when their raylet stops
            shutdown_ray()
            stop(before + descendants())
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, previous)


def shutdown_ray() -> None:
    """Stop the local Ray this process started (from a cluster: disconnect)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def stop(procs: list[psutil.Process], wait_s: float = STOP_WAIT_S) -> None:
    """SIGTERM those still running, SIGKILL those that did not stop in ``wait_s``.
    psutil checks a process is the same one (pid and start time) before signalling."""
    alive = []
    for p in {p.pid: p for p in procs}.values():
        with contextlib.suppress(psutil.Error):
            p.terminate()
            alive.append(p)
    if not alive:
        return
    log.info("stopping %d child process(es) left running: %s", len(alive), ", ".join(_names(alive)))
    _, stubborn = psutil.wait_procs(alive, timeout=wait_s)
    for p in stubborn:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(stubborn, timeout=wait_s)


def _names(procs: list[psutil.Process]) -> list[str]:
    names = []
    for p in procs[:8]:
        try:
            names.append(f"{p.name()}[{p.pid}]")
        except psutil.Error:
            names.append(f"[{p.pid}]")
    return names
