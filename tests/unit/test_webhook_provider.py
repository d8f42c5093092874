"""WebhookProvider against a real aiohttp receiver on loopback (sandbox.WebhookSink)."""

import time

import pytest

from policy.types import Content, DeliveryTask
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidMessage,
    NetworkError,
    ProviderError,
    RateLimited,
)
from providers.registry import create
from providers.webhook.http import WebhookProvider
from sandbox import WebhookSink, free_port

SECRET = "whsec_unit"


def task(n: int = 1, address: str = "") -> DeliveryTask:
    return DeliveryTask(
        notification_id=f"nid-{n}",
        user_id="u1",
        channel="webhook",
        category="orders",
        address=address,
        content=Content(subject="Order shipped", text="on its way", data={"order": 42, "items": ["a", "b"]}),
        priority="high",
        accepted_at=1700000000.5,
        metadata={"tenant": "acme"},
    )


@pytest.fixture
async def sink():
    s = WebhookSink(SECRET, keep_bodies=True)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def provider(sink):
    p = WebhookProvider("hook-test", {"url": sink.url, "secret": SECRET, "timeout_s": 2,
                                      "egress_allow": ["127.0.0.0/8", "::1/128"]})
    await p.start()
    yield p
    await p.close()


async def test_success_is_signed_counted_and_has_the_documented_body(sink, provider):
    receipt = await provider.send(task(1))
    assert sink.received == 1 and sink.bad_signatures == 0 and sink.duplicates == 0
    assert receipt.message_id == "hook-1"
    assert sink.bodies == [
        {
            "id": "nid-1",
            "user_id": "u1",
            "category": "orders",
            "channel": "webhook",
            "priority": "high",
            "content": {
                "subject": "Order shipped",
                "text": "on its way",
                "html": None,
                "data": {"order": 42, "items": ["a", "b"]},
            },
            "metadata": {"tenant": "acme"},
            "accepted_at": 1700000000.5,
        }
    ]


async def test_same_delivery_twice_counts_a_duplicate(sink, provider):
    await provider.send(task(1))
    await provider.send(task(1))
    await provider.send(task(2))
    assert (sink.received, sink.duplicates) == (3, 1)


async def test_503_is_provider_error(sink, provider):
    sink.fail_status = 503
    with pytest.raises(ProviderError) as info:
        await provider.send(task())
    assert info.value.status == 503 and info.value.retryable
    assert sink.received == 0


async def test_fail_next_fails_only_that_many(sink, provider):
    sink.fail_status, sink.fail_next = 503, 2
    for _ in range(2):
        with pytest.raises(ProviderError):
            await provider.send(task())
    await provider.send(task())
    assert (sink.failed, sink.received) == (2, 1)


async def test_429_with_retry_after_is_rate_limited(sink, provider):
    sink.fail_status, sink.retry_after = 429, "7"
    with pytest.raises(RateLimited) as info:
        await provider.send(task())
    assert info.value.status == 429 and info.value.retry_after == 7.0


async def test_400_is_invalid_message(sink, provider):
    sink.fail_status = 400
    with pytest.raises(InvalidMessage) as info:
        await provider.send(task())
    assert info.value.status == 400 and not info.value.retryable


async def test_bad_signature_401_is_authentication_error(sink):
    p = WebhookProvider("hook-test", {"url": sink.url, "secret": "not-the-secret"})
    await p.start()
    try:
        with pytest.raises(AuthenticationError) as info:
            await p.send(task())
    finally:
        await p.close()
    assert info.value.status == 401
    assert sink.bad_signatures == 1 and sink.received == 0


@pytest.mark.parametrize("status, error", [(403, AuthenticationError), (408, NetworkError), (404, InvalidMessage), (500, ProviderError)])
async def test_other_statuses(sink, provider, status, error):
    sink.fail_status = status
    with pytest.raises(error) as info:
        await provider.send(task())
    assert type(info.value) is error and info.value.status == status


async def test_tolerated_status_counts_as_accepted(sink):
    sink.fail_status = 409
    p = WebhookProvider("hook-test", {"url": sink.url, "secret": SECRET, "tolerate_statuses": [409]})
    try:
        assert (await p.send(task())).message_id is None
    finally:
        await p.close()


async def test_unreachable_port_is_network_error():
    p = WebhookProvider("hook-test", {"url": f"http://127.0.0.1:{free_port()}/hook", "secret": SECRET, "timeout_s": 2})
    await p.start()
    try:
        with pytest.raises(NetworkError):
            await p.send(task())
    finally:
        await p.close()


async def test_address_url_overrides_default(sink, provider):
    await provider.send(task(1, address=sink.url + "/tenant-a"))
    await provider.send(task(2, address="not-a-url"))  # falls back to the url setting
    assert sink.paths == {"/hook/tenant-a": 1, "/hook": 1}


async def test_no_url_anywhere_is_invalid_message():
    p = WebhookProvider("hook-test", {"secret": SECRET})
    try:
        with pytest.raises(InvalidMessage):
            await p.send(task(address="user-42"))
    finally:
        await p.close()


def test_configuration_errors():
    with pytest.raises(ConfigurationError, match="secret"):
        WebhookProvider("hook-test", {"url": "http://127.0.0.1/hook"})
    with pytest.raises(ConfigurationError, match="url"):
        WebhookProvider("hook-test", {"url": "ftp://x", "secret": SECRET})
    with pytest.raises(ConfigurationError, match="unknown provider type 'pigeon'.*smtp.*webhook"):
        create("pigeon", "p", {})


async def test_registry_creates_webhook_provider_and_send_starts_lazily(sink):
    p = create("webhook", "via-registry", {"url": sink.url, "secret": SECRET})
    assert isinstance(p, WebhookProvider) and p.channel == "webhook"
    try:
        await p.send(task())
    finally:
        await p.close()
    assert sink.received == 1


async def test_stale_signature_is_rejected_by_sink(sink):
    import aiohttp

    from providers.webhook.signing import ID_HEADER, SIGNATURE_HEADER, sign

    body = b"{}"
    headers = {SIGNATURE_HEADER: sign(SECRET, body, int(time.time()) - 3600), ID_HEADER: "x:webhook"}
    async with aiohttp.ClientSession() as session:
        async with session.post(sink.url, data=body, headers=headers) as resp:
            assert resp.status == 401
            assert "too old" in (await resp.json())["error"]
    assert sink.bad_signatures == 1 and sink.received == 0


def test_the_secret_is_not_kept_in_settings():
    from providers.webhook.http import WebhookProvider
    p = WebhookProvider("hook", {"url": "http://127.0.0.1:9/hook", "secret": "very-secret-value"})
    assert "very-secret-value" not in repr(p.settings) and p.secret == b"very-secret-value"


def test_the_user_url_timeout_defaults_to_the_timeout_setting():
    # 10 s unless set: a receiver taking 5-10 s is not timed out (and sent again) early
    assert WebhookProvider("h", {"secret": SECRET}).destination_timeout_s == 8  # below the default 10 s call deadline
    assert WebhookProvider("h", {"secret": SECRET, "timeout_s": 4}).destination_timeout_s == 0.8 * 4
    assert WebhookProvider("h", {"secret": SECRET, "timeout_s": 4, "destination_timeout_s": 2}).destination_timeout_s == 2
    with pytest.raises(ConfigurationError, match="destination_timeout_s"):
        WebhookProvider("h", {"secret": SECRET, "destination_timeout_s": 0})
