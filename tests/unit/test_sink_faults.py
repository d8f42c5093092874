"""The webhook sink's injected faults (sandbox/faults.py), as the fault bench
drives them: changed while it runs, and every request counted per notification."""

import aiohttp
import pytest

from policy.types import Content, DeliveryTask
from providers.errors import ProviderError
from providers.webhook.http import WebhookProvider
from sandbox import WebhookSink

SECRET = "whsec_faults"


def task(n: int) -> DeliveryTask:
    return DeliveryTask(notification_id=f"nid-{n}", user_id="u1", channel="webhook", category="orders", address="",
                        content=Content(text="hi"), priority="normal", accepted_at=1700000000.0, metadata={})


@pytest.fixture
async def sink():
    s = WebhookSink(SECRET)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def provider(sink):
    p = WebhookProvider("hook-faults", {"url": sink.url, "secret": SECRET})
    await p.start()
    yield p
    await p.close()


async def put_faults(sink: WebhookSink, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.put(f"http://{sink.host}:{sink.port}/_sink/faults", json=body) as r:
        return r.status, await r.json()


async def ids(sink: WebhookSink) -> dict:
    async with aiohttp.ClientSession() as s, s.get(f"http://{sink.host}:{sink.port}/_sink/ids") as r:
        return await r.json()


async def test_failures_are_counted_as_attempts_not_accepted(sink, provider):
    assert (await put_faults(sink, {"fail_ratio": 1.0}))[0] == 200
    with pytest.raises(ProviderError):
        await provider.send(task(1))
    assert (await put_faults(sink, {}))[0] == 200
    await provider.send(task(1))
    assert await ids(sink) == {"accepted": {"nid-1": 1}, "attempts": {"nid-1": 2}}


async def test_garbage_bodies_on_2xx_are_accepted_and_on_5xx_fail(sink, provider):
    await put_faults(sink, {"garbage": True, "fail_ratio": 0.5, "seed": 3})
    sent, failed = 0, 0
    for n in range(40):
        try:
            await provider.send(task(n))
            sent += 1
        except ProviderError:
            failed += 1
    assert sent and failed, (sent, failed)
    assert sum((await ids(sink))["accepted"].values()) == sent == sink.received


async def test_a_bad_fault_is_a_400_naming_the_field(sink):
    status, body = await put_faults(sink, {"fail_ratio": 1.5})
    assert status == 400 and "fail_ratio" in body["error"]
    status, body = await put_faults(sink, {"hang": 1})
    assert status == 400 and "hang" in body["error"]
