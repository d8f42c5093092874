"""A UserShard's engagement state, held in its user cache (actors/user_cache.py): sends
and fed opens counted into a person's channel counts and the population's, fed opens
into their send-time profile, and all of it out of the population's when the person
leaves the cache."""

from __future__ import annotations

import asyncio

from actors.user_cache import ChannelCounts, Profiles, UserCache
from actors.user_shard import UserShard
from infra.config import Config
from policy import wire
from policy.decide import zone
from policy.rules import Policy
from policy.timing import profile_of
from policy.types import Outcome, UserState


def shard(max_users: int = 10) -> UserShard:
    us = UserShard.__new__(UserShard)  # only what the engagement paths use
    us.users = UserCache(max_users=max_users)
    us.users.dropped = us._engagement_dropped
    us.profiles, us.channel_stats = Profiles(us.users), ChannelCounts(us.users)
    us.population, us._counting, us._reading, us.stats = {}, {}, {}, {}
    us.policy = Policy(Config().preferences)
    us.clock = lambda: 1_000_000.0
    return us


def sent(user: str, channel: str) -> Outcome:
    return Outcome("n", user, channel, "c", "sent", "", 0.0, 0.0)


def test_sends_and_fed_opens_count_for_the_person_and_the_population_until_they_leave():
    us = shard(max_users=2)
    for uid in ("a", "b"):
        us.users[uid] = UserState(user_id=uid, addresses={"email": f"{uid}@x.test"})
    us._hold_stats("a", (999_000.0, {"email": (2, 0), "push": (1, 1)}))
    assert us.population == {"email": (2, 0), "push": (1, 1)}
    us._count_sends([sent("a", "email"), sent("b", "email"), sent("a", "email")])  # b's counts are not held
    assert us.channel_stats["a"][1] == {"email": (4, 0), "push": (1, 1)}
    assert us.population == {"email": (4, 0), "push": (1, 1)}
    events = [wire.Engaged("a", 999_500.0, 999_500.0, "email"),  # after the read: counted
              wire.Engaged("a", 998_000.0, 998_500.0, "email"),  # recorded before the read: the read saw it
              wire.Engaged("a", 999_600.0, 999_600.0, "push"),  # as many reads as sends already
              wire.Engaged("b", 999_600.0, 999_600.0, "email")]  # not held
    asyncio.run(us.engaged(wire.encode(events)))
    assert us.channel_stats["a"][1] == {"email": (4, 1), "push": (1, 1)}
    assert us.population == {"email": (4, 1), "push": (1, 1)}
    us.users["c"] = UserState(user_id="c")  # the cache is full: someone goes, and with a, its counts
    us.users["d"] = UserState(user_id="d")
    assert "a" not in us.users and us.population == {"email": (0, 0), "push": (0, 0)}
    assert len(us.channel_stats) == 0


def test_fed_opens_move_a_held_profile_in_its_own_zone():
    us = shard()
    us.users["a"] = UserState(user_id="a", timezone="Asia/Tokyo")
    tz = zone("Europe/Berlin")  # read while the person was in Berlin
    assert us.profiles.put("a", 999_000.0, profile_of([], tz), tz.key)
    at = 999_000.0 + 3600.0
    counted = asyncio.run(us.engaged(wire.encode([wire.Engaged("a", at, at), wire.Engaged("a", at, 998_000.0)])))
    held = us.profiles["a"]
    assert counted == 1 and held[2] == "Europe/Berlin" and held[1] == profile_of([at], tz)
    assert us.channel_stats.get("a") is None  # the other half is not made up


class FakePool:
    """``pool.acquire()`` for the engagement reads, which the test stands in for."""

    def acquire(self):
        return self

    async def __aenter__(self):
        return None

    async def __aexit__(self, *exc):
        return False


def test_what_a_round_read_for_someone_the_cache_let_go_is_decided_on(monkeypatch):
    from actors import user_shard
    from policy.plan import Item
    from policy.types import NotificationRequest

    us = shard(max_users=1)
    us.pool = FakePool()
    us.users["kept"] = UserState(user_id="kept")
    gone = UserState(user_id="gone", timezone="UTC")  # in the round's states (Pinned), not in the cache
    at = 1_000_000.0 - 7200

    async def times(conn, users, since):
        return {u: [at] for u in users}

    async def channel_counts(conn, users, since):
        return {u: {"email": (5, 4)} for u in users}

    monkeypatch.setattr(user_shard.engagement_store, "times", times)
    monkeypatch.setattr(user_shard.engagement_store, "channel_counts", channel_counts)
    items = [Item(f"n-{u}", u, NotificationRequest(user_id=u, category="c", channels=["email", "sms"],
                                                   deliver="optimal", deliver_by=1_000_000.0 + 86_400,
                                                   channel_strategy="best")) for u in ("kept", "gone")]
    profiles = asyncio.run(us._read_profiles(items, {"kept": us.users["kept"], "gone": gone}))
    counts = asyncio.run(us._read_channel_stats(items))
    assert set(profiles) == set(counts) == {"kept", "gone"}  # both decided on this round
    assert profiles["gone"] == (1_000_000.0, profile_of([at], zone("UTC")), "UTC")
    assert counts["gone"] == (1_000_000.0, {"email": (5, 4)})
    assert "gone" not in us.profiles and "kept" in us.profiles  # only the one held is kept
    assert us.population == {"email": (5, 4)}  # the population counts only who is held
