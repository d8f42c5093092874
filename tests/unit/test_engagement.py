"""Engagement events and "fallback unless opened", the parts without I/O: the
event body, the clock check, timeline entries, the request field's validation
and the fallback check's decision."""

from __future__ import annotations

import msgspec
import orjson
import pytest

from engine.http.common import Problem
from engine.http.notifications import check, decode_submission
from policy.release import answered
from stores.engagement import MAX_CLOCK_AHEAD_S, Report, as_entries, clock_error

AVAILABLE = frozenset({"email", "in_app"})
_report = msgspec.json.Decoder(Report)


def problem(fn, *args):
    with pytest.raises(Problem) as info:
        fn(*args)
    return info.value.status, orjson.loads(info.value.body)


def test_report_decodes_with_at_optional():
    assert _report.decode(b'{"channel": "push", "type": "opened"}') == Report(channel="push", type="opened")
    assert _report.decode(b'{"channel": "in_app", "type": "clicked", "at": 1.5e9}').at == 1.5e9


@pytest.mark.parametrize("body, path", [
    (b'{"channel": "push", "type": "read"}', "$.type"),
    (b'{"channel": "fax", "type": "opened"}', "$.channel"),
    (b'{"channel": "push", "type": "opened", "at": -1}', "$.at"),
    (b'{"channel": "push"}', "type"),
    (b'{"channel": "push", "type": "opened", "url": "x"}', "url"),
])
def test_report_rejects(body, path):
    with pytest.raises(msgspec.ValidationError) as info:
        _report.decode(body)
    assert path in str(info.value)


def test_clock_error_allows_drift_only():
    now = 1_700_000_000.0
    assert clock_error(Report(channel="push", type="opened"), now) is None
    assert clock_error(Report(channel="push", type="opened", at=now + MAX_CLOCK_AHEAD_S), now) is None
    assert clock_error(Report(channel="push", type="opened", at=now - 86400), now) is None
    error = clock_error(Report(channel="push", type="opened", at=now + MAX_CLOCK_AHEAD_S + 60), now)
    assert error is not None and error["field"] == "$.at" and "future" in error["reason"]


def test_entries_grouped_by_channel_in_row_order():
    rows = [{"channel": "push", "type": "opened", "at": 10, "source": "api"},
            {"channel": "in_app", "type": "opened", "at": 11, "source": "inbox"},
            {"channel": "push", "type": "clicked", "at": 12, "source": "api"}]
    assert as_entries(rows) == {
        "push": [{"event": "opened", "at": 10.0, "source": "api"}, {"event": "clicked", "at": 12.0, "source": "api"}],
        "in_app": [{"event": "opened", "at": 11.0, "source": "inbox"}]}


def test_fallback_unless_needs_fallback_after_s():
    body = b'''[{"user_id": "u", "category": "c", "channels": ["in_app"], "fallback": ["email"],
                 "content": {"subject": "s", "text": "t"}, "fallback_after_s": 60, "fallback_unless": "opened"},
                {"user_id": "u", "category": "c", "channels": ["in_app"], "fallback": ["email"],
                 "content": {"subject": "s", "text": "t"}, "fallback_unless": "delivered"}]'''
    reqs, many = decode_submission(body)
    assert reqs[0].fallback_unless == "opened"
    status, answer = problem(check, reqs, AVAILABLE, many, 10)
    assert status == 422
    assert answer["errors"] == [{"field": "$[1].fallback_unless", "reason": "needs fallback_after_s (the time to wait)"}]
    check(reqs[:1], AVAILABLE, True, 10)  # the first alone is fine


def test_fallback_unless_only_takes_delivered_or_opened():
    status, answer = problem(decode_submission, b'{"user_id": "u", "category": "c", "channels": ["in_app"], '
                                                b'"fallback_after_s": 5, "fallback_unless": "clicked"}')
    assert status == 422 and answer["errors"][0]["field"] == "$.fallback_unless"


@pytest.mark.parametrize("unless, statuses, engaged, expected", [
    (None, {"sent"}, False, False),
    (None, {"sent", "delivered"}, False, True),
    (None, {"sent"}, True, True),  # an open implies delivery
    ("delivered", {"delivered"}, False, True),
    ("opened", {"delivered"}, False, False),  # delivered is not enough
    ("opened", {"sent"}, True, True),
    ("opened", set(), False, False),
])
def test_answered(unless, statuses, engaged, expected):
    assert answered(unless, statuses, engaged) is expected
