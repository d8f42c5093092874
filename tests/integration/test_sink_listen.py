"""The loopback sinks the benchmarks and tests deliver to take a burst of new
connections: with aiohttp's listen backlog of 128 a ChannelShard opening its
connections at once had SYNs dropped, each sent again a second later, and the
e2e harness's provider-call p99 in a backlog was ~1 s (bench/RESULTS.md)."""

from __future__ import annotations

from sandbox import WebhookSink
from tests.integration.helpers import listen_backlog, needs_ss, somaxconn


@needs_ss
async def test_the_webhook_sink_listens_with_a_deep_backlog():
    sink = WebhookSink(secret="s")
    await sink.start()
    try:
        assert listen_backlog(sink.port) == min(4096, somaxconn())
    finally:
        await sink.stop()
