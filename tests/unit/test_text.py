"""policy.text.printable, and that provider texts reach the tracking row clean:
one NUL or lone surrogate in a provider's answer must not fail the batch's write."""

from __future__ import annotations

import random

import msgspec
import orjson
from fakes import FakeClock, FakeProvider, make_slot, make_task
from hypothesis import given, strategies as st

from actors.delivery import deliver
from actors.recorder import row
from policy.text import ELLIPSIS, REPLACEMENT, printable
from policy.types import Attempt, Outcome
from providers.errors import InvalidMessage, ProviderError

C0_BUT_TAB_AND_LF = {chr(c) for c in range(0x20)} - {"\t", "\n"}


def test_controls_are_replaced_surrogates_dropped_tabs_and_newlines_kept():
    assert printable("a\x00b\x1bc\x7f\r\n\td\ud800e\udfff") == f"a{REPLACEMENT}b{REPLACEMENT}c{REPLACEMENT}{REPLACEMENT}\n\tde"
    assert printable(None) is None
    assert printable("") == ""
    assert printable("héllo ✓ 日本 😀") == "héllo ✓ 日本 😀"


def test_long_text_is_cut_with_an_ellipsis():
    assert printable("x" * 10, 5) == "xxxxx" + ELLIPSIS
    assert printable("x" * 5, 5) == "xxxxx"
    assert len(printable("\x00" * 100_000)) == 501


@given(st.text(), st.integers(min_value=0, max_value=600))
def test_printable_output_is_storable_and_bounded(text, limit):
    out = printable(text, limit)
    assert "\x00" not in out and not (set(out) & C0_BUT_TAB_AND_LF)
    assert not any("\ud800" <= c <= "\udfff" for c in out)
    assert len(out) <= limit + 1
    out.encode("utf-8")  # never raises


async def test_a_provider_error_with_nul_and_surrogates_is_sanitized_in_the_outcome():
    clock = FakeClock()
    nasty = "bad\x00answer \udc80\ud800 from \x1b[31mprovider" + "!" * 2000
    provider = FakeProvider("ses", [ProviderError(nasty), InvalidMessage("refused\x00")])
    out = await deliver(make_task(), [make_slot(provider, clock)], clock=clock, wall=clock.wall,
                        sleep=clock.sleep, rng=random.Random(0))
    assert out.status == "failed" and [a.ok for a in out.attempts] == [False, False]
    first, second = (a.error for a in out.attempts)
    assert first is not None and second is not None
    assert first.startswith(f"bad{REPLACEMENT}answer  from {REPLACEMENT}[31mprovider") and len(first) <= 501
    assert second == f"refused{REPLACEMENT}"
    orjson.dumps(msgspec.structs.asdict(out.attempts[0]))  # jsonb-able


def test_the_recorder_cleans_what_it_copies_whoever_built_the_outcome():
    o = Outcome("00000000-0000-0000-0000-000000000001", "u", "email", "c", "failed", "provider_error", 1.0, 2.0,
                provider="p\x00", provider_message_id="id\x00\ud800",
                attempts=[Attempt("p", False, 1.0, 5.0, error="e\x00\udc00", error_kind="provider")],
                detail="d\x00" * 3)
    r = row(o)
    text = "".join(str(v) for v in r)
    assert "\x00" not in text and "\\u0000" not in text
    text.encode("utf-8")
    assert r[8] == f"id{REPLACEMENT}"
    assert orjson.loads(r[10])[0]["error"] == f"e{REPLACEMENT}"
    assert orjson.loads(r[11]) == {"detail": f"d{REPLACEMENT}" * 3}
