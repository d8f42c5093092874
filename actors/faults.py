"""Whose failure is it: the infrastructure's, or the message's?

An outage (PostgreSQL down, restarting, read-only, full or refusing us; NATS
unreachable; an actor Ray is bringing back) says nothing about the message:
the work is tried again, with backoff, for as long as it takes, and never
counts toward dead-lettering.

Contention (a statement or lock timeout, a deadlock, a serialization
failure, out of memory, an actor that died while working) is usually the
infrastructure's too, but a message can cause it (a query it makes slow, a
payload that kills the actor): it is tried again in place a few times
(``CONTENTION_TRIES``), then counts as the message's failure.

Anything else may be the message's fault, and a message that keeps failing
goes to the dead-letter stream.
"""

from __future__ import annotations

from typing import Literal

import asyncpg
import nats.errors
import nats.js.errors
from ray import exceptions as ray_errors

Kind = Literal["outage", "contention"]

# SQLSTATE classes that mean the server is away or refusing us: 08 connection
# (but 08P01, a protocol violation, which a request could cause), 28 authorization
# (a rotated password), 58 system error (I/O)
_OUTAGE_CLASSES = ("08", "28", "58")
_NOT_OUTAGE = frozenset({"08P01"})
# read-only transaction (a standby, or default_transaction_read_only), disk full,
# too many connections, admin/crash shutdown, cannot connect now
_OUTAGE_STATES = frozenset({"25006", "53100", "53300", "57P01", "57P02", "57P03"})
# statement timeout (57014), out of memory, serialization failure, deadlock,
# lock not available (lock_timeout), object in use
_CONTENTION_STATES = frozenset({"57014", "53200", "40001", "40P01", "55P03", "55006"})
# asyncpg's own words for a connection or pool that went away under the call, at the
# end of its message ("cannot perform operation: connection is closed")
_GONE = ("connection is closed", "pool is closing", "pool is closed")

_RAY_OUTAGE = (ray_errors.ActorUnavailableError, ray_errors.LocalRayletDiedError, ray_errors.NodeDiedError)
# an actor that died mid-call may have been killed by what it was working on
_RAY_CONTENTION = (ray_errors.RayActorError, ray_errors.WorkerCrashedError, ray_errors.ObjectLostError,
                   ray_errors.OwnerDiedError, ray_errors.ObjectStoreFullError, ray_errors.OutOfMemoryError)
_NATS_OUTAGE = (nats.errors.ConnectionClosedError, nats.errors.NoServersError, nats.errors.TimeoutError,
                nats.errors.StaleConnectionError, nats.errors.OutboundBufferLimitError,
                nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError)

FIRST_S = 0.5  # the first wait after an infrastructure failure; doubled each time
MOST_S = 15.0  # the longest wait, so recovery is noticed within this
CONTENTION_TRIES = 5  # 0.5 + 1 + 2 + 4 + 8 s of waiting, then it is the message's failure


def _one(error: BaseException) -> Kind | None:
    if isinstance(error, _RAY_OUTAGE + _NATS_OUTAGE):  # before RayActorError: ActorUnavailableError is one
        return "outage"
    if isinstance(error, _RAY_CONTENTION):
        return "contention"
    if isinstance(error, asyncpg.PostgresError):
        state = getattr(error, "sqlstate", None) or ""
        if (state[:2] in _OUTAGE_CLASSES and state not in _NOT_OUTAGE) or state in _OUTAGE_STATES:
            return "outage"
        return "contention" if state in _CONTENTION_STATES else None
    if isinstance(error, asyncpg.InterfaceError):
        return "outage" if str(error).endswith(_GONE) else None
    return "outage" if isinstance(error, OSError) else None  # refused, reset, timed out


def kind(error: BaseException) -> Kind | None:
    """"outage" or "contention" when ``error``, or what it wraps (a Ray task
    error carries the remote one as ``cause``), is an infrastructure failure;
    an outage anywhere in the chain wins."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    found: Kind | None = None
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        k = _one(e)
        if k == "outage":
            return k
        found = found or k
        # not __context__: an error handled on the way is not this one; a ``cause`` that is
        # not an exception (some library's attribute of that name) is not followed
        todo += [c for c in (getattr(e, "cause", None), e.__cause__) if isinstance(c, BaseException)]
    return found


def transient(error: BaseException) -> bool:
    """An infrastructure failure of either kind (logged as a line, not a traceback)."""
    return kind(error) is not None


def backoff(delay: float) -> float:
    """The wait after ``delay``."""
    return min(delay * 2, MOST_S)
