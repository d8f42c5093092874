"""Whose failure is it: the infrastructure's, or the message's?

An infrastructure failure (PostgreSQL down, restarting, read-only or full;
NATS unreachable; an actor Ray is restarting) says nothing about the message:
the work is tried again, with backoff, for as long as it takes, and never
counts toward dead-lettering. Anything else may be the message's fault, and
a message that keeps failing goes to the dead-letter stream.
"""

from __future__ import annotations

import asyncpg
import nats.errors
from ray import exceptions as ray_errors

# SQLSTATE classes: 08 connection, 53 insufficient resources (disk full, out of
# memory, too many connections), 57 operator intervention (shutdown, cannot
# connect now, statement timeout), 58 system error (I/O)
_CLASSES = ("08", "53", "57", "58")
# and single states: read-only transaction (a standby, or default_transaction_read_only),
# serialization failure, deadlock, lock not available (lock_timeout), object in use
_STATES = frozenset({"25006", "40001", "40P01", "55P03", "55006"})

_RAY = (ray_errors.RayActorError, ray_errors.ActorUnavailableError, ray_errors.WorkerCrashedError,
        ray_errors.NodeDiedError, ray_errors.ObjectLostError, ray_errors.OwnerDiedError,
        ray_errors.LocalRayletDiedError, ray_errors.ObjectStoreFullError, ray_errors.OutOfMemoryError)
_NATS = (nats.errors.ConnectionClosedError, nats.errors.NoServersError, nats.errors.TimeoutError,
         nats.errors.StaleConnectionError, nats.errors.OutboundBufferLimitError)

FIRST_S = 0.5  # the first wait after an infrastructure failure; doubled each time
MOST_S = 15.0  # the longest wait, so recovery is noticed within this


def _one(error: BaseException) -> bool:
    if isinstance(error, _RAY + _NATS):
        return True
    if isinstance(error, asyncpg.PostgresError):
        state = getattr(error, "sqlstate", None) or ""
        return state[:2] in _CLASSES or state in _STATES
    if isinstance(error, asyncpg.InterfaceError):  # "connection is closed", "pool is closing"
        return "clos" in str(error)
    return isinstance(error, OSError)  # refused, reset, timed out (TimeoutError is an OSError)


def transient(error: BaseException) -> bool:
    """True when ``error``, or what it wraps (a Ray task error carries the
    remote one as ``cause``), is an infrastructure failure."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if _one(e):
            return True
        todo += [getattr(e, "cause", None), e.__cause__]  # not __context__: an error handled on the way is not this one
    return False


def backoff(delay: float) -> float:
    """The wait after ``delay``."""
    return min(delay * 2, MOST_S)
