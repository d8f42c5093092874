"""providers.base.BatchProvider: which providers take a batch, and the
ChannelShard batching only when every provider of its channel does."""

from __future__ import annotations

import msgspec
import pytest

from actors.channel_shard import ChannelShard
from infra.config import ChannelConfig, ProviderConfig
from providers.base import BatchProvider, Provider
from providers.email.mailgun import MailgunProvider
from providers.email.sendgrid import SendGridProvider
from providers.email.smtp import SmtpProvider
from providers.inapp.provider import InAppProvider
from providers.webhook.http import WebhookProvider

SENDGRID = {"api_key": "SG.unit", "sender": "jobs@x.test", "base_url": "http://127.0.0.1:9"}


def test_the_batching_providers_are_batch_providers():
    for p in (SendGridProvider("sg", SENDGRID),
              InAppProvider("inbox", {"database_url": "postgresql://x", "nats_url": "nats://x"})):
        assert isinstance(p, Provider) and isinstance(p, BatchProvider) and p.max_batch >= 1


def test_the_others_are_not():
    for p in (SmtpProvider("smtp", {"sender": "jobs@x.test"}),
              MailgunProvider("mg", {"api_key": "k", "domain": "x.test", "sender": "jobs@x.test"}),
              WebhookProvider("hook", {"secret": "s", "url": "http://127.0.0.1:9"})):
        assert isinstance(p, Provider) and not isinstance(p, BatchProvider)


class HalfBatch:
    """send_batch without max_batch: how many it takes is unknown, so not a batcher."""

    name, channel = "half", "email"

    async def start(self) -> None: ...
    async def send(self, task): ...
    async def send_batch(self, tasks): ...
    async def close(self) -> None: ...


def test_send_batch_alone_is_not_enough():
    assert isinstance(HalfBatch(), Provider) and not isinstance(HalfBatch(), BatchProvider)


def shard(*providers: tuple[str, str, dict]) -> ChannelShard:
    cfg = ChannelConfig(providers=[ProviderConfig(name=name, type=kind, priority=i, settings=settings)
                                   for i, (name, kind, settings) in enumerate(providers)])
    return ChannelShard("email", msgspec.msgpack.encode(cfg))


@pytest.mark.parametrize("providers, size", [
    ([("sg", "sendgrid", {**SENDGRID, "max_batch": 50})], 50),
    ([("sg", "sendgrid", SENDGRID), ("sg2", "sendgrid", {**SENDGRID, "max_batch": 10})], 10),
    ([("sg", "sendgrid", SENDGRID), ("smtp", "smtp", {"sender": "jobs@x.test"})], 0),
])
async def test_a_channel_batches_only_when_every_provider_can(providers, size):
    s = shard(*providers)
    try:
        await s._ready()
        assert s.batch_size == size
    finally:
        await s.close()
