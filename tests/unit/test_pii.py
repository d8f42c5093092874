"""Sealing (infra/pii.py): values open only under their key and for what they
were sealed as; master keys parse strictly; the blind index is stable, keyed
and matches email case-insensitively."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given, strategies as st

from infra.pii import (
    Keyring,
    PiiError,
    aad,
    format_master_key,
    normalized,
    open_sealed,
    parse_master_keys,
    seal,
    user_key_aad,
)

OLD, NEW = os.urandom(32), os.urandom(32)


@given(st.binary(max_size=2000), st.text(max_size=50), st.text(max_size=20))
def test_a_sealed_value_opens_to_itself_and_only_for_what_it_was_sealed_as(plain, user, channel):
    key = os.urandom(32)
    blob = seal(key, plain, aad("address", user, channel))
    assert len(blob) == 1 + 12 + len(plain) + 16
    if len(plain) >= 16:  # ciphertext, not the text (a short value could recur by chance)
        assert plain not in blob
    assert open_sealed(key, blob, aad("address", user, channel)) == plain
    with pytest.raises(PiiError):
        open_sealed(key, blob, aad("address", user + "x", channel))  # another user's row
    with pytest.raises(PiiError):
        open_sealed(os.urandom(32), blob, aad("address", user, channel))  # another key
    with pytest.raises(PiiError):
        open_sealed(key, blob[:-1] + bytes([blob[-1] ^ 1]), aad("address", user, channel))  # changed


def test_master_keys_parse_strictly_and_never_echo_a_key():
    spec = f"{format_master_key('new', NEW)},{format_master_key('old', OLD)}"
    assert list(parse_master_keys(spec)) == ["new", "old"]
    secret = base64.b64encode(os.urandom(16)).decode()
    for bad in ("", "nocolon", f"a:{secret}", "a:!!!", f"{format_master_key('a', OLD)},{format_master_key('a', NEW)}",
                f"bad id:{base64.b64encode(OLD).decode()}"):
        with pytest.raises(PiiError) as e:
            parse_master_keys(bad)
        assert secret not in str(e.value) and base64.b64encode(OLD).decode() not in str(e.value)


def test_rotation_the_first_master_wraps_and_every_one_unwraps():
    old = Keyring({"old": OLD})
    kid, wrapped = old.wrap(b"k" * 32, user_key_aad("u1"))
    both = Keyring({"new": NEW, "old": OLD})
    assert kid == "old" and both.unwrap(kid, wrapped, user_key_aad("u1")) == b"k" * 32
    assert both.wrap(b"k" * 32, user_key_aad("u1"))[0] == "new"
    with pytest.raises(PiiError, match="'old' is not configured"):
        Keyring({"new": NEW}).unwrap(kid, wrapped, user_key_aad("u1"))
    with pytest.raises(PiiError):
        both.unwrap(kid, wrapped, user_key_aad("u2"))  # a key moved to another user's row


def test_the_blind_index_is_keyed_stable_and_case_blind_for_email_only():
    ring = Keyring({"m": OLD}).with_index(b"i" * 32)
    other = Keyring({"m": OLD}).with_index(b"j" * 32)
    assert ring.blind("email", "Ann@Example.TEST ") == ring.blind("email", "ann@example.test")
    assert ring.blind("sms", "+15550001") != ring.blind("sms", "+15550002")
    assert ring.blind("email", "a@x.test") != ring.blind("webhook", "a@x.test")
    assert ring.blind("email", "a@x.test") != other.blind("email", "a@x.test")
    assert normalized("push", " Tok ") == "Tok"
    with pytest.raises(PiiError):
        Keyring({"m": OLD}).blind("email", "a@x.test")  # no index key loaded
