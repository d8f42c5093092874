"""engine/engaged.py: engagement events batched to the owning UserShards, and
policy.timing.add_event, which the shards count them with."""

import asyncio
import uuid
from zoneinfo import ZoneInfo

import msgspec

from engine import engaged
from policy.sharding import shard_of
from policy.timing import EMPTY, add_event
from stores.engagement import Engagement, Stored


class Shard:
    """Stands in for a UserShard's actor handle: records what ``engaged`` got."""

    def __init__(self, fail: bool = False):
        self.got: list[list] = []
        self.fail = fail
        self.engaged = self

    def remote(self, payload: bytes):
        async def call():
            if self.fail:
                raise ConnectionError("restarting")
            self.got.append(msgspec.msgpack.decode(payload))
            return len(self.got[-1])
        return call()


def event(user: str, at: float = 1_800_000_000.0) -> Engagement:
    return Engagement(uuid.uuid4(), user, "email", "opened", at, "api")


def stored(events, at: float = 1_800_000_100.0) -> dict:
    """What stores.engagement.record answers: each new event's key and its time as stored."""
    return {(e.notification_id, e.channel, e.type): at for e in events}


def test_events_go_in_one_call_per_shard_only_new_ones_at_their_stored_time(monkeypatch):
    monkeypatch.setattr(engaged, "FLUSH_S", 0.01)
    shards = [Shard(), Shard()]
    feed = engaged.Feed(lambda: shards)

    async def run():
        events = [event(f"u{i}") for i in range(20)]
        feed.add(events, stored(events[1:]))  # the first was a duplicate
        one = event("u5")
        feed.add([one], stored([one]))
        await asyncio.sleep(0.1)

    asyncio.run(run())
    assert [len(s.got) for s in shards] == [1, 1]  # one call each for 20 events
    got = [x for s in shards for x in s.got[0]]
    assert len(got) == 20 and "u0" not in {u for u, _, _, _ in got}
    assert all(at == 1_800_000_100.0 and recorded > 0 for _, at, recorded, _ in got)
    assert all(shard_of(u, 2) == i for i, s in enumerate(shards) for u, _, _, _ in s.got[0])
    assert feed.sent == 20 and feed.dropped == 0


def test_events_added_during_a_flush_go_in_the_next(monkeypatch):
    monkeypatch.setattr(engaged, "FLUSH_S", 0.01)
    shard = Shard()
    feed = engaged.Feed(lambda: [shard])
    real = shard.remote

    def slow(payload):
        async def call():
            await asyncio.sleep(0.05)  # meanwhile another event comes
            return await real(payload)
        return call()

    shard.remote = slow

    async def run():
        first = event("a")
        feed.add([first], stored([first]))
        await asyncio.sleep(0.03)  # the first flush is in its call now
        second = event("b")
        feed.add([second], stored([second]))
        await asyncio.sleep(0.3)

    asyncio.run(run())
    assert [[u for u, _, _, _ in call] for call in shard.got] == [["a"], ["b"]]


def test_a_failed_call_is_dropped_and_counted_and_close_drops_the_rest(monkeypatch):
    monkeypatch.setattr(engaged, "FLUSH_S", 0.01)
    shards = [Shard(fail=True)]
    feed = engaged.Feed(lambda: shards)

    async def run():
        two = [event("a"), event("b")]
        feed.add(two, stored(two))
        await asyncio.sleep(0.1)
        monkeypatch.setattr(engaged, "FLUSH_S", 60)
        three = [event("c")]
        feed.add(three, stored(three))
        await feed.close()

    asyncio.run(run())
    assert (feed.sent, feed.dropped) == (0, 3)


def test_an_event_counts_in_its_local_hour_and_a_full_hour_halves_them_all():
    tz = ZoneInfo("Asia/Kolkata")
    at = 1_800_000_000.0  # 2027-01-15 08:00 UTC: 13:30 in Kolkata
    p = add_event(EMPTY, at, tz)
    assert p[13] == 1 and sum(p) == 1
    full = bytes([255 if h == 13 else 10 for h in range(24)])
    p = add_event(full, at, tz)
    assert p[13] == 128 and p[0] == 5


def test_a_send_is_read_once_for_channel_choice(monkeypatch):
    """An open and a click of one send are two events for the send-time profile, one read
    for the channel counts: only the send's first open or click carries its channel."""
    monkeypatch.setattr(engaged, "FLUSH_S", 0.01)
    shard = Shard()
    feed = engaged.Feed(lambda: [shard])
    opened = event("u1")
    clicked = Engagement(opened.notification_id, "u1", "email", "clicked", opened.at, "api")
    later = Engagement(uuid.uuid4(), "u1", "email", "clicked", opened.at, "api")  # its send was opened before

    async def run():
        new = Stored(stored([opened, clicked, later]), first=[(e.notification_id, "email", e.type)
                                                             for e in (opened, clicked)])
        feed.add([opened, clicked, later], new)
        await asyncio.sleep(0.1)

    asyncio.run(run())
    assert [ch for _, _, _, ch in shard.got[0]] == ["email", "", ""]
