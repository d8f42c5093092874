"""The SSRF guard (providers.egress) on its own, and through the webhook and web
push providers against real loopback servers: internal addresses refused unless
allow-listed, redirects not followed, answers read only up to a cap and never put
into error texts, and per-destination breakers that keep one user's broken URL
from opening the provider's shared breaker."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import socket

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fakes import FakeClock, make_slot, make_task
from hypothesis import given, settings, strategies as st

from actors.delivery import deliver, reason_for
from policy.types import Content, DeliveryTask
from providers.egress import (
    MAX_READ,
    DestinationBreakers,
    EgressPolicy,
    GuardedResolver,
    check_url,
    guarded_session,
    parse_allow,
    read_capped,
)
from providers.errors import (
    ConfigurationError,
    DestinationCircuitOpen,
    DestinationError,
    DestinationRefused,
    InvalidMessage,
)
from providers.webhook.http import WebhookProvider
from providers.webpush import WebPushProvider
from sandbox import WebhookSink, free_port
from sandbox.webpush import WebPushSink

SECRET = "whsec_egress"
LOOPBACK = ["127.0.0.0/8", "::1/128"]
OPEN = EgressPolicy()

BLOCKED_V4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
              "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
              "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4"]
BLOCKED_V6 = ["::1/128", "::/128", "fe80::/10", "fc00::/7", "fec0::/10", "ff00::/8", "2001:db8::/32", "100::/64"]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "151.101.1.69", "2606:4700:4700::1111",
          "2a00:1450:4001:81b::200e", "2001:4860:4860::8888"]


def vapid_pem() -> str:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def in_net(cidr: str):
    net = ipaddress.ip_network(cidr)
    return st.integers(int(net.network_address), int(net.broadcast_address)).map(
        lambda i: ipaddress.IPv6Address(i) if net.version == 6 else ipaddress.IPv4Address(i))


blocked_v4 = st.sampled_from(BLOCKED_V4).flatmap(lambda c: in_net(c).map(lambda a: (c, a)))
blocked_v6 = st.sampled_from(BLOCKED_V6).flatmap(lambda c: in_net(c).map(lambda a: (c, a)))


# -- the classifier ---------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(blocked_v4)
def test_every_internal_ipv4_address_is_refused_unless_allow_listed(case):
    cidr, addr = case
    assert OPEN.refusal(addr) is not None, addr
    assert OPEN.refusal(str(addr)) is not None
    assert EgressPolicy(parse_allow([cidr], "t")).refusal(addr) is None
    # ... and the IPv6 forms that carry it
    mapped = ipaddress.IPv6Address(f"::ffff:{addr}")
    sixtofour = ipaddress.IPv6Address((0x2002 << 112) | (int(addr) << 80) | 1)
    teredo = ipaddress.IPv6Address((0x20010000 << 96) | (int(ipaddress.IPv4Address("8.8.8.8")) << 64)
                                   | (int(addr) ^ 0xFFFFFFFF))
    nat64 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(addr))
    for form in (mapped, sixtofour, teredo, nat64):
        assert OPEN.refusal(form) is not None, form
    assert EgressPolicy(parse_allow([cidr], "t")).refusal(mapped) is None  # a mapped address is that address


@settings(max_examples=300, deadline=None)
@given(blocked_v6)
def test_every_internal_ipv6_address_is_refused_unless_allow_listed(case):
    cidr, addr = case
    assert OPEN.refusal(addr) is not None, addr
    assert EgressPolicy(parse_allow([cidr], "t")).refusal(addr) is None


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_any_ipv4_address_is_refused_exactly_when_it_is_in_a_blocked_range(n):
    addr = ipaddress.IPv4Address(n)
    blocked = any(addr in ipaddress.ip_network(c) for c in BLOCKED_V4) or addr.is_private or not addr.is_global
    assert (OPEN.refusal(addr) is not None) is blocked


@pytest.mark.parametrize("addr, why", [
    ("169.254.169.254", "link-local"), ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("0.0.0.0", "unspecified"),
    ("100.64.0.1", "shared"), ("224.0.0.1", "multicast"), ("::1", "loopback"), ("fe80::1", "link-local"),
    ("fd00::1", "private"), ("fec0::1", "site-local"), ("::ffff:169.254.169.254", None), ("fe80::1%eth0", "link-local"),
])
def test_named_internal_addresses(addr, why):
    got = OPEN.refusal(addr)
    assert got is not None
    if why is not None:
        assert got.startswith(why)


@pytest.mark.parametrize("addr", PUBLIC)
def test_public_addresses_pass(addr):
    assert OPEN.refusal(addr) is None


def test_allow_list_is_validated():
    assert parse_allow(None, "t") == ()
    assert parse_allow(["127.0.0.1", "::1/128"], "t") == (ipaddress.ip_network("127.0.0.1/32"),
                                                         ipaddress.ip_network("::1/128"))
    for bad in ("127.0.0.0/8", ["10.0.0.0/33"], ["nope"], [5], 5):
        with pytest.raises(ConfigurationError, match="egress_allow"):
            parse_allow(bad, "webhook provider 'x'")
    with pytest.raises(ConfigurationError, match="egress_allow"):
        WebhookProvider("x", {"secret": "s", "egress_allow": ["not-a-cidr"]})
    with pytest.raises(ConfigurationError, match="egress_allow"):
        WebPushProvider("x", {"vapid_private_key": vapid_pem(), "vapid_subject": "mailto:a@b.test",
                              "egress_allow": "::1"})


# -- URLs ---------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://127.0.0.1:8080/x", "https://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://169.254.169.254/latest/meta-data/", "http://0.0.0.0:80/", "http://10.0.0.5/", "http://[fd12::1]/",
    "http://2130706433/", "http://127.1/", "http://[2002:7f00:1::]/",
])
def test_literal_internal_hosts_are_refused_before_any_request(url):
    with pytest.raises(DestinationRefused, match="refused"):
        check_url(url, OPEN, "webhook")


@pytest.mark.parametrize("url, match", [
    ("ftp://example.com/x", "scheme"), ("file:///etc/passwd", "scheme"), ("gopher://example.com/", "scheme"),
    ("http://user:pw@example.com/", "user info"), ("http://user@example.com/", "user info"),
])
def test_only_http_without_userinfo(url, match):
    with pytest.raises(DestinationRefused, match=match):
        check_url(url, OPEN)


def test_allowed_urls_get_an_origin_key():
    assert check_url("https://hooks.example.com/a/b?c=1", OPEN).key == "https://hooks.example.com:443"
    assert check_url("http://127.0.0.1:81/x", EgressPolicy(parse_allow(LOOPBACK, "t"))).key == "http://127.0.0.1:81"
    assert check_url("http://[2606:4700::1]/x", OPEN).key == "http://[2606:4700::1]:80"


class FixedResolver(AbstractResolver):
    """Resolves every name to the given addresses."""

    def __init__(self, *hosts: str):
        self.hosts = hosts

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [{"hostname": host, "host": h, "port": port, "family": socket.AF_INET6 if ":" in h else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST} for h in self.hosts]

    async def close(self):
        pass


async def test_the_resolver_drops_refused_addresses():
    only_internal = GuardedResolver(OPEN, FixedResolver("127.0.0.1", "169.254.169.254", "::1"))
    with pytest.raises(DestinationRefused, match="169.254.169.254 \\(link-local\\)"):
        await only_internal.resolve("rebind.test", 80)
    mixed = GuardedResolver(OPEN, FixedResolver("10.0.0.1", "93.184.216.34"))
    assert [r["host"] for r in await mixed.resolve("mixed.test", 80)] == ["93.184.216.34"]
    allowed = GuardedResolver(EgressPolicy(parse_allow(LOOPBACK, "t")), FixedResolver("127.0.0.1", "10.0.0.1"))
    assert [r["host"] for r in await allowed.resolve("dev.test", 80)] == ["127.0.0.1"]


# -- loopback servers ---------------------------------------------------------------

class Server:
    """A loopback aiohttp app with a few misbehaving routes; counts hits per path."""

    def __init__(self):
        self.hits: dict[str, int] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0

    def count(self, request: web.Request) -> None:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1

    async def start(self):
        app = web.Application()

        async def redirect(request):
            self.count(request)
            raise web.HTTPFound(f"http://127.0.0.1:{self.port}/target")

        async def target(request):
            self.count(request)
            return web.Response(text="ok")

        async def error(request):
            self.count(request)
            return web.Response(status=500, text="INTERNAL-SECRET db=10.0.0.7 password=hunter2")

        async def bad_request(request):
            self.count(request)
            return web.Response(status=400, text="INTERNAL-SECRET")

        async def endless(request):
            self.count(request)
            resp = web.StreamResponse(status=int(request.query.get("status", "200")))
            await resp.prepare(request)
            try:
                for _ in range(100_000):  # 6.4 GB if anyone read it all
                    await resp.write(b"x" * 65536)
            except (ConnectionError, RuntimeError):
                pass
            return resp

        async def slow(request):
            self.count(request)
            await asyncio.sleep(5)
            return web.Response(text="late")

        for path, handler in (("/redirect", redirect), ("/target", target), ("/error", error),
                              ("/bad", bad_request), ("/endless", endless), ("/slow", slow)):
            app.router.add_route("*", path, handler)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def stop(self):
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def server():
    s = await Server().start()
    yield s
    await s.stop()


@pytest.fixture
async def sink():
    s = WebhookSink(SECRET)
    await s.start()
    yield s
    await s.stop()


def hook(address: str, n: int = 1) -> DeliveryTask:
    return DeliveryTask(notification_id=f"nid-{n}", user_id="u1", channel="webhook", category="orders",
                        address=address, content=Content(text="hi"))


def webhook(**settings) -> WebhookProvider:
    return WebhookProvider("hook-egress", {"secret": SECRET, "timeout_s": 2, **settings})


async def send(provider, task):
    try:
        return await provider.send(task)
    finally:
        await provider.close()


# -- webhooks to user URLs --------------------------------------------------------

async def test_a_hostname_resolving_to_loopback_is_refused_without_the_allow_list(sink):
    url = f"http://localhost:{sink.port}/hook"
    with pytest.raises(DestinationRefused, match="loopback") as exc:
        await send(webhook(), hook(url))
    assert reason_for(exc.value) == "destination_refused" and not exc.value.retryable
    assert sink.received == 0
    await send(webhook(egress_allow=LOOPBACK), hook(url))
    assert sink.received == 1 and sink.bad_signatures == 0


async def test_legacy_numeric_hosts_are_resolved_and_refused(sink):
    # not an IP literal to aiohttp, so the resolver sees it (and getaddrinfo maps it onto 127.0.0.1)
    with pytest.raises(DestinationRefused, match="refused"):
        await send(webhook(), hook(f"http://0x7f.1:{sink.port}/hook"))
    assert sink.received == 0


async def test_an_ip_literal_is_refused_and_nothing_is_sent(sink):
    p = webhook()
    with pytest.raises(DestinationRefused, match="loopback"):
        await send(p, hook(sink.url))
    assert sink.received == 0 and p._guarded is None  # refused before a session was even opened
    with pytest.raises(DestinationRefused, match="link-local"):
        await send(webhook(), hook("http://169.254.169.254/latest/meta-data/iam/"))


async def test_the_configured_url_is_trusted_config_and_not_guarded(sink):
    await send(webhook(url=sink.url), hook("user-42"))  # not a URL: the configured url, loopback and all
    assert sink.received == 1


async def test_a_redirect_is_not_followed(server):
    with pytest.raises(InvalidMessage) as exc:
        await send(webhook(egress_allow=LOOPBACK), hook(server.url("/redirect")))
    assert exc.value.status == 302
    assert server.hits == {"/redirect": 1}  # /target never requested


async def test_the_error_text_has_the_status_and_never_the_body(server):
    p = webhook(egress_allow=LOOPBACK)
    with pytest.raises(DestinationError) as exc:
        await send(p, hook(server.url("/error")))
    assert exc.value.status == 500 and exc.value.retryable
    assert str(exc.value) == f"webhook http://127.0.0.1:{server.port}: HTTP 500"
    with pytest.raises(InvalidMessage) as bad:
        await send(webhook(egress_allow=LOOPBACK), hook(server.url("/bad")))
    assert "INTERNAL-SECRET" not in str(bad.value) and bad.value.status == 400


async def test_a_huge_answer_is_read_only_up_to_the_cap(server):
    session = guarded_session(EgressPolicy(parse_allow(LOOPBACK, "t")), max_connections=2, connect_timeout_s=2)
    try:
        async with session.get(server.url("/endless")) as resp:
            assert len(await read_capped(resp)) == MAX_READ
            assert len(await read_capped(resp, 10)) == 10
    finally:
        await session.close()
    # through the provider: an endless 200 is accepted, an endless 502 is an error, both quickly
    receipt = await asyncio.wait_for(send(webhook(egress_allow=LOOPBACK), hook(server.url("/endless"))), 5)
    assert receipt.message_id is None
    with pytest.raises(DestinationError, match="HTTP 502$"):
        await asyncio.wait_for(send(webhook(egress_allow=LOOPBACK), hook(server.url("/endless?status=502"))), 5)


async def test_a_slow_user_url_times_out_as_its_own_failure(server):
    p = webhook(egress_allow=LOOPBACK, destination_timeout_s=0.2)
    with pytest.raises(DestinationError, match="timed out"):
        await asyncio.wait_for(send(p, hook(server.url("/slow"))), 3)


# -- per-destination breakers -------------------------------------------------------

def test_destination_breakers_open_probe_and_forget():
    clock = FakeClock()
    b = DestinationBreakers(threshold=2, cooloff_s=30, capacity=3, clock=clock)
    b.admit("a")
    b.failure("a")
    b.admit("a")
    b.failure("a")
    with pytest.raises(DestinationCircuitOpen, match="a: failed 2 times"):
        b.admit("a")
    clock.advance(31)
    b.admit("a")  # the probe
    with pytest.raises(DestinationCircuitOpen):
        b.admit("a")  # everyone else waits while it runs
    b.failure("a")
    clock.advance(29)
    assert b.is_open("a")
    clock.advance(2)
    b.admit("a")
    b.success("a")
    b.admit("a")
    assert len(b) == 0
    for key in "wxyz":
        b.failure(key)
    assert len(b) == 3 and not b.is_open("w")  # bounded: the oldest is forgotten


async def test_one_failing_user_url_opens_its_own_breaker_not_the_shared_one(sink):
    clock = FakeClock()
    provider = webhook(egress_allow=LOOPBACK, destination_breaker_failures=3)
    slot = make_slot(provider, clock, failure_threshold=2)  # the shared breaker would open after 2
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there

    async def run(address: str, n: int):
        return await deliver(make_task(channel="webhook", address=address, notification_id=f"n-{n}"), [slot],
                             clock=clock, wall=clock.wall, sleep=clock.sleep, rng=random.Random(0))

    try:
        first = await run(dead, 1)
        assert (first.status, first.reason) == ("failed", "destination_error")
        assert [a.error_kind for a in first.attempts] == ["destination"] * 3
        assert provider.destinations.is_open(f"http://127.0.0.1:{dead.split(':')[2].split('/')[0]}")
        second = await run(dead, 2)
        assert (second.status, second.reason) == ("failed", "destination_circuit_open")
        assert len(second.attempts) == 1 and "not tried again" in second.attempts[0].error
        assert slot.breaker.state == "closed" and slot.breaker.metrics()["failures"] == 0
        ok = await run(sink.url + "/other-user", 3)  # another user's URL on the same provider
        assert (ok.status, ok.reason) == ("sent", "ok") and sink.received == 1
        refused = await run("http://169.254.169.254/", 4)
        assert (refused.status, refused.reason) == ("failed", "destination_refused")
        assert slot.breaker.state == "closed"
    finally:
        await provider.close()


async def test_the_configured_url_still_counts_against_the_shared_breaker():
    clock = FakeClock()
    provider = webhook(url=f"http://127.0.0.1:{free_port()}/hook")
    slot = make_slot(provider, clock, failure_threshold=2)
    try:
        out = await deliver(make_task(channel="webhook", address="user-1"), [slot], clock=clock, wall=clock.wall,
                            sleep=clock.sleep, rng=random.Random(0))
        assert [a.error_kind for a in out.attempts] == ["network", "network"]
        assert out.reason == "circuit_open" and slot.breaker.state == "open"
    finally:
        await provider.close()


# -- web push -------------------------------------------------------------------

async def test_web_push_endpoints_are_guarded():
    base = {"vapid_private_key": vapid_pem(), "vapid_subject": "mailto:ops@tidings.test", "allow_http": True}
    push = WebPushSink()
    await push.start()
    try:
        sub = push.subscribe()
        t = DeliveryTask(notification_id="n1", user_id="u1", channel="web", category="c",
                         address=json.dumps(sub), content=Content(text="hi"))
        with pytest.raises(DestinationRefused, match="loopback"):
            await send(WebPushProvider("wp", base), t)
        meta = {**sub, "endpoint": "http://169.254.169.254/push/x"}
        with pytest.raises(DestinationRefused, match="link-local"):
            await send(WebPushProvider("wp", base), DeliveryTask(
                notification_id="n2", user_id="u1", channel="web", category="c", address=json.dumps(meta),
                content=Content(text="hi")))
        assert push.accepted == 0
        await send(WebPushProvider("wp", {**base, "egress_allow": LOOPBACK}), t)
        assert push.accepted == 1
    finally:
        await push.stop()
    err = WebPushProvider.error(500, {}, b"INTERNAL-SECRET", "http://x.test")
    assert "INTERNAL-SECRET" not in str(err) and err.status == 500


def push_task(sub: dict, n: int = 1) -> DeliveryTask:
    return DeliveryTask(notification_id=f"wp-{n}", user_id=f"u{n}", channel="web", category="c",
                        address=json.dumps(sub), content=Content(text="hi"))


def webpush(**settings) -> WebPushProvider:
    return WebPushProvider("wp-egress", {"vapid_private_key": vapid_pem(), "vapid_subject": "mailto:ops@tidings.test",
                                         "allow_http": True, "egress_allow": LOOPBACK, **settings})


@pytest.mark.parametrize("failing", ["5xx", "hang"])
async def test_one_failing_push_endpoint_opens_its_own_breaker_not_the_shared_one(server, failing):
    clock = FakeClock()
    # The short timeout is what the hanging endpoint needs; the failing one gets a long one so
    # that a slow machine cannot turn its 503 into a client timeout before the sink counts it.
    provider = webpush(destination_breaker_failures=3, destination_timeout_s=0.2 if failing == "hang" else 1.5)
    slot = make_slot(provider, clock, failure_threshold=2)  # the shared breaker would open after 2
    good, bad = WebPushSink(), WebPushSink()
    await good.start()
    await bad.start()
    try:
        if failing == "5xx":
            bad.fail_status = 503
            bad_sub = bad.subscribe()
            bad_key = f"http://127.0.0.1:{bad.port}"
        else:  # a server the user controls that never answers in time (the slot's timeout_s is 10 s)
            bad_sub = {**good.subscribe(), "endpoint": server.url("/slow")}
            bad_key = f"http://127.0.0.1:{server.port}"

        async def run(sub: dict, n: int):
            return await asyncio.wait_for(deliver(push_task(sub, n), [slot], clock=clock, wall=clock.wall,
                                                  sleep=clock.sleep, rng=random.Random(0)), 5)

        first = await run(bad_sub, 1)
        assert (first.status, first.reason) == ("failed", "destination_error")
        assert [a.error_kind for a in first.attempts] == ["destination"] * 3
        assert "/push/" not in first.attempts[0].error and "/slow" not in first.attempts[0].error
        assert provider.destinations.is_open(bad_key)
        second = await run(bad_sub, 2)
        assert (second.status, second.reason) == ("failed", "destination_circuit_open")
        assert len(second.attempts) == 1 and "not tried again" in second.attempts[0].error
        assert slot.breaker.state == "closed" and slot.breaker.metrics()["failures"] == 0
        ok = await run(good.subscribe(), 3)  # another user's endpoint on the same provider
        assert (ok.status, ok.reason) == ("sent", "ok") and good.accepted == 1
        assert slot.breaker.state == "closed" and not provider.destinations.is_open(f"http://127.0.0.1:{good.port}")
        if failing == "5xx":
            assert bad.failed == 3  # the open breaker kept the fourth request from being made
        else:
            assert server.hits == {"/slow": 3}
    finally:
        await provider.close()
        await good.stop()
        await bad.stop()


async def test_push_gone_and_vapid_errors_keep_their_kinds_and_count_as_answers():
    provider = webpush(destination_breaker_failures=1)
    push = WebPushSink()
    await push.start()
    try:
        sub = push.subscribe()
        push.expire(sub)
        for _ in range(2):  # an answer, not the endpoint failing: its breaker never opens
            with pytest.raises(InvalidMessage) as exc:
                await provider.send(push_task(sub))
            assert reason_for(exc.value) == "address_gone"
        assert len(provider.destinations) == 0
        push.fail_status = 500
        with pytest.raises(DestinationError):
            await provider.send(push_task(push.subscribe()))
        with pytest.raises(DestinationCircuitOpen):
            await provider.send(push_task(push.subscribe()))
        assert push.failed == 1
    finally:
        await provider.close()
        await push.stop()


# -- refused and breaker-open destinations do not fail over --------------------------

async def test_a_refused_destination_is_not_tried_on_a_second_provider(sink):
    clock = FakeClock()
    strict = WebhookProvider("hook-strict", {"secret": SECRET, "timeout_s": 2})
    broad = WebhookProvider("hook-broad", {"secret": SECRET, "timeout_s": 2, "egress_allow": LOOPBACK})
    slots = [make_slot(strict, clock, priority=1), make_slot(broad, clock, priority=2)]
    try:
        out = await deliver(make_task(channel="webhook", address=sink.url), slots, clock=clock, wall=clock.wall,
                            sleep=clock.sleep, rng=random.Random(0))
        assert (out.status, out.reason) == ("failed", "destination_refused")
        assert [a.provider for a in out.attempts] == ["hook-strict"]
        assert sink.received == 0  # the broader allow-list never got to send it
        assert all(s.breaker.state == "closed" for s in slots)
    finally:
        await strict.close()
        await broad.close()


async def test_a_breaker_open_destination_is_not_tried_on_a_second_provider():
    clock = FakeClock()
    first = WebhookProvider("hook-a", {"secret": SECRET, "egress_allow": LOOPBACK, "destination_breaker_failures": 1})
    second = WebhookProvider("hook-b", {"secret": SECRET, "egress_allow": LOOPBACK})
    slots = [make_slot(first, clock, priority=1, max_attempts=1), make_slot(second, clock, priority=2, max_attempts=1)]
    dead = f"http://127.0.0.1:{free_port()}/hook"

    async def run(n: int):
        return await deliver(make_task(channel="webhook", address=dead, notification_id=f"n-{n}"), slots,
                             clock=clock, wall=clock.wall, sleep=clock.sleep, rng=random.Random(0))

    try:
        one = await run(1)  # a single destination_error still fails over
        assert one.reason == "destination_error"
        assert [a.provider for a in one.attempts] == ["hook-a", "hook-b"]
        two = await run(2)  # the first provider's breaker for it is open: not handed to the second
        assert two.reason == "destination_circuit_open"
        assert [a.provider for a in two.attempts] == ["hook-a"]
    finally:
        await first.close()
        await second.close()
