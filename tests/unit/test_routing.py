"""Routing strategies: the order each gives, and deliver() failing over along it,
on a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import msgspec
import pytest
from fakes import FakeClock, FakeProvider, make_slot, make_task
from routing_fakes import BatchProvider, ConfigProvider, RecordingRouter, TimedProvider, channel, routed

from actors.channel_shard import ChannelShard, build_router
from actors.delivery import deliver_batch
from actors.delivery.routing import (
    ROUTERS,
    HealthRouter,
    PriorityRouter,
    RoundRobinRouter,
    Router,
    WeightedRouter,
    make_router,
)
from actors.delivery.routing.health import BUCKETS, Window
from infra.config import ChannelConfig, ConfigError, ProviderConfig, convert
from policy import wire
from policy.types import DeliveryTask, Outcome
from providers import registry
from providers.errors import InvalidMessage, NetworkError, ProviderError, RateLimited

TASK = make_task()


def names(slots) -> list[str]:
    return [s.name for s in slots]


def three(clock: FakeClock, priorities=(0, 1, 2)):
    return [make_slot(FakeProvider(n), clock, priority=p) for n, p in zip("abc", priorities, strict=True)]


# -- priority ---------------------------------------------------------------------

def test_priority_orders_by_priority_then_config_order():
    clock = FakeClock()
    slots = [make_slot(FakeProvider(n), clock, priority=p) for n, p in [("x", 2), ("a", 1), ("b", 1), ("y", 0)]]
    router = make_router("priority", slots, random.Random(0), clock)
    assert isinstance(router, PriorityRouter)
    for _ in range(3):
        assert names(router.order(slots, TASK)) == ["y", "a", "b", "x"]
    assert router.order([], TASK) == []


def test_make_router_names_every_strategy_and_refuses_others():
    clock = FakeClock()
    kinds = {name: type(make_router(name, three(clock), random.Random(0), clock)) for name in ROUTERS}
    assert kinds == {"priority": PriorityRouter, "round_robin": RoundRobinRouter,
                     "weighted": WeightedRouter, "health": HealthRouter}
    assert all(issubclass(k, Router) and k.name == n for n, k in kinds.items())
    with pytest.raises(ValueError, match="unknown routing 'random'"):
        make_router("random", [], random.Random(0), clock)


# -- round robin ------------------------------------------------------------------

def test_round_robin_rotates_the_first_slot_and_keeps_priority_for_the_rest():
    clock = FakeClock()
    slots = three(clock, priorities=(2, 0, 1))  # a=2, b=0, c=1: priority order b, c, a
    router = make_router("round_robin", slots, random.Random(0), clock)
    orders = [names(router.order(slots, TASK)) for _ in range(4)]
    assert orders == [["b", "c", "a"], ["c", "b", "a"], ["a", "b", "c"], ["b", "c", "a"]]
    assert router.order([], TASK) == []


async def test_round_robin_spreads_sends_and_fails_over_in_priority_order():
    clock = FakeClock()
    providers = [FakeProvider(n) for n in "abc"]
    slots = channel(clock, *providers, max_attempts=1)
    router = RoundRobinRouter(slots, rng=random.Random(0), clock=clock)
    assert [(await routed(clock, slots, router)).provider for _ in range(6)] == list("abcabc")
    providers[1].script = [ProviderError("503")]
    assert (await routed(clock, slots, router)).provider == "a"
    out = await routed(clock, slots, router)  # starts at b, which fails: a is next by priority
    assert (out.status, out.provider, [a.provider for a in out.attempts]) == ("sent", "a", ["b", "a"])


async def test_round_robin_skips_a_start_slot_whose_breaker_is_open():
    clock = FakeClock()
    providers = [FakeProvider(n) for n in "ab"]
    slots = channel(clock, *providers, failure_threshold=1)
    slots[1].breaker.record_failure()
    router = RoundRobinRouter(slots, rng=random.Random(0), clock=clock)
    outs = [await routed(clock, slots, router) for _ in range(4)]
    assert [o.provider for o in outs] == ["a"] * 4
    assert providers[1].calls == 0 and all(len(o.attempts) == 1 for o in outs)


# -- weighted ---------------------------------------------------------------------

def test_weighted_first_choice_matches_the_weights():
    clock = FakeClock()
    slots = three(clock)
    router = make_router("weighted", slots, random.Random(7), clock,
                         weights={slots[0]: 3.0, slots[1]: 1.0, slots[2]: 0.0})
    draws = 20_000
    orders = Counter(tuple(names(router.order(slots, TASK))) for _ in range(draws))
    assert set(orders) == {("a", "b", "c"), ("b", "a", "c")}  # c (weight 0) never first
    assert orders["a", "b", "c"] / draws == pytest.approx(0.75, abs=0.015)
    assert orders["b", "a", "c"] / draws == pytest.approx(0.25, abs=0.015)


def test_weighted_default_weight_is_one_and_a_seeded_rng_repeats():
    clock = FakeClock()
    slots = three(clock)
    runs = []
    for _ in range(2):
        router = WeightedRouter(slots, rng=random.Random(42), clock=clock, weights={})
        runs.append([names(router.order(slots, TASK))[0] for _ in range(3000)])
    assert runs[0] == runs[1]
    shares = Counter(runs[0])
    assert all(shares[n] / 3000 == pytest.approx(1 / 3, abs=0.03) for n in "abc")


def test_weighted_all_zero_is_priority_order_and_bad_weights_are_refused():
    clock = FakeClock()
    slots = three(clock, priorities=(1, 0, 2))
    router = WeightedRouter(slots, rng=random.Random(0), clock=clock, weights={s: 0.0 for s in slots})
    assert {tuple(names(router.order(slots, TASK))) for _ in range(50)} == {("b", "a", "c")}
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="'a': weight must be a finite number"):
            WeightedRouter(slots, rng=random.Random(0), clock=clock, weights={slots[0]: bad})


async def test_weighted_zero_weight_slot_only_takes_over_on_failure():
    clock = FakeClock()
    standby, main = FakeProvider("standby"), FakeProvider("main")
    slots = channel(clock, standby, main, max_attempts=1)  # standby has the better priority
    router = WeightedRouter(slots, rng=random.Random(3), clock=clock, weights={slots[0]: 0.0})
    assert {(await routed(clock, slots, router)).provider for _ in range(20)} == {"main"}
    main.script = [NetworkError("down")]
    out = await routed(clock, slots, router)
    assert (out.provider, [a.provider for a in out.attempts]) == ("standby", ["main", "standby"])


# -- health -----------------------------------------------------------------------

def feed(router: HealthRouter, slot, n: int, *, err=None, seconds: float = 0.01) -> None:
    for _ in range(n):
        router.record(slot, err, seconds)


def test_health_without_enough_samples_keeps_priority():
    clock = FakeClock()
    slots = three(clock)
    router = HealthRouter(slots, rng=random.Random(0), clock=clock, min_samples=5)
    assert names(router.order(slots, TASK)) == ["a", "b", "c"]
    feed(router, slots[0], 4, err=NetworkError("down"))  # 4 failures: too few to judge
    feed(router, slots[1], 10, seconds=0.001)
    assert names(router.order(slots, TASK)) == ["a", "b", "c"]


def test_health_puts_a_failing_slot_last_within_the_window_and_restores_it_after():
    clock = FakeClock()
    slots = three(clock)
    router = HealthRouter(slots, rng=random.Random(0), clock=clock, window_s=60.0, max_error_rate=0.5)
    feed(router, slots[0], 3)
    feed(router, slots[0], 4, err=ProviderError("503"))  # 4/7 errors > 0.5
    feed(router, slots[1], 10)
    assert router.scores(slots)[slots[0]][0] == pytest.approx(4 / 7)
    assert names(router.order(slots, TASK)) == ["b", "c", "a"]
    clock.advance(50.0)
    assert names(router.order(slots, TASK)) == ["b", "c", "a"]  # still within the window
    clock.advance(10.0)
    assert names(router.order(slots, TASK)) == ["a", "b", "c"]  # the window passed
    assert router.scores(slots)[slots[0]] is None


def test_health_error_rate_at_the_threshold_is_not_last():
    clock = FakeClock()
    slots = three(clock)
    router = HealthRouter(slots, rng=random.Random(0), clock=clock, max_error_rate=0.5)
    feed(router, slots[0], 5)
    feed(router, slots[0], 5, err=ProviderError("503"))  # exactly 0.5: 2x the time per success
    feed(router, slots[2], 10)
    # a is one tier down, not last; b has no samples, so it keeps its priority in the first tier
    assert names(router.order(slots, TASK)) == ["b", "c", "a"]
    feed(router, slots[0], 1, err=ProviderError("503"))  # 6/11 > 0.5: now last
    feed(router, slots[1], 5, seconds=0.015)  # 1.5x c: same tier, priority decides
    assert names(router.order(slots, TASK)) == ["b", "c", "a"]
    feed(router, slots[1], 5, err=NetworkError("down"), seconds=0.015)  # 0.03 s per success: 3x c
    assert names(router.order(slots, TASK)) == ["c", "b", "a"]


def test_health_demotes_a_slow_slot_and_restores_it_after_the_window():
    clock = FakeClock()
    slots = three(clock)
    router = HealthRouter(slots, rng=random.Random(0), clock=clock, window_s=30.0)
    feed(router, slots[0], 5, seconds=0.8)
    feed(router, slots[1], 5, seconds=0.1)
    feed(router, slots[2], 5, seconds=0.15)  # within 2x of b: same tier, priority decides
    assert names(router.order(slots, TASK)) == ["b", "c", "a"]
    clock.advance(15.0)
    feed(router, slots[0], 5, seconds=0.1)  # a recovers, but the slow calls still weigh: 0.45 s mean
    assert names(router.order(slots, TASK)) == ["b", "c", "a"]
    clock.advance(16.0)  # the slow calls leave the window; the fast ones stay
    assert names(router.order(slots, TASK)) == ["a", "b", "c"]


def test_health_similar_latencies_keep_priority():
    clock = FakeClock()
    slots = three(clock)
    router = HealthRouter(slots, rng=random.Random(0), clock=clock)
    for slot, seconds in zip(slots, (0.19, 0.1, 0.12), strict=True):
        feed(router, slot, 10, seconds=seconds)
    assert names(router.order(slots, TASK)) == ["a", "b", "c"]


def test_health_invalid_messages_are_calls_not_errors():
    clock = FakeClock()
    slots = three(clock)
    router = HealthRouter(slots, rng=random.Random(0), clock=clock, max_error_rate=0.0)
    feed(router, slots[0], 10, err=InvalidMessage("bad address"))
    feed(router, slots[1], 10, err=RateLimited("429"))
    scores = router.scores(slots[:2])
    assert scores[slots[0]] == pytest.approx((0.0, 0.01)) and scores[slots[1]] == (1.0, float("inf"))
    assert names(router.order(slots, TASK)) == ["a", "c", "b"]


def test_health_window_of_zero_remembers_nothing():
    clock = FakeClock()
    slots = three(clock)
    router = HealthRouter(slots, rng=random.Random(0), clock=clock, window_s=0.0)
    feed(router, slots[0], 20, err=NetworkError("down"))
    assert names(router.order(slots, TASK)) == ["a", "b", "c"]


def test_health_window_totals_match_a_full_recount():
    rng = random.Random(5)
    window = Window(10.0)
    width = 10.0 / BUCKETS
    now, calls = 100.0, []
    for _ in range(3000):
        now += rng.choice((0.0, 0.01, 0.2, 1.0, 4.0, 25.0))
        error, seconds = rng.random() < 0.3, rng.random()
        window.add(now, error, seconds)
        calls.append((int(now // width), error, seconds))
        live = [c for c in calls if int(now // width) - c[0] < BUCKETS]
        got = window.totals(now)
        assert got[:2] == (len(live), sum(c[1] for c in live))
        assert got[2] == pytest.approx(sum(c[2] for c in live), abs=1e-6)


async def test_health_learns_from_deliver_and_stops_trying_a_failing_provider():
    clock = FakeClock()
    flaky, backup = FakeProvider("flaky", [NetworkError("down")] * 5), FakeProvider("backup")
    slots = channel(clock, flaky, backup, max_attempts=1, failure_threshold=100)
    router = HealthRouter(slots, rng=random.Random(0), clock=clock, window_s=60.0, min_samples=5)
    for _ in range(5):
        out = await routed(clock, slots, router)
        assert [a.provider for a in out.attempts] == ["flaky", "backup"]
    out = await routed(clock, slots, router)  # flaky is 5/5 errors: tried last, so not at all
    assert [a.provider for a in out.attempts] == ["backup"] and flaky.calls == 5
    clock.advance(60.0)
    out = await routed(clock, slots, router)  # the window passed: priority again, and flaky is back
    assert (out.provider, [a.provider for a in out.attempts]) == ("flaky", ["flaky"])


async def test_health_learns_latency_from_deliver():
    clock = FakeClock()
    slow = TimedProvider("slow", clock, latency=1.0)
    fast = TimedProvider("fast", clock, latency=0.05)
    slots = channel(clock, slow, fast)
    router = HealthRouter(slots, rng=random.Random(0), clock=clock, window_s=600.0, min_samples=3)
    fast_router = RoundRobinRouter(slots, rng=random.Random(0), clock=clock)
    for _ in range(6):  # both get samples (round robin), and health hears of them
        out = await routed(clock, slots, fast_router)
        router.record(next(s for s in slots if s.name == out.provider), None, out.attempts[0].duration_ms / 1000)
    assert [(await routed(clock, slots, router)).provider for _ in range(3)] == ["fast"] * 3
    assert router.scores(slots)[slots[0]][1] == pytest.approx(1.0)


# -- deliver() with a router ------------------------------------------------------

async def test_deliver_reports_every_call_to_the_router():
    clock = FakeClock()
    first = TimedProvider("ses", clock, 0.25, [ProviderError("503"), NetworkError("reset"), ProviderError("x")])
    second = TimedProvider("sendgrid", clock, 0.5)
    slots = channel(clock, first, second)
    router = RecordingRouter(slots, clock)
    out = await routed(clock, slots, router)
    assert (out.status, out.provider) == ("sent", "sendgrid")
    assert router.orders == 1
    assert router.records == [("ses", "provider", 0.25), ("ses", "network", 0.25), ("ses", "provider", 0.25),
                              ("sendgrid", None, 0.5)]
    assert [a.duration_ms for a in out.attempts] == [250.0, 250.0, 250.0, 500.0]


async def test_refusals_before_a_call_are_not_reported():
    clock = FakeClock()
    slots = channel(clock, FakeProvider("a"), FakeProvider("b"), FakeProvider("c"), daily_limit=1,
                    failure_threshold=1)
    slots[0].breaker.record_failure()
    await routed(clock, slots[1:], None)  # spends b's daily limit
    router = RecordingRouter(slots, clock)
    out = await routed(clock, slots, router)
    assert out.provider == "c" and router.records == [("c", None, 0.0)]


async def test_without_a_router_slots_go_in_the_order_given():
    clock = FakeClock()
    slots = channel(clock, FakeProvider("a"), FakeProvider("b"))
    assert (await routed(clock, slots[::-1], None)).provider == "b"
    assert (await routed(clock, slots[::-1], PriorityRouter(slots, rng=random.Random(0), clock=clock))).provider == "a"


async def test_a_failing_router_does_not_fail_the_delivery(caplog):
    class Broken(Router):
        def order(self, slots, task):
            raise RuntimeError("order bug")

        def record(self, slot, err, duration_s):
            raise RuntimeError("record bug")

    clock = FakeClock()
    slots = channel(clock, FakeProvider("a"), FakeProvider("b"))
    out = await routed(clock, slots, Broken(slots, rng=random.Random(0), clock=clock))
    assert (out.status, out.provider) == ("sent", "a")
    assert {r.getMessage().split(";")[0] for r in caplog.records} >= {"router Broken failed"}
    assert any("failed to record" in r.getMessage() for r in caplog.records)


async def test_deliver_batch_orders_once_and_reports_each_call_once():
    clock = FakeClock()
    first, second = BatchProvider("a", [NetworkError("down")]), BatchProvider("b")
    slots = channel(clock, first, second, max_attempts=1)
    router = RecordingRouter(slots, clock)
    tasks = [make_task(notification_id=f"n{i}", address=f"u{i}@x.test") for i in range(3)]
    outs = await deliver_batch(tasks, slots, clock=clock, wall=clock.wall, sleep=clock.sleep,
                               rng=random.Random(0), router=router)
    assert {(o.status, o.provider) for o in outs} == {("sent", "b")}
    assert router.orders == 1 and [r[:2] for r in router.records] == [("a", "network"), ("b", None)]


async def test_concurrent_deliveries_share_one_round_robin():
    clock = FakeClock()
    providers = [FakeProvider(n) for n in "ab"]
    slots = channel(clock, *providers)
    router = RoundRobinRouter(slots, rng=random.Random(0), clock=clock)
    outs = await asyncio.gather(*(routed(clock, slots, router, notification_id=f"n{i}") for i in range(10)))
    assert Counter(o.provider for o in outs) == {"a": 5, "b": 5}


# -- config and ChannelShard ------------------------------------------------------

def test_config_fields_defaults_and_bounds():
    ch = ChannelConfig()
    assert (ch.routing, ch.health_window_s, ch.health_max_error_rate) == ("priority", 60.0, 0.5)
    assert ProviderConfig(name="p", type="smtp").weight == 1.0
    ok = convert({"channels": {"email": {"routing": "health", "health_window_s": 5, "health_max_error_rate": 1,
                                         "providers": [{"name": "p", "type": "smtp", "weight": 0}]}}})
    email = ok.channels["email"]
    assert (email.routing, email.health_window_s, email.health_max_error_rate) == ("health", 5.0, 1.0)
    assert email.providers[0].weight == 0.0
    for bad in ({"routing": "random"}, {"health_max_error_rate": 1.5}, {"health_max_error_rate": -0.1},
                {"health_window_s": -1}, {"providers": [{"name": "p", "type": "smtp", "weight": -1}]}):
        with pytest.raises(ConfigError):
            convert({"channels": {"email": bad}})


def test_build_router_from_channel_config():
    clock = FakeClock()
    providers = [ProviderConfig(name=n, type="x", priority=i, weight=w) for i, (n, w) in enumerate([("a", 0), ("b", 2)])]
    slots = [make_slot(FakeProvider(p.name), clock, priority=p.priority) for p in providers]
    weighted = build_router(ChannelConfig(routing="weighted", providers=providers), providers, slots,
                            random.Random(0), clock)
    assert isinstance(weighted, WeightedRouter) and weighted.weights == {slots[0]: 0.0, slots[1]: 2.0}
    health = build_router(ChannelConfig(routing="health", health_window_s=9.0, health_max_error_rate=0.2),
                          providers, slots, random.Random(0), clock)
    assert isinstance(health, HealthRouter) and (health.window_s, health.max_error_rate) == (9.0, 0.2)
    assert type(build_router(ChannelConfig(), providers, slots, random.Random(0), clock)) is PriorityRouter


@pytest.fixture
def config_provider():
    registry.register("routing-fake", "routing_fakes:ConfigProvider")
    ConfigProvider.sent.clear()
    yield
    registry.PROVIDER_TYPES.pop("routing-fake", None)


async def test_channel_shard_routes_with_its_configured_router(config_provider):
    cfg = ChannelConfig(routing="round_robin", providers=[
        ProviderConfig(name="second", type="routing-fake", priority=2),
        ProviderConfig(name="off", type="routing-fake", priority=0, enabled=False),
        ProviderConfig(name="first", type="routing-fake", priority=1),
    ])
    shard = ChannelShard("email", msgspec.msgpack.encode(cfg))
    try:
        for i in range(4):
            task = DeliveryTask(f"n{i}", "u", "email", "billing", "u@x.test", TASK.content)
            [out] = wire.decode(await shard.deliver(wire.encode([task])), list[Outcome])
            assert out.status == "sent"
        assert ConfigProvider.sent == ["first", "second", "first", "second"]
        assert isinstance(shard.router, RoundRobinRouter)
        assert (await shard.health())["routing"] == "round_robin"
    finally:
        await shard.close()
