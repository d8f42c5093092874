"""What the provider unit tests share: a loopback sink (sandbox) served for
the length of a fixture, a provider started and closed around it, the
provider settings that point it at the sink, an email task factory, and
``refused`` for the exact error a send raises."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from policy.types import Content, DeliveryTask


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


EMAIL_CONTENT = Content(subject="Your weekly digest", text="plain body", html="<p>html body</p>")


def email_task(n: int = 1, *, category: str = "digest", content: Content = EMAIL_CONTENT, address: str | None = None,
               user_id: str = "u1") -> DeliveryTask:
    """Email task ``n``: ``nid-<n>`` to ``user<n>@example.com`` unless ``address`` says otherwise."""
    return DeliveryTask(
        notification_id=f"nid-{n}",
        user_id=user_id,
        channel="email",
        category=category,
        address=address if address is not None else f"user{n}@example.com",
        content=content,
    )


async def refused(provider, t: DeliveryTask, error: type):
    """The error ``provider.send(t)`` raises, checked to be exactly ``error``."""
    with pytest.raises(error) as info:
        await provider.send(t)
    assert type(info.value) is error, repr(info.value)
    return info.value
