"""Which failures are the infrastructure's (retried in place, never dead-lettered),
and what every tracking writer stores from an outcome's free texts."""

from __future__ import annotations

import asyncpg
import nats.errors
import nats.js.errors
import orjson
import pytest
from hypothesis import given, strategies as st
from ray import exceptions as ray_errors

from actors.faults import MOST_S, backoff, kind, transient
from policy.types import Attempt, Outcome
from stores.tracking import columns


@pytest.mark.parametrize("error", [
    asyncpg.exceptions.CannotConnectNowError("starting up"),
    asyncpg.exceptions.AdminShutdownError("shutting down"),
    asyncpg.exceptions.ReadOnlySQLTransactionError("read-only"),
    asyncpg.exceptions.DiskFullError("disk full"),
    asyncpg.exceptions.TooManyConnectionsError("too many"),
    asyncpg.exceptions.InvalidPasswordError("rotated"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.exceptions.InterfaceError("pool is closing"),
    asyncpg.exceptions.InterfaceError("cannot perform operation: connection is closed"),
    ConnectionRefusedError(111, "refused"),
    TimeoutError(),
    nats.errors.NoServersError(),
    nats.js.errors.NoStreamResponseError(),
    ray_errors.ActorUnavailableError("restarting", None),
])
def test_outages_are_retried_without_end(error):
    assert kind(error) == "outage" and transient(error)


@pytest.mark.parametrize("error", [
    asyncpg.exceptions.LockNotAvailableError("lock timeout"),
    asyncpg.exceptions.QueryCanceledError("statement timeout"),
    asyncpg.exceptions.DeadlockDetectedError("deadlock"),
    asyncpg.exceptions.OutOfMemoryError("out of memory"),
    ray_errors.ActorDiedError(),
    ray_errors.OutOfMemoryError("killed by the memory monitor"),
])
def test_contention_may_be_the_messages_doing(error):
    """Retried a few times, then counted against the message."""
    assert kind(error) == "contention" and transient(error)


@pytest.mark.parametrize("error", [
    ValueError("bad"),
    KeyError("x"),
    asyncpg.exceptions.UniqueViolationError("duplicate"),
    asyncpg.exceptions.RaiseError("a trigger said no"),
    asyncpg.exceptions.DataError("bad input"),
    asyncpg.exceptions.InterfaceError("the server expects 2 arguments, 1 was passed"),
    asyncpg.exceptions.InterfaceError("text disclosed in a message"),  # says "clos", means nothing
    asyncpg.exceptions.ProtocolViolationError("a request can cause this"),  # 08P01, though class 08
])
def test_other_failures_are_not(error):
    assert not transient(error)


def test_wrapped_errors_are_judged_by_what_they_wrap():
    remote = ray_errors.RayTaskError("handle", "traceback", asyncpg.exceptions.CannotConnectNowError("x"))
    twice = ray_errors.RayTaskError("handle", "traceback", remote)
    assert transient(twice)
    for first, second in ((asyncpg.exceptions.QueryCanceledError("x"), ConnectionResetError()),
                          (ConnectionResetError(), asyncpg.exceptions.QueryCanceledError("x"))):
        both = ray_errors.RayTaskError("handle", "traceback", first)
        both.__cause__ = second
        assert kind(both) == "outage"  # an outage anywhere in the chain wins, wherever it is
    assert not transient(ray_errors.RayTaskError("handle", "traceback", ValueError("bad")))
    try:
        try:
            raise ConnectionResetError()
        except ConnectionResetError:
            raise ValueError("raised while handling it")  # noqa: B904 - the context is not the cause
    except ValueError as e:
        assert not transient(e)


def test_backoff_grows_to_a_ceiling():
    delays = [0.5]
    for _ in range(10):
        delays.append(backoff(delays[-1]))
    assert delays == sorted(delays) and delays[-1] == MOST_S


@given(st.text(), st.text(), st.text())
def test_tracking_texts_are_always_storable(reason, error, detail):
    """What reaches PostgreSQL has no NUL and no lone surrogate, and is valid JSON."""
    o = Outcome("00000000-0000-0000-0000-000000000001", "u", "webhook", "c", "failed", reason, 1.0, 2.0,
                provider=error, provider_message_id=error,
                attempts=[Attempt(error, False, 1.0, 2.0, error=error, error_kind=error)], detail=detail)
    reason_, provider, message_id, timeline, errors = columns(o)
    for text in (reason_, provider, message_id, timeline, errors or ""):
        assert "\x00" not in text
        text.encode("utf-8")  # no lone surrogate
    assert "\\u0000" not in timeline and orjson.loads(timeline)[0]["error"] is not None
    if detail:
        assert "\\u0000" not in errors


def test_only_a_sent_or_held_channel_makes_a_notification_handled():
    """A redelivered notification whose recorded channels all failed still gets its
    fallbacks (a round that failed before its fallbacks ran recorded them)."""
    from stores.tracking import handled
    rows = {("a", "email"): "failed", ("a", "sms"): "suppressed", ("b", "email"): "deferred",
            ("c", "push"): "sent", ("d", "email"): "rejected", ("e", "email"): "delivered"}
    assert handled(rows) == {"b", "c", "e"}
