"""A loopback OTLP/HTTP trace receiver: ``POST /v1/traces`` with an
``ExportTraceServiceRequest`` in protobuf (what opentelemetry-exporter-otlp-proto-http
sends), decoded with opentelemetry-proto and kept as plain ``ReceivedSpan``s.

The engine's tests and ``tidings bench e2e --otlp`` point ``telemetry.otlp_endpoint``
here: the spans of every process (the HTTP one and each Ray actor's) arrive
the way a collector would get them."""

from __future__ import annotations

import gzip
from collections import defaultdict

import msgspec
from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from sandbox.http import _HttpSink

PROTOBUF = "application/x-protobuf"


class ReceivedSpan(msgspec.Struct, frozen=True):
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_id: str  # "" for a root
    name: str
    kind: int  # opentelemetry.proto Span.SpanKind
    start_ns: int
    end_ns: int
    status: int  # 0 unset, 1 ok, 2 error
    process: str  # the resource's tidings.process
    service: str  # the resource's service.name
    attributes: dict[str, str | int | float | bool]


def _value(v: AnyValue) -> str | int | float | bool:
    which = v.WhichOneof("value")
    return getattr(v, which) if which in ("string_value", "int_value", "double_value", "bool_value") else str(v)


class OtlpSink(_HttpSink):
    """Keeps every span it receives (``spans``), by trace (``traces()``);
    counts requests and spans."""

    _stats_name = "otlp"
    _stats_counts = ("requests", "received")

    def __init__(self, host: str = "127.0.0.1", port: int = 0, keep: bool = True):
        self.host, self.port, self.keep = host, port, keep
        self.spans: list[ReceivedSpan] = []
        self.requests = self.received = 0

    @property
    def url(self) -> str:
        """The base URL, as ``telemetry.otlp_endpoint`` takes it."""
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._handle)
        return app

    def traces(self) -> dict[str, list[ReceivedSpan]]:
        out: dict[str, list[ReceivedSpan]] = defaultdict(list)
        for s in self.spans:
            out[s.trace_id].append(s)
        return dict(out)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        try:
            export.ParseFromString(body)
        except DecodeError:
            return web.Response(status=400, text="not an ExportTraceServiceRequest")
        self.requests += 1
        for rs in export.resource_spans:
            res = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    self.received += 1
                    if self.keep:
                        self.spans.append(ReceivedSpan(
                            trace_id=sp.trace_id.hex(), span_id=sp.span_id.hex(), parent_id=sp.parent_span_id.hex(),
                            name=sp.name, kind=sp.kind, start_ns=sp.start_time_unix_nano,
                            end_ns=sp.end_time_unix_nano, status=sp.status.code,
                            process=str(res.get("tidings.process", "")), service=str(res.get("service.name", "")),
                            attributes={a.key: _value(a.value) for a in sp.attributes}))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF)
