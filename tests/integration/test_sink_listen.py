"""The loopback sinks the benchmarks and tests deliver to take a burst of new
connections: with aiohttp's listen backlog of 128 a ChannelShard opening its
connections at once had SYNs dropped, each sent again a second later, and the
e2e harness's p99 in a backlog had a second in it (bench/RESULTS.md, "... listen
backlogs")."""

from __future__ import annotations

import pytest

from sandbox import WebhookSink
from sandbox.http import LISTEN_BACKLOG
from tests.integration.helpers import listen_backlog, needs_ss

pytestmark = pytest.mark.integration


@needs_ss(LISTEN_BACKLOG)
async def test_the_webhook_sink_listens_with_a_deep_backlog():
    sink = WebhookSink(secret="s")
    await sink.start()
    try:
        assert listen_backlog(sink.port) == LISTEN_BACKLOG
    finally:
        await sink.stop()
