"""Deliver one task: failover over provider slots, in the order a ``Router`` gives
(priority by default), each slot with a breaker, a daily limit, a token bucket, a
bulkhead, a per-call timeout and retries with backoff. Pure mechanics: the only I/O
is ``provider.send``; time comes from the injected ``clock``/``wall``/``sleep`` and
jitter from ``rng``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from actors.delivery.bucket import Clock, Sleep
from actors.delivery.bulkhead import place
from actors.delivery.routing.base import Router
from actors.delivery.slot import ProviderSlot
from policy.text import printable
from policy.types import Attempt, DeliveryTask, Outcome, Status
from providers.base import BatchProvider, Receipt
from providers.errors import (
    AddressGone,
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    DestinationCircuitOpen,
    DestinationError,
    DestinationRefused,
    InvalidMessage,
    NetworkError,
    ProviderError,
    RateLimited,
)

log = logging.getLogger(__name__)

# Refusals about the message or its address: no other provider would take it.
# ``destination_refused``: the SSRF guard refused a user-supplied URL; failing
# over could reach a provider with a broader ``egress_allow`` and send it anyway.
# ``destination_circuit_open``: the user's own endpoint failed too often in a
# row; every other provider would POST to that same endpoint, so failing over
# only adds load (and copies) on a destination known to be down. A single
# ``destination_error`` still fails over (the next provider may get through).
# ``ttl.expired``: the notification's life (``DeliveryTask.expires_at``) ended while it
# waited here (a bulkhead, a rate limit, a backoff); no provider may send it now.
EXPIRED = "ttl.expired"
FINAL_REASONS = frozenset({"invalid_message", "address_gone", "destination_refused", "destination_circuit_open",
                           EXPIRED})


class UnexpectedProviderError(ProviderError):
    """A provider raised something outside the DeliveryError tree (a bug in it):
    handled like a ProviderError so one broken provider cannot kill a batch."""

    kind = "system"


# First match wins, so subclasses come before their bases.
_REASONS: tuple[tuple[type[DeliveryError], str], ...] = (
    (AddressGone, "address_gone"),
    (DestinationRefused, "destination_refused"),
    (InvalidMessage, "invalid_message"),
    (DestinationCircuitOpen, "destination_circuit_open"),
    (DestinationError, "destination_error"),
    (AuthenticationError, "auth_error"),
    (ConfigurationError, "config_error"),
    (RateLimited, "rate_limited"),
    (NetworkError, "network_error"),
    (UnexpectedProviderError, "system_error"),
    (ProviderError, "provider_error"),
)


def reason_for(err: DeliveryError) -> str:
    """The Outcome reason for a delivery error."""
    for cls, reason in _REASONS:
        if isinstance(err, cls):
            return reason
    return "provider_error" if err.retryable else "system_error"


@dataclass
class _Run:
    """One deliver() call's inputs and the attempts made so far."""

    task: DeliveryTask
    clock: Clock
    wall: Clock
    sleep: Sleep
    rng: random.Random
    attempts: list[Attempt] = field(default_factory=list)
    logged: bool = False  # an unexpected exception was already logged
    batch: Sequence[DeliveryTask] | None = None  # set: one provider call carries all of these
    router: Router | None = None  # orders the slots and hears of every call


def _ordered(run: _Run, slots: Sequence[ProviderSlot]) -> Sequence[ProviderSlot]:
    """The router's order, or ``slots`` as given (without a router, or if it fails)."""
    if run.router is None:
        return slots
    try:
        return run.router.order(slots, run.task)
    except Exception:  # a routing bug must not fail deliveries the slots can make
        log.exception("router %s failed; trying slots as given", type(run.router).__name__)
        return slots


async def deliver(
    task: DeliveryTask,
    slots: Sequence[ProviderSlot],
    *,
    clock: Callable[[], float],
    wall: Callable[[], float],
    sleep: Sleep,
    rng: random.Random,
    router: Router | None = None,
) -> Outcome:
    """Try ``slots`` until one accepts ``task``: in the order ``router`` gives, or as
    given without one; never raises for a provider failure (``asyncio.CancelledError``
    does propagate). Each provider call is reported to ``router.record``."""
    run = _Run(task, clock, wall, sleep, rng, router=router)
    reason = "no_provider"
    for slot in _ordered(run, slots):
        reason, receipt = await _try_slot(run, slot)
        if reason == "ok":
            message_id = receipt.message_id if receipt is not None else None
            return _outcome(run, "sent", reason, slot.provider.name, message_id)
        if reason in FINAL_REASONS:
            break  # another provider would refuse it too
    return _outcome(run, "suppressed" if reason == EXPIRED else "failed", reason)


async def deliver_batch(
    tasks: Sequence[DeliveryTask],
    slots: Sequence[ProviderSlot],
    *,
    clock: Callable[[], float],
    wall: Callable[[], float],
    sleep: Sleep,
    rng: random.Random,
    router: Router | None = None,
) -> list[Outcome]:
    """Like ``deliver`` for tasks that share their content, through providers
    that are all ``providers.base.BatchProvider``: one call (and one token)
    carries them all, and every task gets the same status, reason and attempts.
    The router orders the slots once for the batch (for its first task) and
    hears of each call once."""
    now = wall()
    dead = [t.expires_at is not None and now >= t.expires_at for t in tasks]
    if any(dead):  # past their life already: not in the call (a batch mixes tasks of many notifications)
        live = [t for t, d in zip(tasks, dead, strict=True) if not d]
        sent = iter(await deliver_batch(live, slots, clock=clock, wall=wall, sleep=sleep, rng=rng, router=router)
                    if live else [])
        # in the tasks' order: the caller reads the call's outcome from the first one
        return [_outcome(_Run(t, clock, wall, sleep, rng), "suppressed", EXPIRED) if d else next(sent)
                for t, d in zip(tasks, dead, strict=True)]
    run = _Run(tasks[0], clock, wall, sleep, rng, batch=tasks, router=router)
    reason, receipt, name = "no_provider", None, None
    for slot in _ordered(run, slots):
        reason, receipt = await _try_slot(run, slot)
        if reason == "ok":
            name = slot.provider.name
            break
        if reason in FINAL_REASONS:
            break
    status: Status = "sent" if reason == "ok" else "suppressed" if reason == EXPIRED else "failed"
    message_id = receipt.message_id if receipt is not None else None
    outcomes = []
    for t in tasks:
        run.task = t
        outcomes.append(_outcome(run, status, reason, name, message_id))
    return outcomes


async def _try_slot(run: _Run, slot: ProviderSlot) -> tuple[str, Receipt | None]:
    """Up to ``max_attempts`` calls on one slot: ("ok", receipt) or (reason, None)."""
    reason = "provider_error"
    for n in range(1, max(1, slot.max_attempts) + 1):
        refused, receipt, err = await _admitted_call(run, slot)
        if refused is not None:
            return refused, None
        reason = _settle(run, slot, err)
        if err is None:
            return reason, receipt
        if not err.retryable or n >= slot.max_attempts:
            break
        if (err.retry_after or 0.0) > slot.max_wait_s:
            break  # the provider asks for a longer wait than we hold a delivery for: fail over
        await run.sleep(max(slot.backoff.delay(n, run.rng), err.retry_after or 0.0))
    return reason, None


async def _admitted_call(
    run: _Run, slot: ProviderSlot
) -> tuple[str | None, Receipt | None, DeliveryError | None]:
    """Pass the slot's gates and make one call: (refusal reason, receipt, error).

    The gates are checked once a bulkhead place is held, right before the call:
    calls queued behind the bulkhead must see a breaker that opened meanwhile."""
    async with place(slot.bulkhead, run.task.priority):
        if not slot.breaker.allow():
            return "circuit_open", None, None
        try:
            refused = await _limits(run, slot)
            if refused is None:
                return (None, *await _call(run, slot))
        except BaseException:
            slot.breaker.release()  # a cancelled admission or call must not strand a probe
            raise
        slot.breaker.release()
        return refused, None, None


async def _limits(run: _Run, slot: ProviderSlot) -> str | None:
    if _expired(run):
        return EXPIRED
    if slot.daily.exhausted():
        return "daily_limit"
    if not await slot.bucket.acquire(run.sleep, slot.max_wait_s):
        # a shared quota is counted with its token: a refusal may be the day's end
        return "daily_limit" if slot.daily.exhausted() else "rate_limited"
    if _expired(run):  # it waited for a token
        return EXPIRED
    if not slot.daily.take():  # spent by a concurrent delivery while we waited
        return "daily_limit"
    return None


def _expired(run: _Run) -> bool:
    """Whether every task of the call is past its life. A batch's tasks share one
    call: those already past it when the batch came were settled apart
    (``deliver_batch``); one that ends while the call waits goes with the others."""
    now = run.wall()
    return all(t.expires_at is not None and now >= t.expires_at for t in (run.batch or (run.task,)))


async def _call(run: _Run, slot: ProviderSlot) -> tuple[Receipt | None, DeliveryError | None]:
    """One provider call (the caller holds the bulkhead); appends its Attempt and
    reports it to the router."""
    at, start = run.wall(), run.clock()
    try:
        receipt = await _send(run, slot)
    except DeliveryError as err:
        _record(run, slot, at, start, err)
        return None, err
    _record(run, slot, at, start, None)
    return receipt, None


def _record(run: _Run, slot: ProviderSlot, at: float, start: float, err: DeliveryError | None) -> None:
    attempt = _attempt(run, slot.provider.name, at, start, err)
    run.attempts.append(attempt)
    if run.router is not None:
        try:
            run.router.record(slot, err, attempt.duration_ms / 1000.0)
        except Exception:  # bookkeeping must not turn a made call into a failed delivery
            log.exception("router %s failed to record a call on %s", type(run.router).__name__, slot.name)


async def _send(run: _Run, slot: ProviderSlot) -> Receipt:
    """``provider.send`` under the timeout, with every failure as a DeliveryError."""
    deadline = asyncio.timeout(slot.timeout_s)
    try:
        async with deadline:
            if run.batch is not None:
                # batches are made only when every slot is a BatchProvider (ChannelShard)
                return await cast(BatchProvider, slot.provider).send_batch(run.batch)
            return await slot.provider.send(run.task)
    except DeliveryError:
        raise
    except TimeoutError as exc:
        detail = f"after {slot.timeout_s:g}s" if deadline.expired() else f"in provider: {exc}"
        raise NetworkError(f"timeout {detail}") from exc
    except Exception as exc:  # CancelledError is a BaseException and passes through
        if not run.logged:
            run.logged = True
            log.exception("provider %s raised unexpectedly for %s", slot.provider.name, run.task.notification_id,
                          extra={"notification_id": run.task.notification_id,  # fields of JSON lines
                                 "traceparent": run.task.traceparent})
        raise UnexpectedProviderError(f"{type(exc).__name__}: {exc}") from exc


def _settle(run: _Run, slot: ProviderSlot, err: DeliveryError | None) -> str:
    """Breaker and bucket bookkeeping for one call's result; returns its reason."""
    if err is None:
        slot.breaker.record_success()
        return "ok"
    if isinstance(err, RateLimited):
        slot.breaker.release()  # slow down, not broken
        if err.retry_after is not None:
            slot.bucket.pause_until(run.clock() + err.retry_after)
    elif isinstance(err, (InvalidMessage, DestinationError)):
        slot.breaker.release()  # the message or the user's own destination is bad, not the provider
    else:
        slot.breaker.record_failure()
    return reason_for(err)


def _attempt(run: _Run, name: str, at: float, start: float, err: DeliveryError | None) -> Attempt:
    ms = (run.clock() - start) * 1000.0
    if err is None:
        return Attempt(provider=name, ok=True, at=at, duration_ms=ms)
    # a provider's answer may carry NUL and arbitrary bytes: one NUL fails the tracking write
    return Attempt(provider=name, ok=False, at=at, duration_ms=ms, error=printable(str(err)), error_kind=err.kind)


def _outcome(
    run: _Run, status: Status, reason: str, provider: str | None = None, message_id: str | None = None
) -> Outcome:
    t = run.task
    return Outcome(
        notification_id=t.notification_id, user_id=t.user_id, channel=t.channel, category=t.category,
        status=status, reason=reason, accepted_at=t.accepted_at, completed_at=run.wall(),
        provider=provider, provider_message_id=printable(message_id, 200), attempts=run.attempts, priority=t.priority,
    )


__all__ = ["UnexpectedProviderError", "deliver", "deliver_batch", "reason_for"]
