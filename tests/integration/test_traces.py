"""OpenTelemetry traces through a running engine (infra/telemetry.py, actors/spans.py):
the engine's process and every Ray actor's export over OTLP/HTTP to a real
receiver on loopback (sandbox/otlp.py), as they would to a collector."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from contextlib import asynccontextmanager

import msgspec
import pytest

from infra import streams
from policy.types import UserProfile
from sandbox import WebhookSink
from sandbox.otlp import OtlpSink, ReceivedSpan
from tests.integration.helpers import api_session, engine_config, serving, wait_rows

pytestmark = pytest.mark.integration

PATH = ("POST /v1/notifications", "ingest", "user_shard.handle", "channel_shard.deliver", "provider.call",
        "recorder.commit")
SPANS_S = 90.0  # spans leave each process within the batch processor's delay (5 s): generous on a busy machine


@asynccontextmanager
async def traced_engine(nats_url, database_url, home, ratio: float):
    otlp, hook = OtlpSink(), WebhookSink("test-secret", port=0)
    await otlp.start()
    await hook.start()
    cfg = engine_config(nats_url, database_url, home, webhook_url=hook.url, channels=("webhook",),
                        overrides={"telemetry": {"enabled": True, "otlp_endpoint": otlp.url, "sample_ratio": ratio}})
    try:
        async with serving(cfg, database_url, [UserProfile(user_id="u1")]) as eng:
            yield eng, otlp
    finally:
        await hook.stop()
        await otlp.stop()


def note(nid: str) -> dict:
    return {"id": nid, "user_id": "u1", "category": "job_alerts", "channels": ["webhook"],
            "content": {"text": "3 new jobs"}}


async def post(engine, nid: str, traceparent: str | None = None) -> None:
    headers = {"traceparent": traceparent} if traceparent else {}
    async with api_session() as s, s.post(f"{engine.base_url}/v1/notifications", json=note(nid),
                                          headers=headers) as r:
        assert r.status == 202, await r.text()


async def publish(engine, nid: str) -> None:
    """Straight onto JetStream, as a producer would: no traceparent header."""
    await engine.js.publish(streams.notify_subject(engine.cfg.nats, "job_alerts"), msgspec.json.encode(note(nid)))


async def trace_of(otlp: OtlpSink, trace_id: str, names: tuple[str, ...]) -> dict[str, ReceivedSpan]:
    """The spans of ``trace_id`` by name, once every one of ``names`` arrived."""
    deadline = time.monotonic() + SPANS_S
    while True:
        got = {s.name: s for s in otlp.traces().get(trace_id, [])}
        if set(names) <= set(got) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.25)


def assert_chain(got: dict[str, ReceivedSpan], first: str) -> None:
    """Each span's parent is the one before it on the way (the Recorder's is the
    UserShard's: it records what the shard hands it), each from its own process."""
    parents = {"ingest": "POST /v1/notifications", "user_shard.handle": "ingest",
               "channel_shard.deliver": "user_shard.handle", "provider.call": "channel_shard.deliver",
               "recorder.commit": "user_shard.handle"}
    for name, parent in parents.items():
        if name == first:
            continue
        assert got[name].parent_id == got[parent].span_id, (name, parent)
    assert got["provider.call"].attributes["tidings.provider"]
    assert got["provider.call"].attributes["tidings.ok"] is True
    assert got["channel_shard.deliver"].attributes["tidings.status"] == "sent"
    processes = {got[n].process for n in got}
    assert {"ingestor", "user_shard", "channel_shard.webhook", "recorder"} <= processes
    for s in got.values():
        assert s.end_ns >= s.start_ns > 0


async def test_one_trace_spans_the_whole_path(nats_url, database_url, ray_address, tmp_path):
    async with traced_engine(nats_url, database_url, str(tmp_path), 1.0) as (engine, otlp):
        # over HTTP with the caller's trace: the server span continues it
        trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
        nid = str(uuid.uuid4())
        await post(engine, nid, f"00-{trace_id}-{caller_span}-01")
        assert await wait_rows(engine.pool, [nid], 1) == 1
        got = await trace_of(otlp, trace_id, PATH)
        assert set(PATH) <= set(got), sorted(got)
        assert got["POST /v1/notifications"].parent_id == caller_span
        assert got["POST /v1/notifications"].process == "http"
        assert_chain(got, "POST /v1/notifications")
        for name in ("ingest", "user_shard.handle", "channel_shard.deliver", "recorder.commit"):
            assert got[name].attributes["tidings.notification_id"] == nid

        # straight onto NATS, no traceparent: at ratio 1 the Ingestor starts the trace
        nid2 = str(uuid.uuid4())
        await publish(engine, nid2)
        assert await wait_rows(engine.pool, [nid2], 1) == 1
        deadline = time.monotonic() + SPANS_S
        root = None
        while root is None and time.monotonic() < deadline:
            root = next((s for s in otlp.spans if s.name == "ingest"
                         and s.attributes.get("tidings.notification_id") == nid2), None)
            await asyncio.sleep(0.25)
        assert root is not None and root.parent_id == ""
        got2 = await trace_of(otlp, root.trace_id, PATH[1:])
        assert set(PATH[1:]) <= set(got2), sorted(got2)
        assert_chain(got2, "ingest")


async def test_unsampled_notifications_export_nothing(nats_url, database_url, ray_address, tmp_path):
    async with traced_engine(nats_url, database_url, str(tmp_path), 0.0) as (engine, otlp):
        quiet = [str(uuid.uuid4()) for _ in range(3)]
        await post(engine, quiet[0])  # no traceparent: a new trace, kept at ratio 0: never
        await post(engine, quiet[1], f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00")  # caller: not sampled
        await publish(engine, quiet[2])  # NATS, no header: the Ingestor's choice by id, at ratio 0: never
        assert await wait_rows(engine.pool, quiet, 3) == 3
        # a caller's sampled trace is followed whatever the ratio: it arrives, so the
        # export works, and it is the only trace there is
        trace_id = secrets.token_hex(16)
        nid = str(uuid.uuid4())
        await post(engine, nid, f"00-{trace_id}-{secrets.token_hex(8)}-01")
        assert await wait_rows(engine.pool, [nid], 1) == 1
        got = await trace_of(otlp, trace_id, PATH)
        assert set(PATH) <= set(got), sorted(got)
        assert set(otlp.traces()) == {trace_id}
        assert not any(s.attributes.get("tidings.notification_id") in quiet for s in otlp.spans)
