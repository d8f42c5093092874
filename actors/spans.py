"""Spans for one notification in an actor (``infra.telemetry``), cheap by design.

A notification is traced when the ``traceparent`` it carries says sampled; only
then is a span made. Everything else (telemetry off, no ``traceparent``, one
that says not sampled) returns None after a check of the flags: no span object,
no context, nothing per message. Times are wall-clock seconds (``time.time()``,
as the stage stamps of ``policy.trace``): several spans are made after the
fact from times measured anyway (the provider calls' Attempts, a commit).
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from infra import telemetry
from policy import trace as sampling
from policy.types import Attempt

Attributes = Mapping[str, str | int | float | bool]


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1e9)


def start(name: str, traceparent: str | None, *, at: float | None = None, attributes: Attributes | None = None,
          kind: SpanKind = SpanKind.INTERNAL) -> Span | None:
    """A span child of ``traceparent``, started ``at``; None unless it is sampled
    and telemetry is on here."""
    tracer = telemetry.tracer()
    if tracer is None or not telemetry.sampled(traceparent):
        return None
    ctx = telemetry.context_of(traceparent or "")
    if ctx is None:
        return None
    return tracer.start_span(name, context=ctx, kind=kind, start_time=_ns(at), attributes=attributes)


def root(name: str, notification_id: str, *, at: float | None = None, attributes: Attributes | None = None,
         kind: SpanKind = SpanKind.CONSUMER) -> Span | None:
    """A new trace for a notification that came without a ``traceparent``, when
    ``policy.trace.sampled`` chooses its id at ``telemetry.sample_ratio``."""
    tracer = telemetry.tracer()
    ratio = telemetry.sample_ratio()
    if tracer is None or not sampling.sampled(notification_id, ratio):
        return None
    return tracer.start_span(name, context=Context(), kind=kind,
                             start_time=_ns(at), attributes=attributes)


def end(span: Span, at: float | None = None, error: BaseException | str | None = None) -> None:
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error if isinstance(error, str) else type(error).__name__))
    span.end(end_time=_ns(at))


def parent_of(span: Span) -> str:
    """The ``traceparent`` a message carries to make ``span`` its parent."""
    return telemetry.traceparent_of(span)


def provider_calls(parent: Span, attempts: list[Attempt]) -> None:
    """One client span per provider call, from the Attempts the delivery made
    (their start and duration), children of ``parent``."""
    tracer = telemetry.tracer()
    if tracer is None:
        return
    ctx = trace.set_span_in_context(parent)
    for a in attempts:
        attrs: dict[str, str | int | float | bool] = {"tidings.provider": a.provider, "tidings.ok": a.ok}
        if a.error_kind:
            attrs["tidings.error_kind"] = a.error_kind
        span = tracer.start_span("provider.call", context=ctx, kind=SpanKind.CLIENT, start_time=_ns(a.at),
                                 attributes=attrs)
        end(span, a.at + a.duration_ms / 1000, None if a.ok else (a.error_kind or "failed"))
