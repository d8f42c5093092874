"""What a cancellation answers per channel (policy/cancel.py)."""

from __future__ import annotations

from policy.api import ChannelCancel
from policy.cancel import answers, anything_cancelled, why_not


def test_each_channel_says_what_became_of_it():
    out = answers({"email": "cancelled", "sms": "sent", "push": "deferred", "web": "cancelled"},
                  cancelled={"email", "fallback"}, releasing={"push"})
    assert out == [
        ChannelCancel(channel="email", result="cancelled", status="cancelled"),
        ChannelCancel(channel="fallback", result="cancelled", status=None),
        ChannelCancel(channel="push", result="releasing", status="deferred"),
        ChannelCancel(channel="sms", result="final", status="sent"),
        ChannelCancel(channel="web", result="already_cancelled", status="cancelled"),
    ]
    assert anything_cancelled(out)


def test_a_repeated_cancellation_still_counts_as_cancelled():
    assert anything_cancelled(answers({"email": "cancelled"}, set(), set()))


def test_nothing_held_is_nothing_cancelled_and_each_says_why():
    out = answers({"email": "sent", "sms": "digested"}, set(), {"sms"})
    assert not anything_cancelled(out)
    assert [why_not(c) for c in out] == [
        "not held: sent", "being released by the Scheduler now; read the notification for its outcome"]


def test_no_rows_no_answers():
    assert answers({}, set(), set()) == []
    assert not anything_cancelled([])


def test_a_check_an_earlier_cancel_took_answers_already_cancelled():
    """A fallback check has no tracking row: its held row's mark (``earlier``) says it."""
    out = answers({"webhook": "sent"}, set(), set(), earlier={"fallback"})
    assert out == [ChannelCancel(channel="fallback", result="already_cancelled", status=None),
                   ChannelCancel(channel="webhook", result="final", status="sent")]
    assert anything_cancelled(out)
