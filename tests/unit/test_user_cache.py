"""The UserShard's bounded user cache: a population larger than the bound, the
least recently used out, and a load that raced a write never puts back the
older state."""

from __future__ import annotations

import msgspec

from actors.user_cache import Pinned, UserCache
from policy.prefs import Preference
from policy.types import UserState


def state(uid: str, version: int = 0) -> UserState:
    return UserState(user_id=uid, addresses={"email": f"{uid}@example.test"}, version=version,
                     timezone="Europe/Berlin" if version % 2 else "UTC",
                     prefs=(Preference(channel="email", category="marketing", enabled=False),) if version else ())


def test_a_population_larger_than_the_bound_keeps_the_bound_and_the_latest_users():
    cache = UserCache(max_users=100)
    for i in range(1000):
        cache[f"u{i}"] = state(f"u{i}", i)
    assert len(cache) == 100 and cache.evicted == 900
    assert set(cache) == {f"u{i}" for i in range(900, 1000)}
    assert cache["u950"] == state("u950", 950)  # packed and unpacked intact, time zone included


def test_clock_keeps_the_users_in_use():
    cache = UserCache(max_users=3)
    for uid in ("a", "b", "c"):
        cache[uid] = state(uid)
    cache["d"] = state("d")  # every one used since it came: the pass spares each once, then the oldest goes
    assert set(cache) == {"b", "c", "d"}
    assert cache.get("b") is not None  # used since the pass last came by: spared
    cache["e"] = state("e")
    assert set(cache) == {"b", "d", "e"}
    cache["d"] = state("d", 1)  # a write is a use too
    cache["f"] = state("f")
    assert "b" not in cache and set(cache) == {"d", "e", "f"}
    assert cache.evicted == 3 and cache["d"].version == 1


def test_an_engagement_lives_and_leaves_with_its_user():
    from actors.user_cache import Engagement
    dropped = []
    cache = UserCache(max_users=2)
    cache.dropped = lambda uid, eng: dropped.append((uid, eng))
    assert not cache.set_engagement("a", Engagement(stats_at=1.0))  # not held: not kept
    cache["a"] = state("a", 1)
    eng = Engagement(profile_at=5.5, profile=bytes(range(24)), zone="Asia/Tokyo", stats_at=6.0,
                     stats={"email": (12, 3), "push": (2**40, 7)})
    assert cache.set_engagement("a", eng) and cache.engagement("a") == eng
    assert (cache.profiles_held, cache.stats_held) == (1, 1)
    cache["a"] = state("a", 3)  # a write keeps it
    assert cache.engagement("a") == eng and cache["a"] == state("a", 3)
    cache.set_engagement("a", Engagement(profile_at=7.0001, profile=bytes(24)))
    held = cache.engagement("a")  # read times to the millisecond, rounded up: events before are not counted again
    assert held.profile_at == 7.001 and held.stats_at is None and held.stats == {}
    assert (cache.profiles_held, cache.stats_held) == (1, 0)
    cache["b"], cache["c"] = state("b"), state("c")  # a goes, its engagement told of
    assert "a" not in cache and dropped == [("a", Engagement(profile_at=7.001, profile=bytes(24)))]
    assert (cache.profiles_held, cache.stats_held) == (0, 0)
    many = Engagement(stats_at=1.0, stats={f"channel-{i:03d}": (2**50, 2**50) for i in range(20)})
    cache.set_engagement("c", Engagement(stats_at=0.5, stats={"sms": (2, 0)}))
    assert not cache.set_engagement("c", many) and cache.engagement("c") is None  # too big to hold: read again
    assert cache["c"] == state("c") and cache.stats_held == 0
    assert dropped[-1] == ("c", Engagement(stats_at=0.5, stats={"sms": (2, 0)}))  # what it held was let go
    cache.set_engagement("c", Engagement(stats_at=2.0, stats={"sms": (1, 1)}))
    cache.pop("c")
    assert dropped[-1] == ("c", Engagement(stats_at=2.0, stats={"sms": (1, 1)})) and cache.stats_held == 0
    cache.set_engagement("b", Engagement(stats_at=3.0))
    cache.set_engagement("b", None)
    assert cache.engagement("b") is None and cache.stats_held == 0 and cache["b"] == state("b")


def test_warm_start_records_count_against_the_bound():
    from stores.state import to_stored
    cache = UserCache(max_users=10)
    for i in range(25):
        cache.put_stored(f"w{i}", to_stored(state(f"w{i}", 1)))
    assert len(cache) == 10 and cache.get("w24").prefs == state("w24", 1).prefs


def test_a_load_that_raced_a_write_does_not_put_back_the_older_state():
    cache = UserCache(max_users=2)
    token = cache.begin_load()  # a read of u1 starts...
    cache["u1"] = state("u1", 7)  # ...a write of u1 commits meanwhile...
    cache["x"], cache["y"] = state("x"), state("y")  # ...and is evicted before the read ends
    assert "u1" not in cache
    cache.add_loaded(token, {"u1": state("u1", 6), "u2": state("u2", 1)})
    assert "u1" not in cache  # its next use reads it again, never the stale version 6
    assert cache["u2"].version == 1
    assert not cache._written and not cache._loads  # nothing left behind once no load is in flight


def test_a_load_after_the_write_is_held():
    cache = UserCache(max_users=5)
    cache["u1"] = state("u1", 7)
    cache.pop("u1")
    token = cache.begin_load()
    cache.add_loaded(token, {"u1": state("u1", 8)})
    assert cache["u1"].version == 8


def test_pinned_states_survive_eviction_and_prefer_the_cache():
    cache = UserCache(max_users=2)
    loaded = {f"p{i}": state(f"p{i}", 1) for i in range(5)}
    token = cache.begin_load()
    cache.add_loaded(token, loaded)
    assert len(cache) == 2  # the bound holds while the call still needs all five
    pinned = Pinned(cache, {}, loaded, [*loaded, "nobody"])
    assert all(pinned.get(uid) == loaded[uid] for uid in loaded) and pinned.get("nobody") is None
    assert len(pinned) == 5 and "nobody" not in pinned
    cache["p0"] = state("p0", 3)  # a write-through is newer than what the call read
    assert pinned["p0"].version == 3


def test_unbounded_without_a_limit():
    cache = UserCache()
    for i in range(500):
        cache[f"u{i}"] = state(f"u{i}")
    assert len(cache) == 500 and cache.evicted == 0


def test_pinned_keeps_the_users_held_when_the_call_began_through_its_own_loads():
    cache = UserCache(max_users=3)
    for uid in ("h0", "h1", "h2"):
        cache[uid] = state(uid, 2)
    ids = ["h0", "h1", "h2", "n0", "n1", "n2"]
    held = cache.held(ids)  # as the shard does: first, then it loads the others...
    token = cache.begin_load()
    loaded = {uid: state(uid, 1) for uid in ids if uid not in held}
    cache.add_loaded(token, loaded)  # ...which evicts the three it had
    assert not {"h0", "h1", "h2"} & set(cache)
    pinned = Pinned(cache, held, loaded, ids)
    assert [pinned[uid].version for uid in ids] == [2, 2, 2, 1, 1, 1] and len(pinned) == 6


def test_a_warm_start_beside_writes_keeps_what_was_written_or_held():
    from stores.state import to_stored
    cache = UserCache(max_users=10)
    cache["held"] = state("held", 9)  # read before the warm start began
    token = cache.begin_load()
    sink = cache.loading(token)
    cache["written"] = state("written", 5)  # committed while the scan ran...
    cache.pop("written")  # ...and evicted again before the scan reached it
    sink.put_stored("held", to_stored(state("held", 3)))
    sink.put_stored("written", to_stored(state("written", 4)))
    sink.put_stored("fresh", to_stored(state("fresh", 2)), {"email": "bounce"})
    sink.update({"assembled": state("assembled", 1), "held": state("held", 1)})
    cache.end_load(token)
    assert cache["held"].version == 9 and "written" not in cache
    # held whole at once: the suppressed address is there as soon as the user is
    assert cache["fresh"].version == 2 and cache["fresh"].suppressed == {"email": "bounce"}
    assert cache["assembled"].version == 1
    assert not cache._written and not cache._loads


def test_a_warm_start_puts_back_nothing_for_a_user_written_after_it_began():
    from stores.state import to_stored
    cache = UserCache(max_users=10)
    token = cache.begin_load()
    sink = cache.loading(token)
    cache["u"] = state("u", 2)  # a write before the scan reaches u...
    cache.pop("u")  # ...evicted since
    sink.put_stored("u", to_stored(state("u", 1)))
    sink.update({"u": state("u", 1)})
    cache.end_load(token)
    assert "u" not in cache  # read again when needed, never the scan's older copy


def test_keys_come_back_as_they_went_in():
    from actors.user_cache import _id, _key
    for uid in ("u1", "ü-ñ", "\udc80x", "日本"):
        assert _id(_key(uid)) == uid


def test_sparse_profiles_come_back_dense():
    from hypothesis import given, strategies as st

    from actors.user_cache import _dense, _sparse

    @given(st.binary(min_size=24, max_size=24))
    def check(profile):
        held = _sparse(profile)
        assert len(held) <= 24 and _dense(held) == profile

    check()


def test_any_mix_of_uses_keeps_the_bound_the_states_and_the_engagement_counts():
    """A model of what the cache must hold, against it under random operations: every
    user held has its latest state and engagement, the bound holds, the counts of
    engagements held are right, and each engagement that left was told of once."""
    from hypothesis import given, settings, strategies as st

    from actors.user_cache import Engagement

    users = st.sampled_from([f"u{i}" for i in range(4)] + ["ü-ñ"])
    engagements = st.one_of(st.none(), st.builds(
        Engagement, profile_at=st.one_of(st.none(), st.integers(0, 10**6).map(lambda n: n / 1000)),
        profile=st.binary(min_size=24, max_size=24), zone=st.sampled_from(["UTC", "Europe/Berlin"]),
        stats_at=st.one_of(st.none(), st.integers(0, 10**6).map(lambda n: n / 1000)),
        stats=st.dictionaries(st.sampled_from(["email", "sms", "push"]), st.tuples(st.integers(0, 2**40),
                                                                                   st.integers(0, 2**40)))))
    ops = st.lists(st.one_of(st.tuples(st.just("write"), users, st.integers(0, 5)), st.tuples(st.just("read"), users),
                             st.tuples(st.just("engage"), users, engagements), st.tuples(st.just("pop"), users)),
                   min_size=10, max_size=60)

    @settings(max_examples=300, deadline=None)
    @given(st.integers(1, 3), ops)
    def check(bound, ops):
        cache = UserCache(max_users=bound)
        gone: list[tuple[str, Engagement]] = []
        cache.dropped = lambda uid, eng: gone.append((uid, eng))
        model: dict[str, tuple[UserState, Engagement | None]] = {}
        for op in ops:
            if op[0] == "write":
                cache[op[1]] = state(op[1], op[2])
                model[op[1]] = (state(op[1], op[2]), model.get(op[1], (None, None))[1])
            elif op[0] == "read":
                assert cache.get(op[1]) == (model[op[1]][0] if op[1] in cache else None)
            elif op[0] == "engage":
                eng = op[2]
                if eng is not None and eng.profile_at is None:
                    eng = msgspec.structs.replace(eng, profile=b"")
                if eng is not None and eng.stats_at is None:
                    eng = msgspec.structs.replace(eng, stats={})
                if eng is not None and eng.profile_at is None and eng.stats_at is None:
                    eng = None
                assert cache.set_engagement(op[1], eng) == (op[1] in cache)
                if op[1] in cache:
                    model[op[1]] = (model[op[1]][0], eng)
            else:
                cache.pop(op[1])
            for uid in list(model):  # evicted or popped: its engagement was told of, once
                if uid not in cache:
                    left = model.pop(uid)[1]
                    if left is not None:
                        gone.remove((uid, left))
            assert not gone and len(cache) <= bound and set(cache) == set(model)
            for uid, (_, eng) in model.items():
                assert cache.engagement(uid) == eng
            assert cache.profiles_held == sum(1 for _, e in model.values() if e and e.profile_at is not None)
            assert cache.stats_held == sum(1 for _, e in model.values() if e and e.stats_at is not None)

    check()


def test_a_read_time_comes_back_at_most_a_millisecond_later_and_stays_there():
    from hypothesis import given, strategies as st

    cache = UserCache()

    @given(st.one_of(st.floats(min_value=1.6e9, max_value=2.2e9), st.floats(min_value=0, max_value=1e6),
                     st.integers(1_600_000_000_000, 2_200_000_000_000).map(lambda ms: ms / 1000)))
    def check(at):
        back = cache._time(cache._ms(at))
        assert at - 1e-6 <= back < at + 0.001 + 1e-6 and cache._ms(back) == cache._ms(at)

    check()
