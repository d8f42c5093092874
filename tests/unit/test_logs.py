"""Log lines (infra/logs.py): JSON lines with the notification and trace ids, the
readable text default, and set-up from [logging]."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from infra import logs
from infra.config import ConfigError, LoggingConfig, convert


@pytest.fixture
def capture():
    """A logger of its own writing through the formatter under test into a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger(f"test.logs.{id(out)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    def use(fmt: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
        handler.setFormatter(fmt)
        return logger, out

    yield use
    logger.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]  # each line alone is valid JSON


def test_json_lines_carry_the_notification_and_trace_ids(capture):
    log, out = capture(logs.JsonFormatter("user_shard"))
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        log.warning("provider %s said no", "hook", extra={"notification_id": "n-1"})
    ctx = span.get_span_context()
    with logs.about("n-2"):
        log.info("about the second")
    log.error("nothing known")
    first, second, third = lines(out)
    assert first["message"] == "provider hook said no"
    assert first["level"] == "warning" and first["process"] == "user_shard" and first["logger"] == log.name
    assert first["notification_id"] == "n-1"
    assert first["trace_id"] == f"{ctx.trace_id:032x}" and first["span_id"] == f"{ctx.span_id:016x}"
    assert first["ts"].endswith("Z")
    assert second["notification_id"] == "n-2" and "trace_id" not in second
    assert "notification_id" not in third and "trace_id" not in third


def test_a_traceparent_on_the_record_names_the_trace_outside_a_span(capture):
    log, out = capture(logs.JsonFormatter())
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    log.warning("x", extra={"notification_id": "n", "traceparent": f"00-{trace_id}-{span_id}-01"})
    log.warning("y", extra={"traceparent": "garbage"})
    first, second = lines(out)
    assert (first["trace_id"], first["span_id"]) == (trace_id, span_id)
    assert "trace_id" not in second


def test_a_traceback_and_newlines_stay_inside_one_line(capture):
    log, out = capture(logs.JsonFormatter())
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        log.exception("failed:\nmulti-line", extra={"notification_id": "n-3"})
    [line] = lines(out)
    assert line["message"] == "failed:\nmulti-line"
    assert "ValueError: bad" in line["exc"] and line["notification_id"] == "n-3"


def test_text_is_the_default_and_names_the_ids_it_knows(capture):
    log, out = capture(logs.formatter(LoggingConfig()))
    log.warning("plain")
    log.warning("about one", extra={"notification_id": "n-4"})
    plain, tagged = out.getvalue().splitlines()
    assert plain.endswith(": plain")
    assert tagged.endswith(": about one [notification=n-4]")


def test_setup_replaces_its_handler_and_sets_the_level():
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        logs.setup(LoggingConfig(format="json", level="info"), "engine")
        logs.setup(LoggingConfig(format="json", level="error"), "engine")
        ours = [h for h in root.handlers if getattr(h, logs._OURS, False)]
        assert len(ours) == 1 and isinstance(ours[0].formatter, logs.JsonFormatter)
        assert root.level == logging.ERROR
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in before[0]:
            root.addHandler(h)
        root.setLevel(before[1])


def test_bad_logging_and_telemetry_settings_are_named():
    with pytest.raises(ConfigError, match="logging.format"):
        convert({"logging": {"format": "xml"}})
    with pytest.raises(ConfigError, match="telemetry.otlp_endpoint"):
        convert({"telemetry": {"otlp_endpoint": "collector:4318"}})
    with pytest.raises(ConfigError, match="telemetry.sample_ratio"):
        convert({"telemetry": {"sample_ratio": 2}})


def test_a_json_line_keeps_a_message_with_a_lone_surrogate():
    record = logging.LogRecord("tidings.x", logging.WARNING, __file__, 1, "bad name %s", ("a\udcff",), None)
    line = logs.JsonFormatter().format(record)
    assert json.loads(line)["message"] == "bad name a\\udcff"
