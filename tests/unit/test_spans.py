"""Spans per notification (actors/spans.py, infra/telemetry.py) with an in-memory
exporter: made only for sampled traces, linked to their parent, the provider
calls from the Attempts; nothing at all when telemetry is off."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from actors import spans
from infra import telemetry
from infra.config import TelemetryConfig
from policy.types import Attempt

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE}-00f067aa0ba902b7-01"
NOT_SAMPLED = f"00-{TRACE}-00f067aa0ba902b7-00"


@pytest.fixture
def exported(monkeypatch):
    """Telemetry on in this process, spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "_tracer", provider.get_tracer("test"))
    monkeypatch.setattr(telemetry, "_setting", (TelemetryConfig(enabled=True, sample_ratio=1.0), "test", False))
    return exporter


def test_the_flags_decide_without_parsing():
    assert telemetry.sampled(SAMPLED)
    assert not telemetry.sampled(NOT_SAMPLED)
    assert not telemetry.sampled(None) and not telemetry.sampled("01")
    assert telemetry.context_of("00-nothex-01") is None


def test_nothing_is_made_when_off_or_not_sampled(exported, monkeypatch):
    assert spans.start("x", None) is None
    assert spans.start("x", NOT_SAMPLED) is None
    monkeypatch.setattr(telemetry, "_tracer", None)
    assert spans.start("x", SAMPLED) is None
    assert spans.root("x", "any-id") is None
    assert exported.get_finished_spans() == ()


def test_a_child_continues_the_trace_and_passes_it_on(exported):
    span = spans.start("user_shard.handle", SAMPLED, at=100.0, attributes={"tidings.notification_id": "n"})
    assert span is not None
    carried = spans.parent_of(span)
    assert carried.startswith(f"00-{TRACE}-") and carried.endswith("-01")
    child = spans.start("channel_shard.deliver", carried, at=100.5)
    spans.provider_calls(child, [Attempt("hook-a", False, 100.6, 20.0, "503", "provider"),
                                 Attempt("hook-b", True, 100.7, 10.0)])
    spans.end(child, 100.9)
    spans.end(span, 101.0)
    got = {s.name + (s.attributes.get("tidings.provider") or ""): s for s in exported.get_finished_spans()}
    shard, deliver = got["user_shard.handle"], got["channel_shard.deliver"]
    failed, ok = got["provider.callhook-a"], got["provider.callhook-b"]
    assert shard.parent.span_id == 0x00F067AA0BA902B7 and shard.context.trace_id == int(TRACE, 16)
    assert deliver.parent.span_id == shard.context.span_id
    assert failed.parent.span_id == ok.parent.span_id == deliver.context.span_id
    assert failed.kind == SpanKind.CLIENT and failed.status.status_code == StatusCode.ERROR
    assert ok.status.status_code == StatusCode.UNSET
    assert (ok.start_time, ok.end_time) == (int(100.7e9), int(100.71e9))
    assert shard.start_time == int(100e9) and shard.end_time == int(101e9)


def test_a_root_is_chosen_by_the_notification_id(exported, monkeypatch):
    span = spans.root("ingest", "some-id")
    assert span is not None and span.parent is None
    monkeypatch.setattr(telemetry, "_setting", (TelemetryConfig(enabled=True, sample_ratio=0.0), "test", False))
    assert spans.root("ingest", "some-id") is None


def test_setup_off_leaves_no_tracer():
    telemetry.setup(TelemetryConfig(enabled=False), "test")
    assert telemetry.tracer() is None and telemetry.sample_ratio() == 0.0
    assert telemetry.traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert telemetry.traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def test_the_http_side_follows_only_a_well_formed_traceparent():
    from engine.http.tracing import TRACEPARENT

    assert TRACEPARENT.match("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    for bad in ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", "ff-" + "a" * 32 + "-" + "b" * 16 + "-01",
                "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "00-xyz", "x" * 4096, ""):
        assert not TRACEPARENT.match(bad), bad
