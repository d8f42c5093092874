"""providers.sms.segments (GSM-7 / UCS-2 segment counting), providers.sms.e164
and the checks every SMS provider shares (providers.sms)."""

import itertools
import math
import string

import pytest
from hypothesis import given, settings, strategies as st

from policy.types import Content, DeliveryTask
from providers.errors import ConfigurationError, InvalidMessage
from providers.sms import check_segments, max_segments_setting, message_text, recipient, sender
from providers.sms.e164 import E164, is_e164, normalize
from providers.sms.segments import CONCATENATED, GSM7_BASIC, GSM7_EXTENSION, SINGLE, count, encoding, split, units

GSM_CHARS = "".join(sorted(GSM7_BASIC | GSM7_EXTENSION))
gsm_text = st.text(alphabet=GSM_CHARS, max_size=700)
any_text = st.text(max_size=400)
# Non-GSM text that stresses the limits: Cyrillic (1 unit) mixed with emoji (2 units).
ucs2_text = st.text(alphabet="жщ😀🎉€a", min_size=1, max_size=400).filter(lambda t: encoding(t) == "UCS-2")


# -- segments: examples -------------------------------------------------------

def test_gsm_alphabet_is_the_03_38_table():
    assert len(GSM7_BASIC) == 127 and len(GSM7_EXTENSION) == 10  # 128 positions less ESC
    assert set(string.ascii_letters + string.digits) <= GSM7_BASIC
    assert {"@", "£", "¥", "è", "Ç", "Δ", "ß", "¡", "§", "¿", "à", "\n", "\r"} <= GSM7_BASIC
    assert GSM7_EXTENSION == set("\f^{}\\[~]|€")
    # Lookalikes that are not in it: lower-case ç, backtick, the escape itself, a tab.
    for c in ("ç", "`", "\x1b", "\t", "ê", "’"):
        assert encoding(f"abc{c}") == "UCS-2", c


@pytest.mark.parametrize("text, expected", [
    ("", ("GSM-7", 0, 0)),
    ("a" * 160, ("GSM-7", 1, 160)),
    ("a" * 161, ("GSM-7", 2, 161)),
    ("a" * 306, ("GSM-7", 2, 306)),
    ("a" * 307, ("GSM-7", 3, 307)),
    ("€" * 80, ("GSM-7", 1, 160)),          # extension characters cost two septets
    ("€" * 81, ("GSM-7", 2, 162)),
    ("[]" * 40, ("GSM-7", 1, 160)),
    ("ж" * 70, ("UCS-2", 1, 70)),
    ("ж" * 71, ("UCS-2", 2, 71)),
    ("ж" * 134, ("UCS-2", 2, 134)),
    ("ж" * 135, ("UCS-2", 3, 135)),
    ("😀" * 35, ("UCS-2", 1, 70)),          # an emoji is a surrogate pair
    ("😀" * 36, ("UCS-2", 2, 72)),
    ("a" * 159 + "ç", ("UCS-2", 3, 160)),   # one non-GSM character makes all of it UCS-2
])
def test_count_examples(text, expected):
    assert count(text) == expected


def test_escape_sequences_and_surrogate_pairs_are_not_split():
    # 152 septets then "€" (2): it does not fit in the first part's 153 and moves whole.
    parts = split("a" * 152 + "€" + "b" * 10)
    assert [units(p, "GSM-7") for p in parts] == [152, 12]
    # Which can cost a segment: 2 x 153 septets of payload, but the escapes straddle.
    text = "a" * 152 + "€" + "a" * 150 + "€"
    assert units(text) == 306 and count(text) == ("GSM-7", 3, 306)
    # 66 units then an emoji (2): the pair goes to the next part.
    parts = split("ж" * 66 + "😀" + "ж" * 10)
    assert [units(p, "UCS-2") for p in parts] == [66, 12]
    assert count("ж" * 66 + "😀" + "ж" * 66 + "😀") == ("UCS-2", 3, 136)


def test_single_segment_is_one_part():
    assert split("hello") == ["hello"] and split("") == []
    assert split("😀" * 35) == ["😀" * 35]


# -- segments: properties -----------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.one_of(gsm_text, any_text, ucs2_text))
def test_split_reassembles_and_respects_the_limits(text):
    enc, n, u = count(text)
    parts = split(text)
    assert "".join(parts) == text
    assert len(parts) == n
    assert u == units(text, enc)
    if n <= 1:
        assert u <= SINGLE[enc]
        return
    assert u > SINGLE[enc]
    room = CONCATENATED[enc]
    sizes = [units(p, enc) for p in parts]
    assert all(0 < s <= room for s in sizes)
    # Greedy, as carriers pack: a part ends only when its next character does not fit.
    for part, nxt in itertools.pairwise(parts):
        assert units(part, enc) + units(nxt[0], enc) > room
    # Moving a 2-unit character never costs more than 1 unit of room per part.
    assert math.ceil(u / room) <= n <= math.ceil(u / (room - 1))


@settings(max_examples=200, deadline=None)
@given(gsm_text)
def test_gsm_text_counts_septets(text):
    assert encoding(text) == "GSM-7"
    assert count(text)[2] == len(text) + sum(c in GSM7_EXTENSION for c in text)


@settings(max_examples=200, deadline=None)
@given(any_text.filter(lambda t: encoding(t) == "UCS-2"))
def test_ucs2_text_counts_utf16_code_units(text):
    assert any(c not in GSM7_BASIC and c not in GSM7_EXTENSION for c in text)
    assert count(text)[2] == len(text.encode("utf-16-le", "surrogatepass")) // 2


# -- E.164 --------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("+14155552671", "+14155552671"),
    ("+1 (415) 555-2671", "+14155552671"),
    ("0049 30 1234567", "+49301234567"),
    ("+44.20.7946.0958", "+442079460958"),
    ("+33\u00a01\u00a023\u00a045\u00a067\u00a089", "+33123456789"),   # non-breaking spaces
    ("+49\u2013170\u20131234567", "+491701234567"),                  # en dashes
    (" +31 6 12345678 ", "+31612345678"),
    ("+1234567", "+1234567"),                                         # 7 digits: the shortest
    ("+123456789012345", "+123456789012345"),                         # 15: the longest
])
def test_normalize_examples(raw, expected):
    assert normalize(raw) == expected and is_e164(expected)


@pytest.mark.parametrize("raw, why", [
    ("", "empty"),
    (" - ", "empty"),
    ("4155552671", "not international"),
    ("(415) 555-2671", "not international"),
    ("+0123456789", "cannot start with 0"),
    ("000123456789", "cannot start with 0"),
    ("+123456", "too short: 6 digits"),
    ("+1234567890123456", "too long: 16 digits"),
    ("+1415555267x", "character 'x'"),
    ("+1/415/5552671", "character '/'"),
    ("+١٤١٥٥٥٥٢٦٧١", "only digits 0-9"),                              # Arabic-Indic digits
    ("+", "no digits"),
    ("++14155552671", "character '+'"),
])
def test_normalize_says_why_it_refuses(raw, why):
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace("+", r"\+")):
        normalize(raw)


def test_normalize_refuses_non_strings():
    with pytest.raises(ValueError, match="string"):
        normalize(14155552671)  # type: ignore[arg-type]


# Mostly nothing between digits, sometimes what people type.
separator = st.sampled_from(["", "", "", " ", "-", ".", "(", ")", "\u00a0", "\u2013", "\t", " - "])


@st.composite
def formatted_numbers(draw):
    digits = draw(st.sampled_from("123456789")) + draw(st.text(alphabet="0123456789", min_size=6, max_size=14))
    seps = draw(st.lists(separator, min_size=len(digits) + 2, max_size=len(digits) + 2))
    prefix = "+" if draw(st.booleans()) else "00"
    body = "".join(s + d for s, d in zip(seps, digits, strict=False))  # the last two separators frame the number
    return digits, seps[-2] + prefix + body + seps[-1]


@settings(max_examples=200, deadline=None)
@given(formatted_numbers())
def test_any_formatting_of_a_valid_number_normalizes_to_it(case):
    digits, formatted = case
    assert normalize(formatted) == "+" + digits


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=25), st.text(alphabet="+0123456789 -().", max_size=25)))
def test_normalize_returns_e164_or_raises_value_error(raw):
    try:
        out = normalize(raw)
    except ValueError as exc:
        assert str(exc)
        return
    assert E164.fullmatch(out) and normalize(out) == out


# -- what SMS providers share -------------------------------------------------

def task(address: str = "+14155552671", text: str | None = "hi", subject: str | None = None) -> DeliveryTask:
    return DeliveryTask(notification_id="n", user_id="u", channel="sms", category="c", address=address,
                        content=Content(subject=subject, text=text))


def test_message_text_prefers_text_then_subject():
    assert message_text(task(text="body", subject="subj")) == "body"
    assert message_text(task(text=None, subject="subj")) == "subj"
    assert message_text(task(text="  ", subject="subj")) == "subj"
    for t in (task(text=None), task(text=" \n ")):
        with pytest.raises(InvalidMessage, match="needs text"):
            message_text(t)


def test_recipient_and_segment_checks():
    assert recipient(task("+1 415 555 2671")) == "+14155552671"
    with pytest.raises(InvalidMessage, match="not international"):
        recipient(task("415 555 2671"))
    assert check_segments("a" * 1530, 10) == ("GSM-7", 10)
    with pytest.raises(InvalidMessage, match="11 segments"):
        check_segments("a" * 1531, 10)


@pytest.mark.parametrize("value, expected", [
    ("+1 415 555 2671", "+14155552671"), ("0044 20 7946 0958", "+442079460958"), ("Tidings", "Tidings"),
    ("Tidings 2FA", "Tidings 2FA"), ("12345", "12345"),
])
def test_sender_forms(value, expected):
    assert sender(value) == expected


@pytest.mark.parametrize("value", ["", None, "Tidings Alerts", "Tidings!", "+12", "12", "123456789"])
def test_bad_senders(value):
    with pytest.raises(ValueError):
        sender(value)


def test_max_segments_setting():
    assert max_segments_setting("x", "n", {}) == 10 and max_segments_setting("x", "n", {"max_segments": 3}) == 3
    for bad in (0, -1, "5", True, 2.5):
        with pytest.raises(ConfigurationError, match="max_segments"):
            max_segments_setting("x", "n", {"max_segments": bad})
