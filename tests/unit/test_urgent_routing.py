"""Which ChannelShards a UserShard hands tasks to (``UserShard._send``): high and
critical ones to the channel's urgent shards when it has some, never a broadcast's,
the rest dealt over the bulk shards as before."""

from __future__ import annotations

import asyncio

from actors.user_shard import UserShard
from policy import wire
from policy.types import Content, DeliveryTask, Outcome


class FakeShard:
    """A ChannelShard handle: ``deliver.remote(payload)`` answers every task sent."""

    def __init__(self, name: str):
        self.name, self.got = name, []
        self.deliver = self

    def remote(self, payload: bytes):
        tasks = wire.decode(payload, list[DeliveryTask])
        self.got.append([t.notification_id for t in tasks])

        async def answer() -> bytes:
            return wire.encode([Outcome(t.notification_id, t.user_id, t.channel, t.category, "sent", "",
                                        0.0, 0.0, priority=t.priority) for t in tasks])
        return answer()


def shard_with(bulk: list[FakeShard], urgent: list[FakeShard]) -> UserShard:
    us = UserShard.__new__(UserShard)  # only what _send uses
    us.channel_shards, us.urgent_shards = {"push": bulk}, ({"push": urgent} if urgent else {})
    us.rr, us.traced, us.spans = 0, {}, {}
    return us


def tasks(*priorities: str) -> list[DeliveryTask]:
    return [DeliveryTask(f"n{i}-{p}", f"u{i}", "push", "c", f"tok{i}", Content(text="x"), priority=p)
            for i, p in enumerate(priorities)]


def test_urgent_tasks_go_to_the_urgent_shard_and_the_rest_to_the_bulk_shards():
    bulk, urgent = [FakeShard("b0"), FakeShard("b1")], [FakeShard("u0")]
    outcomes, error = asyncio.run(shard_with(bulk, urgent)._send(
        "push", tasks("normal", "critical", "low", "high", "normal")))
    assert error is None and len(outcomes) == 5  # every task answered, whoever sent it
    assert urgent[0].got == [["n1-critical", "n3-high"]]
    assert sorted(n for b in bulk for call in b.got for n in call) == ["n0-normal", "n2-low", "n4-normal"]


def test_all_bulk_makes_no_urgent_call_and_all_urgent_no_bulk_call():
    bulk, urgent = [FakeShard("b0")], [FakeShard("u0")]
    us = shard_with(bulk, urgent)
    asyncio.run(us._send("push", tasks("normal", "low")))
    assert urgent[0].got == [] and len(bulk[0].got) == 1
    asyncio.run(us._send("push", tasks("critical")))
    assert urgent[0].got == [["n0-critical"]] and len(bulk[0].got) == 1


def test_a_broadcast_never_fills_the_urgent_shards():
    bulk, urgent = [FakeShard("b0")], [FakeShard("u0")]
    asyncio.run(shard_with(bulk, urgent)._send("push", tasks("critical", "high"), urgent_ok=False))
    assert urgent[0].got == [] and bulk[0].got == [["n0-critical", "n1-high"]]


def test_without_urgent_shards_urgent_tasks_share_the_bulk_ones():
    bulk = [FakeShard("b0"), FakeShard("b1")]
    asyncio.run(shard_with(bulk, [])._send("push", tasks("critical", "normal")))
    assert sorted(n for b in bulk for call in b.got for n in call) == ["n0-critical", "n1-normal"]
