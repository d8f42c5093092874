"""OpenTelemetry traces: one tracer provider per process, set up from ``[telemetry]``.

The engine's process (HTTP) and every actor's process call ``setup`` with the
configuration they are given; spans go through a ``BatchSpanProcessor`` (a
background thread: a span's end only queues it) to the OTLP/HTTP receiver at
``otlp_endpoint``. Where traces start decides the sampling:

* HTTP: ``ParentBased(TraceIdRatioBased(sample_ratio))``: a caller's
  ``traceparent`` is followed (sampled or not), a request without one starts a
  trace kept at ``sample_ratio`` (``root_ratio``).
* Actors: ``ParentBased(ALWAYS_ON)``: they continue the trace their message
  carries, and start one only for a notification published straight to NATS
  without a ``traceparent`` that ``policy.trace.sampled`` chose by its id (the
  decision is a crc32, made before any span object exists).

The provider is this module's, not OpenTelemetry's global one (which can be set
once per process): a process that runs one engine after another (the tests)
sets up again. Off (the default), ``tracer()`` is None and callers do nothing.
A ``traceparent`` crosses processes as its W3C text (``traceparent_of``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec
from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from infra import logs
from infra.config import Config, LoggingConfig, TelemetryConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

EXPORT_TIMEOUT_S = 10.0  # one OTLP request; a receiver away costs the exporter thread, never a caller
# the longest a clean stop waits for the spans to go (``stop_flush``): the SDK's own force_flush
# exports the whole queue, retrying a receiver that is away, whatever timeout it is given
FLUSH_S = 5.0
PROPAGATOR = TraceContextTextMapPropagator()
TRACES_PATH = "/v1/traces"


class Observe(msgspec.Struct, frozen=True):
    """What an actor given only its own section of the config (a ChannelShard,
    the Recorder) needs to set up its traces and logs."""

    telemetry: TelemetryConfig = TelemetryConfig()
    logging: LoggingConfig = LoggingConfig()


def observe(cfg: Config) -> bytes:
    return msgspec.msgpack.encode(Observe(cfg.telemetry, cfg.logging))


_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_setting: tuple | None = None


def tracer() -> trace.Tracer | None:
    """This process's tracer; None while telemetry is off."""
    return _tracer


def sample_ratio() -> float:
    """The share of new traces kept (0 while telemetry is off)."""
    return _setting[0].sample_ratio if _setting else 0.0


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a receiver's base URL (as OTEL_EXPORTER_OTLP_ENDPOINT is read)."""
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def setup(cfg: TelemetryConfig, process: str, *, root_ratio: bool = False) -> None:
    """Set up (or switch off) this process's tracer. ``process`` names it in
    the spans' resource (``tidings.process``); ``root_ratio``: traces started
    here without a parent are sampled at ``sample_ratio`` (HTTP), else every
    span started is kept (actors: they decide before starting one). The same
    settings again change nothing."""
    global _provider, _tracer, _setting
    setting = (cfg, process, root_ratio) if cfg.enabled else None
    if setting == _setting:
        return
    old, _provider, _tracer, _setting = _provider, None, None, setting
    if old is not None:
        old.shutdown()  # exports what it holds first
    if setting is None:
        return
    # the SDK and the exporter only where telemetry is on (~40 ms of imports per process)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    sampler = ParentBased(TraceIdRatioBased(cfg.sample_ratio) if root_ratio else ALWAYS_ON)
    resource = Resource.create({"service.name": cfg.service_name, "tidings.process": process})
    provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=True)
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=traces_url(cfg.otlp_endpoint), timeout=EXPORT_TIMEOUT_S)))
    _provider, _tracer = provider, provider.get_tracer("tidings")


def setup_actor(blob: bytes | None, process: str) -> None:
    """Traces and logs of an actor's process from ``observe``'s bytes (None: the defaults)."""
    o = msgspec.msgpack.decode(blob, type=Observe) if blob else Observe()
    logs.setup(o.logging, process)
    setup(o.telemetry, process)


def flush() -> None:
    """Export what is waiting, in this thread, however long it takes (see ``stop_flush``)."""
    if _provider is not None:
        try:
            _provider.force_flush()
        except Exception as e:  # noqa: BLE001 - spans lost at a stop must not fail it
            log.warning("span export at stop failed: %s", type(e).__name__)


async def stop_flush() -> None:
    """At a clean stop (an actor is killed right after): export what is
    waiting in a thread, for at most ``FLUSH_S``; a receiver that is away
    loses those spans rather than holding the stop."""
    if _provider is None:
        return
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.to_thread(flush)), FLUSH_S)
    except TimeoutError:
        log.warning("spans not exported within %.0f s at stop (the OTLP receiver is away?)", FLUSH_S)


def sampled(traceparent: str | None) -> bool:
    """Whether a W3C ``traceparent`` says its trace is sampled, read from its
    flags without parsing the rest (the per-message check must cost nothing)."""
    return traceparent is not None and len(traceparent) == 55 and traceparent[-1] in "13579bdf"


def context_of(traceparent: str) -> Context | None:
    """The context whose remote parent ``traceparent`` names; None when it does not parse."""
    ctx = PROPAGATOR.extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def traceparent_of(span: trace.Span) -> str:
    """The W3C ``traceparent`` that makes ``span`` the parent in another process."""
    c = span.get_span_context()
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The current span's ``traceparent`` (what to put on a message this
    process publishes), sampled or not: a message that says "not sampled" is
    not traced by the Ingestor either. None without a current span."""
    span = trace.get_current_span(otel_context.get_current())
    return traceparent_of(span) if span.get_span_context().is_valid else None
