"""providers.webhook.signing: round trips, every rejection path, and properties."""

import hashlib
import hmac

import pytest
from hypothesis import given, settings, strategies as st

from providers.webhook.signing import SignatureError, sign, verify

SECRET = "whsec_test"
BODY = b'{"id":"n1","channel":"webhook"}'
TS = 1_700_000_000


def test_header_format_matches_spec():
    expected = hmac.new(SECRET.encode(), f"{TS}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, TS) == f"t={TS},v1={expected}"


def test_round_trip_str_and_bytes_secret():
    verify(SECRET, sign(SECRET, BODY, TS), BODY, now=TS)
    verify(SECRET.encode(), sign(SECRET, BODY, TS), BODY, now=TS + 299)
    verify(SECRET, sign(SECRET.encode(), BODY, TS), BODY, now=TS - 299)


def test_tampered_body_fails():
    header = sign(SECRET, BODY, TS)
    with pytest.raises(SignatureError, match="no matching v1"):
        verify(SECRET, header, BODY.replace(b"n1", b"n2"), now=TS)


def test_wrong_secret_fails():
    with pytest.raises(SignatureError, match="no matching v1"):
        verify("other", sign(SECRET, BODY, TS), BODY, now=TS)


def test_expired_timestamp_fails():
    header = sign(SECRET, BODY, TS)
    with pytest.raises(SignatureError, match="too old"):
        verify(SECRET, header, BODY, now=TS + 301)
    with pytest.raises(SignatureError, match="too old"):
        verify(SECRET, header, BODY, now=TS + 11, tolerance_s=10)


def test_future_timestamp_fails():
    with pytest.raises(SignatureError, match="future"):
        verify(SECRET, sign(SECRET, BODY, TS + 301), BODY, now=TS)


def test_tampered_timestamp_fails():
    header = sign(SECRET, BODY, TS).replace(f"t={TS}", f"t={TS + 1}")
    with pytest.raises(SignatureError, match="no matching v1"):
        verify(SECRET, header, BODY, now=TS)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        "garbage",
        f"t={TS}",  # no signature
        "v1=abcd",  # no timestamp
        "t=abc,v1=abcd",
        "t=-5,v1=abcd",
        f"t={TS},t={TS},v1=abcd",
        f"t={TS},v1=",
        f"t={TS},,v1=abcd",
        f"t={TS};v1=abcd",
    ],
)
def test_malformed_headers(header):
    with pytest.raises(SignatureError, match="malformed"):
        verify(SECRET, header, BODY, now=TS)


def test_signature_error_is_value_error():
    assert issubclass(SignatureError, ValueError)


def test_non_ascii_signature_entry_does_not_crash():
    with pytest.raises(SignatureError, match="no matching"):
        verify(SECRET, f"t={TS},v1=é", BODY, now=TS)


def test_rotation_accepts_either_v1_entry():
    old = sign("old-secret", BODY, TS).split(",")[1]
    new = sign("new-secret", BODY, TS).split(",")[1]
    header = f"t={TS},{old},{new}"
    verify("old-secret", header, BODY, now=TS)
    verify("new-secret", header, BODY, now=TS)
    with pytest.raises(SignatureError):
        verify("third-secret", header, BODY, now=TS)


def test_unknown_schemes_are_ignored():
    header = sign(SECRET, BODY, TS) + ",v0=deadbeef"
    verify(SECRET, header, BODY, now=TS)


def test_empty_secret_is_refused():
    with pytest.raises(ValueError):
        sign("", BODY, TS)
    with pytest.raises(ValueError):
        verify(b"", f"t={TS},v1=00", BODY, now=TS)


secrets = st.one_of(st.binary(min_size=1, max_size=64), st.text(min_size=1, max_size=32))


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=512), secret=secrets, ts=st.integers(0, 2**40), skew=st.floats(-300, 300))
def test_property_any_body_secret_and_time_in_window_verifies(body, secret, ts, skew):
    verify(secret, sign(secret, body, ts), body, now=ts + skew)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(min_size=1, max_size=512), secret=secrets, data=st.data())
def test_property_single_byte_change_fails(body, secret, data):
    header = sign(secret, body, TS)
    i = data.draw(st.integers(0, len(body) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != body[i]))
    changed = body[:i] + bytes([new]) + body[i + 1 :]
    with pytest.raises(SignatureError):
        verify(secret, header, changed, now=TS)
