"""What the provider unit tests share: a loopback sink (engine.sinks) served for
the length of a fixture, a provider started and closed around it, and the
provider settings that point it at the sink."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def serving(sink) -> AsyncIterator:
    """``sink`` started (listening), and stopped after."""
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


@asynccontextmanager
async def started(provider) -> AsyncIterator:
    """``provider`` started, and closed after."""
    await provider.start()
    try:
        yield provider
    finally:
        await provider.close()


def pointed_at(sink, base: dict, overrides: dict) -> dict:
    """``base`` with ``base_url`` the sink's URL (when there is a sink), then ``overrides`` on top."""
    if sink is not None:
        base = {**base, "base_url": sink.url}
    return {**base, **overrides}
