"""Log lines of every process (the engine's and each actor's): readable text by
default, JSON lines with ``[logging] format = "json"``.

Each line says, when it knows them, the notification it is about and the trace
and span it belongs to: the notification id from the record (``extra=
{"notification_id": …}``) or from ``NOTIFICATION_ID`` (``about``), the trace
from the current OpenTelemetry span. Nothing else is added: no request bodies,
no addresses, no user data beyond what a message itself says (and messages
name ids, never addresses or content)."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
from collections.abc import Iterator

import orjson
from opentelemetry import trace

from infra.config import LoggingConfig

# the notification being handled, for lines that do not name it themselves
NOTIFICATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("notification_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_OURS = "_tidings_handler"  # marks the handler ``setup`` installed, so a second call replaces it


@contextlib.contextmanager
def about(notification_id: str) -> Iterator[None]:
    """Lines logged inside name ``notification_id``."""
    token = NOTIFICATION_ID.set(notification_id)
    try:
        yield
    finally:
        NOTIFICATION_ID.reset(token)


def ids(record: logging.LogRecord) -> dict[str, str]:
    """The notification, trace and span ids a line carries (those known): the
    trace from the current span, else from the record's ``traceparent`` (an
    actor's line about a traced notification it handles outside a span)."""
    out = {}
    nid = getattr(record, "notification_id", None) or NOTIFICATION_ID.get()
    if nid:
        out["notification_id"] = str(nid)
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        out["trace_id"] = f"{ctx.trace_id:032x}"
        out["span_id"] = f"{ctx.span_id:016x}"
    else:
        parent = getattr(record, "traceparent", None)
        if isinstance(parent, str) and len(parent) == 55:
            out["trace_id"], out["span_id"] = parent[3:35], parent[36:52]
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601 with ms), ``level``,
    ``logger``, ``message``, ``process`` (which part of the engine), the ids
    of ``ids`` and ``exc`` (the traceback) when there is one."""

    def __init__(self, process: str = ""):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": _iso(record.created), "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        if self.process:
            out["process"] = self.process
        out.update(ids(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # a line is a line: newlines inside the message or traceback stay escaped in the JSON string
        try:
            return orjson.dumps(out, default=str).decode()
        except orjson.JSONEncodeError:  # a lone surrogate (undecodable bytes as text): escaped, kept
            return orjson.dumps({k: v.encode("utf-8", "backslashreplace").decode() if isinstance(v, str) else v
                                 for k, v in out.items()}, default=str).decode()


class TextFormatter(logging.Formatter):
    """The readable default, with ``[notification=… trace=…]`` when a line has them."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        known = ids(record)
        if not known:
            return line
        tags = " ".join(f"{k.removesuffix('_id')}={v}" for k, v in known.items() if k != "span_id")
        head, sep, rest = line.partition("\n")  # before a traceback
        return f"{head} [{tags}]{sep}{rest}"


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def formatter(cfg: LoggingConfig, process: str = "") -> logging.Formatter:
    return JsonFormatter(process) if cfg.format == "json" else TextFormatter()


def setup(cfg: LoggingConfig, process: str = "", level: int | None = None) -> None:
    """The root logger of this process writes to stderr in ``cfg``'s format at
    ``cfg``'s level (or ``level``). Called again (a test engine after another,
    an actor restarted), it replaces what it set before; other handlers (a
    test's capture) are left alone, their format made the same."""
    root = logging.getLogger()
    fmt = formatter(cfg, process)
    for h in list(root.handlers):
        if getattr(h, _OURS, False):
            root.removeHandler(h)
        elif isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.stdout):
            root.removeHandler(h)  # basicConfig's: ours says the same in the configured format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(level if level is not None else getattr(logging, cfg.level.upper()))
