"""The HTTP server span (``[telemetry]``, infra/telemetry.py): every request
handled inside a span that continues the caller's W3C ``traceparent`` when it
sends one (its sampling decision followed) or starts a trace kept at
``telemetry.sample_ratio``. The span is current while the handler runs, so a
notification published to NATS carries it (``notifications.accept``) and the
Ingestor continues the trace. Off, the middleware is not installed at all."""

from __future__ import annotations

import re

from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from infra import telemetry
from infra.config import TelemetryConfig

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")


def middleware(cfg: TelemetryConfig):
    """Set up this process's tracer; the middleware, or None when telemetry is off."""
    telemetry.setup(cfg, "http", root_ratio=True)
    tracer = telemetry.tracer()
    if tracer is None:
        return None

    @web.middleware
    async def traced(request: web.Request, handler):
        if request.headers.get("Upgrade", "").lower() == "websocket":
            # a socket lives for hours: one span over it would hold every operation sent on it
            # under a parent exported only at its end (or never, if the process dies)
            return await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        # only a well-formed traceparent, and no tracestate: the SDK logs a warning per bad
        # header, echoing what an unauthenticated caller sent
        header = request.headers.get("traceparent")
        parent = telemetry.context_of(header) if header and TRACEPARENT.match(header) else None
        with tracer.start_as_current_span(f"{request.method} {route}", context=parent, kind=SpanKind.SERVER,
                                          record_exception=False, set_status_on_exception=False) as span:
            if span.is_recording():
                span.set_attribute("http.request.method", request.method)
                span.set_attribute("http.route", route)
            try:
                response = await handler(request)
            except web.HTTPException as e:
                _answered(span, e.status)
                raise
            except BaseException as e:
                span.set_status(Status(StatusCode.ERROR, type(e).__name__))
                raise
            _answered(span, response.status)
            return response

    return traced


def _answered(span: trace.Span, status: int) -> None:
    if span.is_recording():
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))


async def flush(_app: web.Application) -> None:
    """At the server's clean-up: what this process's spans hold is exported (bounded)."""
    await telemetry.stop_flush()
