"""ChannelShard (a plain class; Ray only wraps it) with a SendGrid provider against
the loopback SendGrid server: batches, and one bad recipient inside a batch."""

import msgspec

from actors.channel_shard import ChannelShard
from infra.config import ChannelConfig, ProviderConfig
from policy import wire
from policy.types import Content, DeliveryTask, Outcome
from sandbox import SendGridSink

KEY = "SG.unit"


def shard_for(sink: SendGridSink) -> ChannelShard:
    cfg = ChannelConfig(providers=[ProviderConfig(
        name="sg", type="sendgrid", max_attempts=1,
        settings={"api_key": KEY, "sender": "jobs@x.test", "base_url": sink.url})])
    return ChannelShard("email", msgspec.msgpack.encode(cfg))


def tasks(addresses: list[str]) -> list[DeliveryTask]:
    content = Content(subject="Fair", text="Come along.")
    return [DeliveryTask(f"n{i}", f"u{i}", "email", "marketing", a, content) for i, a in enumerate(addresses)]


async def deliver(shard: ChannelShard, ts: list[DeliveryTask]) -> list[Outcome]:
    return wire.decode(await shard.deliver(wire.encode(ts)), list[Outcome])


async def test_a_batch_is_one_request_and_a_bad_recipient_fails_alone():
    sink = SendGridSink(KEY)
    await sink.start()
    shard = shard_for(sink)
    try:
        good = await deliver(shard, tasks([f"a{i}@x.test" for i in range(30)]))
        assert {o.status for o in good} == {"sent"} and sink.requests == 1 and sink.recipients == 30
        mixed = await deliver(shard, tasks(["b1@x.test", "not an address", "b3@x.test"]))
        by_address = {o.notification_id: (o.status, o.reason) for o in mixed}
        assert by_address == {"n0": ("sent", "ok"), "n1": ("failed", "invalid_message"), "n2": ("sent", "ok")}
        assert sink.recipients == 32
        # the same with a task past its life first in the batch: it is settled, the bad one fails alone
        late = tasks(["c0@x.test", "c1@x.test", "not an address", "c3@x.test"])
        late[0].expires_at = 1.0
        by_address = {o.notification_id: (o.status, o.reason) for o in await deliver(shard, late)}
        assert by_address == {"n0": ("suppressed", "ttl.expired"), "n1": ("sent", "ok"),
                              "n2": ("failed", "invalid_message"), "n3": ("sent", "ok")}
        assert sink.recipients == 34
    finally:
        await shard.close()
        await sink.stop()
