"""Both metrics endpoints of a running engine, scraped as Prometheus would: the
HTTP process's ``/metrics`` (prometheus-client) and the node's Ray metrics export
port, where the actors' ``ray.util.metrics`` series are (``ray_tidings_*``).
Notifications go to loopback SMTP and webhook servers; the webhook provider is
rate limited so that tokens are waited for and refused."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid

import msgspec
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from actors.metrics import SERIES
from engine.http.health import ReadyChecks
from infra import streams
from infra.config import Config
from policy.labels import CALL_RESULTS, CODES, FAMILIES, NONE, OTHER, STATUSES
from policy.types import CHANNELS, UserProfile
from sandbox import SmtpSink, WebhookSink
from tests.integration.helpers import engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

SCRAPE_S = 90.0  # Ray's agent exports every few seconds; the gauges are sampled every 5 s (actors/metrics.py)
RUN = uuid.uuid4().hex[:8]
SMTP, HOOK = f"smtp-{RUN}", f"hook-{RUN}"  # provider names only this module's engine uses


def renamed(cfg: Config) -> Config:
    """Providers named for this module, and a webhook provider slow enough (4/s,
    burst 1, half a second's wait at most) that some sends wait and some give up."""
    channels = dict(cfg.channels)
    email, hook = channels["email"], channels["webhook"]
    channels["email"] = msgspec.structs.replace(email, providers=[
        msgspec.structs.replace(email.providers[0], name=SMTP)])
    channels["webhook"] = msgspec.structs.replace(hook, providers=[
        msgspec.structs.replace(hook.providers[0], name=HOOK, rate_per_s=4.0, burst=1.0, max_wait_s=0.5)])
    return msgspec.structs.replace(cfg, channels=channels)


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, ray_address, tmp_path_factory):
    smtp = SmtpSink(port=0)
    smtp.start()
    hook = WebhookSink("test-secret", port=0)
    await hook.start()
    cfg = renamed(engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")),
                                smtp_port=smtp.port, webhook_url=hook.url,
                                # two users per shard's cache, ten users: some are evicted; the bulk
                                # lane yields for 30 s after the priority lane's one notification
                                overrides={"engine": {"max_cached_users": 2, "priority_yield_s": 30.0}}))
    people = [UserProfile(user_id=f"m{i}", addresses={} if i == 0 else {"email": f"m{i}@example.test"})
              for i in range(10)]
    try:
        async with serving(cfg, database_url, people) as eng:
            yield eng
    finally:
        smtp.stop()
        await hook.stop()


def families(text: str) -> dict[str, list]:
    """Samples by metric family name, parsed by prometheus-client's own parser."""
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name, []).extend(fam.samples)
    return out


def ray_scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


async def until(scrape, ok, what: str, why=lambda f: sorted(n for n in f if "tidings" in n)) -> dict[str, list]:
    """Scrape until ``ok(families)`` or ``SCRAPE_S`` passed; the last scrape
    (``why`` says what it lacked)."""
    deadline = time.monotonic() + SCRAPE_S
    while True:
        fams = families(await scrape())
        if ok(fams) or time.monotonic() > deadline:
            assert ok(fams), f"{what}: not seen within {SCRAPE_S:.0f} s: {why(fams)}"
            return fams
        await asyncio.sleep(1.0)


def matching(fams: dict[str, list], sample: str, **labels: str) -> list:
    """``sample``'s samples whose labels include ``labels``."""
    family = sample.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
    return [s for name in {family, family.removesuffix("_total")} for s in fams.get(name, [])
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]


def value(fams: dict[str, list], sample: str, **labels: str) -> float:
    """The sum of ``sample``'s values whose labels include ``labels``."""
    return sum(s.value for s in matching(fams, sample, **labels))


@ray.remote(num_cpus=0)
class CounterProbe:
    """A counter whose name lacks ``_total``, as ``tidings_retention_deleted``'s does."""

    def count(self, name: str) -> None:
        from ray.util import metrics

        metrics.Counter(name, description="probe").inc(1.0)


async def counter_alone_without_a_gauge(scrape) -> None:
    """Ray's OpenCensus path exports a deprecated gauge beside a counter whose name
    lacks ``_total`` unless RAY_EXPORT_COUNTER_AS_GAUGE=0 (engine/raybox.py RAY_ENV):
    only the counter is there."""
    name = f"tidings_probe_{RUN}"
    probe = CounterProbe.remote()
    try:
        await probe.count.remote(name)
        fams = await until(scrape, lambda f: value(f, f"ray_{name}_total") >= 1, "the probe's counter")
        assert not [x for fam in fams.values() for x in fam if x.name == f"ray_{name}"], "a gauge beside the counter"
    finally:
        ray.kill(probe)


async def test_both_endpoints_export_their_series_with_bounded_labels(engine, client):
    port = engine.ray_info.get("metrics_port")
    assert port, engine.ray_info
    base = engine.base_url
    # Ray and this process are shared by the session's modules, and counters of earlier ones
    # stay: what this test's work adds is the difference from here
    ray_before = families(await asyncio.to_thread(ray_scrape, port))
    async with client.get(f"{base}/metrics") as r:
        http_before = families(await r.text())

    def grew(fams: dict[str, list], before: dict[str, list], sample: str, **labels: str) -> float:
        """What ``sample``'s series matching ``labels`` added since ``before``, series by
        series (a worker's own, WorkerId among its labels): a worker of an earlier module
        whose series Ray has since dropped (120 s after it stopped) takes nothing away,
        as with Prometheus's ``increase``."""
        was = {frozenset(x.labels.items()): x.value for x in matching(before, sample, **labels)}
        return sum(x.value - was.get(frozenset(x.labels.items()), 0.0) for x in matching(fams, sample, **labels))

    # one high notification over NATS (the HTTP counters below stay the batch's): the bulk
    # lane hears the priority lane and yields while it takes the batch (tidings_bulk_yields_total)
    *bulk, _priority = engine.actors.ingestors
    heard = (await bulk[0].info.remote())["priority_busy_heard"]
    urgent = {"user_id": "m1", "category": "job_alerts", "channels": ["email"], "priority": "high",
              "content": {"subject": "now", "text": "hello"}}
    await engine.js.publish(streams.priority_subject(engine.cfg.nats, "job_alerts"), msgspec.json.encode(urgent))
    deadline = time.monotonic() + SCRAPE_S
    while (await bulk[0].info.remote())["priority_busy_heard"] == heard:
        assert time.monotonic() < deadline, "the bulk lane did not hear the priority lane"
        await asyncio.sleep(0.05)
    # m1..m9 get email and webhook; m0 has no address (suppressed, reason family "address");
    # "weekly_digest_x" is not a configured category (the HTTP counter says "other")
    batch = [{"user_id": f"m{i}", "category": "job_alerts" if i % 2 else "weekly_digest_x",
              "channels": ["email", "webhook"], "content": {"subject": f"s{i}", "text": "hello"}}
             for i in range(10)]
    async with client.post(f"{base}/v1/notifications", json=batch) as r:
        assert r.status == 202, await r.text()
        ids = [n["id"] for n in (await r.json())["notifications"]]
    # a payload that is not JSON: dead-lettered as payload.malformed, with a rejected row
    await engine.js.publish(streams.notify_subject(engine.cfg.nats, "job_alerts"), b"{not json")
    assert await wait_rows(engine.pool, ids, 20) == 20

    async def http_scrape() -> str:
        async with client.get(f"{base}/metrics") as r:
            assert r.status == 200
            return await r.text()

    async def from_ray() -> str:
        return await asyncio.to_thread(ray_scrape, port)

    # -- the HTTP process ------------------------------------------------------------
    fams = await until(http_scrape, lambda f: value(f, "tidings_ready", check="ray") == 1
                       and value(f, "tidings_ready", check="scheduler") == 1, "tidings_ready")
    assert {s.labels["check"] for s in fams["tidings_ready"]} == {f.name for f in msgspec.structs.fields(ReadyChecks)}
    assert grew(fams, http_before, "tidings_notifications_accepted_total", category="job_alerts") == 5
    assert grew(fams, http_before, "tidings_notifications_accepted_total", category=OTHER) == 5
    assert not any(s.labels["category"] == "weekly_digest_x" for s in fams["tidings_notifications_accepted"])
    assert grew(fams, http_before, "tidings_http_requests_total", route="/v1/notifications", status="202") == 1
    assert grew(fams, http_before, "tidings_publish_seconds_count") == 1

    # -- the actors, through Ray's metrics export port -------------------------------------
    def missing(f) -> list[str]:
        """What is not there yet."""
        wanted = {
            "email sent": value(f, "ray_tidings_deliveries_total", channel="email", provider=SMTP, status="sent",
                                reason="ok") >= 9,
            "rejected": grew(f, ray_before, "ray_tidings_deliveries_total", channel="*", status="rejected",
                             reason="payload") >= 1,
            "refused": value(f, "ray_tidings_ratelimit_refused_total", provider=HOOK) >= 1,
            "users cached": value(f, "ray_tidings_cache_entries", cache="users") >= 1,
            "dead letter": grew(f, ray_before, "ray_tidings_dead_letters_total", reason="payload.malformed") >= 1,
            "evicted": grew(f, ray_before, "ray_tidings_cache_evictions_total") >= 1,
            # the fallback counter moves only while Redis is away: test_provider_limits scrapes it
            **{name: f"ray_{name.removesuffix('_total')}" in f for name in SERIES
               if name != "tidings_provider_limit_fallback_total"},
        }
        return [k for k, ok in wanted.items() if not ok]

    fams = await until(from_ray, lambda f: not missing(f), "the actors' series", missing)
    assert grew(fams, ray_before, "ray_tidings_deliveries_total", channel="email", provider=NONE,
                status="suppressed", reason="address") >= 1
    assert value(fams, "ray_tidings_provider_call_seconds_count", channel="email", provider=SMTP, result="ok") >= 9
    assert grew(fams, ray_before, "ray_tidings_delivery_latency_seconds_count", channel="email", status="sent") >= 9
    assert value(fams, "ray_tidings_ratelimit_wait_seconds_count", channel="webhook", provider=HOOK) >= 1
    assert {s.labels["provider"] for s in fams["ray_tidings_breaker_state"]} >= {SMTP, HOOK}
    assert all(s.value in (0, 1, 2) for s in fams["ray_tidings_breaker_state"])
    assert {s.labels["lane"] for s in fams["ray_tidings_consumer_pending"]} >= {"bulk", "broadcast", "priority"}
    assert {s.labels["lane"] for s in fams["ray_tidings_consumer_ack_pending"]} >= {"bulk", "broadcast", "priority"}
    assert {(s.labels["kind"], s.labels["state"]) for s in fams["ray_tidings_scheduled_backlog"]} >= {
        (k, s) for k in ("deferred", "fallback", "digest") for s in ("due", "waiting")}
    # a refused webhook send is held to be tried again (engine.retry_failed_for_s): recorded as deferred
    assert grew(fams, ray_before, "ray_tidings_deliveries_total", channel="webhook", status="deferred",
                reason="retry") >= 1, [(x.labels, x.value) for x in fams["ray_tidings_deliveries"]
                                        if x.labels.get("channel") == "webhook"]

    # each worker's own series on Ray's OpenCensus path (engine/raybox.py RAY_ENV), as on its
    # OpenTelemetry path: an actor that stops does not take its share out of a summed counter
    ours = [x for name, fam in fams.items() if name.startswith("ray_tidings_") for x in fam]
    assert ours and all(x.labels.get("WorkerId") for x in ours), \
        sorted({x.name for x in ours if not x.labels.get("WorkerId")})
    await counter_alone_without_a_gauge(from_ray)

    # every label value is one the configuration or the code knows
    for s in fams["ray_tidings_deliveries"]:
        assert s.labels["status"] in STATUSES | {OTHER}
        assert s.labels["reason"] in CODES | FAMILIES | {OTHER}
        assert s.labels["channel"] in {*CHANNELS, "*", OTHER}
    for s in fams["ray_tidings_provider_call_seconds"]:
        assert s.labels["result"] in CALL_RESULTS | {OTHER}
