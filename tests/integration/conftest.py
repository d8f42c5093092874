"""Fixtures shared by the integration tests (the session-wide NATS, PostgreSQL and
Ray are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from sandbox import SmtpSink, WebhookSink
from tests.integration.helpers import api_session


@pytest.fixture(scope="module")
def smtp():
    """A loopback SMTP server that keeps what it receives, one per test module."""
    sink = SmtpSink(port=0, keep_messages=True)
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
async def webhook_sink():
    """A loopback webhook receiver checking the signatures ``engine_config``'s
    secret makes (helpers.py), one per test module."""
    sink = WebhookSink("test-secret", port=0)
    await sink.start()
    yield sink
    await sink.stop()


@pytest.fixture
async def client():
    """An HTTP client session for one test."""
    async with api_session() as s:
        yield s
