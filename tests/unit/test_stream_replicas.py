"""``nats.replicas`` reaches every stream the engine makes or updates."""

import asyncio

from nats.js.errors import NotFoundError

from engine import prefs_bus
from infra import streams
from infra.config import NatsConfig


class Streams:
    """A JetStream manager that keeps the stream configs it is given."""

    def __init__(self, existing: set[str]):
        self.existing, self.configs = existing, {}

    async def stream_info(self, name):
        if name not in self.existing:
            raise NotFoundError
        return None

    async def add_stream(self, config):
        self.configs[config.name] = config

    update_stream = add_stream

    async def add_consumer(self, *args, **kwargs):
        return None

    async def consumer_info(self, *args, **kwargs):
        return None


def test_every_stream_gets_the_configured_replicas_made_or_updated():
    cfg = NatsConfig(replicas=3)
    for existing in (set(), {"TIDINGS", "TIDINGS_DLQ", "TIDINGS_EVENTS", "TIDINGS_PREFS"}):
        js = Streams(existing)

        async def run(js=js) -> None:
            await streams.ensure_streams(js, cfg)
            await streams.ensure_events_stream(js, cfg, 3600.0, 1000)
            await prefs_bus.ensure_stream(js, cfg)

        asyncio.run(run())
        assert {name: c.num_replicas for name, c in js.configs.items()} == dict.fromkeys(
            ("TIDINGS", streams.dlq_stream(cfg), streams.events_stream(cfg), streams.prefs_stream(cfg)), 3)
