"""deliver(): retries, failover, breakers, limits, timeouts and cancellation, on a
fake clock (nothing here really sleeps, except the 10 ms timeout test)."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from fakes import FakeClock, FakeProvider, make_slot, make_task

from actors.delivery import Backoff, ProviderSlot, deliver
from policy.types import Outcome
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidMessage,
    NetworkError,
    ProviderError,
    RateLimited,
)


async def run(clock: FakeClock, slots: list[ProviderSlot], seed: int = 0, **task) -> Outcome:
    return await deliver(
        make_task(**task), slots, clock=clock, wall=clock.wall, sleep=clock.sleep, rng=random.Random(seed)
    )


async def test_success_first_try():
    clock = FakeClock()
    provider = FakeProvider("ses")
    out = await run(clock, [make_slot(provider, clock)])
    assert (out.status, out.reason, out.provider, out.provider_message_id) == ("sent", "ok", "ses", "ses-1")
    assert (out.notification_id, out.user_id, out.channel, out.category) == ("n-1", "u-1", "email", "billing")
    assert (out.priority, out.accepted_at, out.completed_at) == ("high", make_task().accepted_at, clock.wall())
    [attempt] = out.attempts
    assert attempt.provider == "ses" and attempt.ok and attempt.at == clock.wall()
    assert attempt.error is None and attempt.error_kind is None
    assert clock.sleeps == []


async def test_retryable_twice_then_success_sleeps_the_backoff():
    clock = FakeClock()
    provider = FakeProvider("ses", [ProviderError("503"), NetworkError("reset")])
    slot = make_slot(provider, clock)
    out = await run(clock, [slot])
    assert out.status == "sent" and out.provider_message_id == "ses-3"
    assert [a.ok for a in out.attempts] == [False, False, True]
    assert [a.error_kind for a in out.attempts] == ["provider", "network", None]
    assert [a.error for a in out.attempts] == ["503", "reset", None]
    assert clock.sleeps == pytest.approx([0.1, 0.2])
    assert slot.breaker.state == "closed" and slot.breaker.metrics()["failures"] == 0


async def test_retry_sleeps_use_jitter_from_the_injected_rng():
    clock = FakeClock()
    provider = FakeProvider("ses", [ProviderError("503"), ProviderError("503")])
    slot = make_slot(provider, clock, backoff=Backoff())
    await run(clock, [slot], seed=42)
    rng = random.Random(42)
    assert clock.sleeps == [Backoff().delay(1, rng), Backoff().delay(2, rng)]


async def test_budget_exhausted_fails_over_to_the_next_provider():
    clock = FakeClock()
    first = FakeProvider("ses", [ProviderError("503")] * 3)
    second = FakeProvider("sendgrid")
    out = await run(clock, [make_slot(first, clock), make_slot(second, clock, priority=1)])
    assert (out.status, out.provider, out.provider_message_id) == ("sent", "sendgrid", "sendgrid-1")
    assert [a.provider for a in out.attempts] == ["ses"] * 3 + ["sendgrid"]
    assert first.calls == 3
    assert clock.sleeps == pytest.approx([0.1, 0.2])  # no sleep after the last try on a slot


async def test_all_attempts_fail_reports_the_last_reason():
    clock = FakeClock()
    first = FakeProvider("ses", [ProviderError("503")] * 3)
    second = FakeProvider("sendgrid", [NetworkError("down")] * 3)
    out = await run(clock, [make_slot(first, clock), make_slot(second, clock)])
    assert (out.status, out.reason, out.provider) == ("failed", "network_error", None)
    assert len(out.attempts) == 6


async def test_invalid_message_fails_at_once_without_failover():
    clock = FakeClock()
    first = FakeProvider("ses", [InvalidMessage("bad address", status=400)])
    second = FakeProvider("sendgrid")
    slot = make_slot(first, clock)
    out = await run(clock, [slot, make_slot(second, clock)])
    assert (out.status, out.reason) == ("failed", "invalid_message")
    assert len(out.attempts) == 1 and out.attempts[0].error_kind == "validation"
    assert second.calls == 0 and clock.sleeps == []
    assert slot.breaker.metrics()["failures"] == 0


@pytest.mark.parametrize(
    ("error", "reason"),
    [(AuthenticationError("401"), "auth_error"), (ConfigurationError("no key"), "config_error")],
)
async def test_auth_and_config_errors_fail_over_immediately(error, reason):
    clock = FakeClock()
    first = FakeProvider("ses", [error])
    second = FakeProvider("sendgrid")
    slot = make_slot(first, clock)
    out = await run(clock, [slot, make_slot(second, clock)])
    assert (out.status, out.provider) == ("sent", "sendgrid")
    assert first.calls == 1 and clock.sleeps == []
    assert slot.breaker.metrics()["failures"] == 1
    first.script = [error]
    alone = await run(clock, [slot])
    assert (alone.status, alone.reason) == ("failed", reason)


async def test_rate_limited_waits_retry_after_and_pauses_the_bucket():
    clock = FakeClock()
    provider = FakeProvider("ses", [RateLimited("429", status=429, retry_after=3.0)])
    slot = make_slot(provider, clock, rate_per_s=10.0, burst=5.0, max_wait_s=5.0)
    start = clock()
    out = await run(clock, [slot])
    assert out.status == "sent" and len(out.attempts) == 2
    assert out.attempts[0].error_kind == "rate_limit"
    assert clock.sleeps[0] >= 3.0
    assert slot.bucket.paused_until == pytest.approx(start + 3.0)
    assert slot.breaker.metrics()["failures"] == 0  # slow down is not broken


async def test_rate_limited_slot_is_skipped_while_paused():
    clock = FakeClock()
    limited = FakeProvider("ses", [RateLimited("429", retry_after=60.0)])
    backup = FakeProvider("sendgrid")
    slots = [make_slot(limited, clock, max_attempts=1), make_slot(backup, clock)]
    assert (await run(clock, slots)).provider == "sendgrid"
    out = await run(clock, slots)
    assert out.provider == "sendgrid" and limited.calls == 1
    assert [a.provider for a in out.attempts] == ["sendgrid"]
    backup.script = [ProviderError("503")] * 3
    failed = await run(clock, slots)
    assert (failed.status, failed.reason) == ("failed", "provider_error")
    only_limited = await run(clock, slots[:1])
    assert (only_limited.status, only_limited.reason, only_limited.attempts) == ("failed", "rate_limited", [])


async def test_empty_bucket_beyond_max_wait_fails_over():
    clock = FakeClock()
    first = FakeProvider("ses")
    second = FakeProvider("sendgrid")
    slot = make_slot(first, clock, rate_per_s=0.1, burst=1.0, max_wait_s=2.0)
    slots = [slot, make_slot(second, clock)]
    assert (await run(clock, slots)).provider == "ses"
    assert (await run(clock, slots)).provider == "sendgrid"  # next token is 10 s away
    assert clock.sleeps == []


async def test_bucket_wait_within_max_wait_is_slept():
    clock = FakeClock()
    provider = FakeProvider("ses")
    slot = make_slot(provider, clock, rate_per_s=1.0, burst=1.0, max_wait_s=2.0)
    await run(clock, [slot])
    out = await run(clock, [slot])
    assert out.provider == "ses" and clock.sleeps == pytest.approx([1.0])


async def test_daily_limit_skips_the_slot():
    clock = FakeClock()
    first = FakeProvider("ses")
    second = FakeProvider("sendgrid")
    slots = [make_slot(first, clock, daily_limit=1), make_slot(second, clock)]
    assert (await run(clock, slots)).provider == "ses"
    assert (await run(clock, slots)).provider == "sendgrid"
    out = await run(clock, slots[:1])
    assert (out.status, out.reason, out.attempts) == ("failed", "daily_limit", [])


async def test_all_breakers_open_fails_circuit_open_without_attempts():
    clock = FakeClock()
    providers = [FakeProvider("ses"), FakeProvider("sendgrid")]
    slots = [make_slot(p, clock) for p in providers]
    for slot in slots:
        for _ in range(slot.breaker.failure_threshold):
            slot.breaker.record_failure()
    out = await run(clock, slots)
    assert (out.status, out.reason, out.attempts) == ("failed", "circuit_open", [])
    assert [p.calls for p in providers] == [0, 0]


async def test_no_slots_is_no_provider():
    clock = FakeClock()
    out = await run(clock, [])
    assert (out.status, out.reason, out.attempts, out.provider) == ("failed", "no_provider", [], None)


async def test_breaker_opens_across_calls_then_a_probe_closes_it():
    clock = FakeClock()
    provider = FakeProvider("ses", [ProviderError("503")] * 3)
    slot = make_slot(provider, clock, failure_threshold=3, recovery_s=30.0, max_attempts=2)

    first = await run(clock, [slot])
    assert (first.reason, len(first.attempts), slot.breaker.state) == ("provider_error", 2, "closed")
    second = await run(clock, [slot])  # third failure opens it; the retry is refused
    assert (second.reason, len(second.attempts), slot.breaker.state) == ("circuit_open", 1, "open")
    third = await run(clock, [slot])
    assert (third.reason, third.attempts) == ("circuit_open", [])
    assert provider.calls == 3

    clock.advance(30.0)
    probe = await run(clock, [slot])
    assert (probe.status, len(probe.attempts)) == ("sent", 1)
    assert slot.breaker.state == "closed"


async def test_failed_probe_reopens_the_breaker():
    clock = FakeClock()
    provider = FakeProvider("ses", [ProviderError("503")] * 2)
    slot = make_slot(provider, clock, failure_threshold=1, recovery_s=30.0)
    assert (await run(clock, [slot])).reason == "circuit_open"
    clock.advance(30.0)
    out = await run(clock, [slot])  # probe fails, retry refused
    assert (out.reason, len(out.attempts), slot.breaker.state) == ("circuit_open", 1, "open")
    clock.advance(30.0)
    assert (await run(clock, [slot])).status == "sent"


async def test_timeout_is_a_network_error():
    clock = FakeClock()
    provider = FakeProvider("ses", hang=True)
    slot = make_slot(provider, clock, timeout_s=0.01, max_attempts=1)
    out = await run(clock, [slot])
    assert (out.status, out.reason) == ("failed", "network_error")
    assert out.attempts[0].error == "timeout after 0.01s"
    assert out.attempts[0].error_kind == "network"
    assert slot.breaker.metrics()["failures"] == 1


async def test_unexpected_exception_is_a_system_error_and_logged_once(caplog):
    clock = FakeClock()
    broken = FakeProvider("ses", [RuntimeError("boom")] * 3)
    slot = make_slot(broken, clock)
    with caplog.at_level(logging.ERROR, logger="actors.delivery.deliver"):
        out = await run(clock, [slot])
    assert (out.status, out.reason) == ("failed", "system_error")
    assert [a.error_kind for a in out.attempts] == ["system"] * 3
    assert out.attempts[0].error == "RuntimeError: boom"
    assert clock.sleeps == pytest.approx([0.1, 0.2])  # retried like a provider error
    assert slot.breaker.metrics()["failures"] == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None


async def test_unexpected_exception_fails_over():
    clock = FakeClock()
    broken = FakeProvider("ses", [KeyError("x")] * 3)
    out = await run(clock, [make_slot(broken, clock), make_slot(FakeProvider("sendgrid"), clock)])
    assert (out.status, out.provider) == ("sent", "sendgrid")


async def test_cancelled_error_from_provider_propagates():
    clock = FakeClock()
    provider = FakeProvider("ses", [asyncio.CancelledError()])
    backup = FakeProvider("sendgrid")
    with pytest.raises(asyncio.CancelledError):
        await run(clock, [make_slot(provider, clock), make_slot(backup, clock)])
    assert backup.calls == 0


async def test_cancelling_delivery_propagates_and_keeps_the_probe():
    clock = FakeClock()
    provider = FakeProvider("ses", hang=True)
    slot = make_slot(provider, clock, failure_threshold=1, recovery_s=30.0)
    slot.breaker.record_failure()
    clock.advance(30.0)
    pending = asyncio.create_task(run(clock, [slot]))
    await provider.entered.wait()
    assert slot.breaker.state == "half_open"
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert slot.breaker.allow()  # the cancelled probe was given back


async def test_bulkhead_bounds_concurrent_calls():
    clock = FakeClock()
    provider = FakeProvider("ses")
    slot = make_slot(provider, clock, concurrency=2)
    outs = await asyncio.gather(*(run(clock, [slot], notification_id=f"n-{i}") for i in range(8)))
    assert all(o.status == "sent" for o in outs)
    assert provider.calls == 8 and provider.max_active == 2


async def test_retry_after_longer_than_max_wait_fails_over_without_sleeping():
    clock = FakeClock()
    limited = FakeProvider("sendgrid", [RateLimited("429", retry_after=3600.0)])
    backup = FakeProvider("smtp")
    slots = [make_slot(limited, clock, max_wait_s=2.0), make_slot(backup, clock)]
    out = await run(clock, slots)
    assert (out.status, out.provider) == ("sent", "smtp")
    assert clock.sleeps == [] and limited.calls == 1


def test_retry_after_that_is_not_a_finite_number_is_ignored_and_long_ones_capped():
    from providers.errors import MAX_RETRY_AFTER_S
    assert RateLimited("x", retry_after=float("inf")).retry_after is None
    assert RateLimited("x", retry_after=float("nan")).retry_after is None
    assert RateLimited("x", retry_after=1e12).retry_after == MAX_RETRY_AFTER_S
    assert RateLimited("x", retry_after=-5).retry_after == 0.0


async def test_a_task_past_its_life_is_suppressed_without_a_call():
    clock = FakeClock()
    provider = FakeProvider("ses")
    out = await run(clock, [make_slot(provider, clock), make_slot(FakeProvider("sendgrid"), clock)],
                    expires_at=clock.wall() - 1)
    assert (out.status, out.reason, out.attempts, out.provider) == ("suppressed", "ttl.expired", [], None)
    assert provider.calls == 0  # and no failover to the second provider either


async def test_a_task_whose_life_ends_while_it_waits_for_a_token_is_not_sent():
    clock = FakeClock()
    provider = FakeProvider("ses")
    slot = make_slot(provider, clock, rate_per_s=1.0, burst=1.0, max_wait_s=2.0)
    await run(clock, [slot])  # takes the only token
    out = await run(clock, [slot], notification_id="n-2", expires_at=clock.wall() + 0.5)  # the next is 1 s away
    assert (out.status, out.reason) == ("suppressed", "ttl.expired")
    assert clock.sleeps == pytest.approx([1.0]) and provider.calls == 1
    out = await run(clock, [slot], notification_id="n-3", expires_at=clock.wall() + 60)
    assert (out.status, out.reason) == ("sent", "ok")



async def test_a_batch_settles_its_tasks_past_their_life_apart_and_sends_the_rest():
    from routing_fakes import BatchProvider

    from actors.delivery import deliver_batch

    clock = FakeClock()
    provider = BatchProvider("inbox")
    live, dead = make_task(notification_id="n-live"), make_task(notification_id="n-dead",
                                                                  expires_at=clock.wall() - 1)
    outs = await deliver_batch([dead, live], [make_slot(provider, clock)], clock=clock, wall=clock.wall,
                               sleep=clock.sleep, rng=random.Random(0))
    assert [(o.notification_id, o.status, o.reason) for o in outs] == [  # in the tasks' order
        ("n-dead", "suppressed", "ttl.expired"), ("n-live", "sent", "ok")]
    assert provider.calls == 1
    only_dead = await deliver_batch([dead], [make_slot(provider, clock)], clock=clock, wall=clock.wall,
                                    sleep=clock.sleep, rng=random.Random(0))
    assert [(o.status, o.reason) for o in only_dead] == [("suppressed", "ttl.expired")] and provider.calls == 1
