"""Set-up run in every Ray worker process before any actor starts (Ray's
``worker_process_setup_hook``): uvloop becomes the event loop policy, so the loop
Ray creates for each async actor is a uvloop loop. Done per worker process, not
at import, so importing ``actors`` elsewhere changes nothing."""

import asyncio
import os

import uvloop


def setup() -> None:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def yield_cpu(by: int) -> None:
    """Run this actor's process ``by`` steps nicer than Ray's workers (``ray.bulk_niceness``).
    Each actor has a worker process of its own, so only this actor is affected. On Linux
    niceness belongs to each thread (os.nice changes the caller's only) and Ray runs an
    actor's methods on other threads than its constructor: every thread there is now is
    changed, and threads started later inherit it from theirs. Raising niceness needs no
    privilege; it stops at 19."""
    if by <= 0:
        return
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc (macOS): the process's, as far as the system goes
        os.nice(by)
        return
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
        except OSError:  # a thread that ended meanwhile
            pass
