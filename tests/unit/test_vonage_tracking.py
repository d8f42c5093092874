"""Vonage's webhook signatures and receipts (providers.tracking.vonage), pure."""

import hashlib
import hmac

import pytest
from hypothesis import given, strategies as st

from providers.tracking import PayloadError, SignatureError
from providers.tracking.vonage import signature_method, verify_vonage, vonage_event, vonage_inbound, vonage_signature

NOW = 1_700_000_000


def test_the_md5_hash_signature_matches_vonages_own_sdk_vector():
    # the vector of Vonage's Python SDK tests (secret "secret", MD5 hash)
    assert vonage_signature("secret", {"a": "1", "b": "2", "timestamp": "1461605396"}) == \
        "6af838ef94998832dbfc29020b564830"


def test_hmac_methods_sort_replace_and_leave_sig_out():
    params = {"b": "x&y=z", "a": "1", "sig": "ignored", "timestamp": "5"}
    text = "&a=1&b=x_y_z&timestamp=5"
    for method in ("md5", "sha1", "sha256", "sha512"):
        assert vonage_signature("k", params, method) == hmac.new(b"k", text.encode(), method).hexdigest()
    assert vonage_signature("k", params) == hashlib.md5((text + "k").encode()).hexdigest()
    with pytest.raises(ValueError):
        vonage_signature("k", params, "sha3")
    from providers.errors import ConfigurationError
    from providers.sms.vonage import VonageSmsProvider
    with pytest.raises(ConfigurationError, match="signature_method"):  # a typo fails the start, not every webhook
        VonageSmsProvider("v", {"api_key": "k", "api_secret": "s", "from": "+14155550100",
                                "signature_method": "sha-2"})


def signed(params: dict, secret: str = "s", method: str = "sha256", at: int = NOW) -> dict:
    out = {**params, "timestamp": str(at), "nonce": "n1"}
    out["sig"] = vonage_signature(secret, out, method)
    return out


def test_verify_refuses_what_vonage_did_not_sign_now():
    good = signed({"messageId": "m", "status": "delivered"})
    verify_vonage("s", good, "sha256", now=NOW + 10)
    verify_vonage("s", {**good, "sig": good["sig"].upper()}, "sha256", now=NOW)  # hex in either case
    for bad, why in (({**good, "status": "failed"}, "does not match"), ({**good, "sig": ""}, "missing"),
                     (signed({"messageId": "m"}, secret="other"), "does not match"),
                     (signed({"messageId": "m"}, at=NOW - 301), "too far"),
                     (signed({"messageId": "m"}, at=NOW + 301), "too far")):
        with pytest.raises(SignatureError, match=why):
            verify_vonage("s", bad, "sha256", now=NOW)
    no_stamp = {"messageId": "m"}
    no_stamp["sig"] = vonage_signature("s", no_stamp, "sha256")
    with pytest.raises(SignatureError, match="timestamp"):
        verify_vonage("s", no_stamp, "sha256", now=NOW)


NAMES = st.from_regex(r"\A[A-Za-z0-9_.-]{1,12}\Z")


@given(st.dictionaries(NAMES, st.text(max_size=20), max_size=6), st.text(max_size=10))
def test_any_parameters_signed_verify_and_an_added_or_changed_one_does_not(params, extra):
    params.pop("sig", None)
    good = signed(params)
    verify_vonage("s", good, "sha256", now=NOW)
    with pytest.raises(SignatureError):
        verify_vonage("s", {**good, "zz-added": extra + "!"}, "sha256", now=NOW)
    with pytest.raises(SignatureError):
        verify_vonage("s", {**good, "timestamp": str(NOW + 1)}, "sha256", now=NOW)


def test_a_request_reshaped_through_its_names_is_refused():
    # "&a=1&b=2" is also the text of one parameter named "a=1&b" with the value "2"
    good = signed({"a": "1", "b": "2"})
    reshaped = {k: v for k, v in good.items() if k not in ("a", "b")} | {"a=1&b": "2"}
    assert vonage_signature("s", reshaped, "sha256") == good["sig"]
    with pytest.raises(SignatureError, match="name"):
        verify_vonage("s", reshaped, "sha256", now=NOW)


def test_signature_methods_as_vonage_spells_them():
    for name, method in (("MD5 hash", "md5hash"), ("md5hash", "md5hash"), ("MD5 HMAC", "md5"), ("sha1", "sha1"),
                         ("SHA-256 HMAC", "sha256"), ("SHA256", "sha256"), ("sha-512", "sha512")):
        assert signature_method(name) == method
    with pytest.raises(ValueError):
        signature_method("sha3")


def test_receipts_become_events():
    ev = vonage_event({"messageId": "M1", "status": "delivered", "msisdn": "14155550101", "err-code": "0",
                       "client-ref": "nid-1", "message-timestamp": "2023-11-14 22:13:20"}, now=NOW)
    assert (ev.provider, ev.notification_id, ev.provider_message_id, ev.channel, ev.address) == (
        "vonage", "nid-1", "M1", "sms", "+14155550101")
    assert (ev.status, ev.hard, ev.at) == ("delivered", False, 1_700_000_000.0)
    gone = vonage_event({"messageId": "M2", "status": "failed", "err-code": "3", "msisdn": "1415"}, now=NOW)
    assert (gone.status, gone.hard, gone.at, gone.detail) == ("bounced", True, NOW, "failed err-code 3")
    passing = vonage_event({"messageId": "M3", "status": "expired", "err-code": "2"}, now=NOW)
    assert (passing.status, passing.hard) == ("failed", False)
    assert vonage_event({"messageId": "M4", "status": "buffered"}, now=NOW).status is None  # in flight
    with pytest.raises(PayloadError):
        vonage_event({"status": "delivered"})


def test_inbound_messages_give_the_number_in_e164_and_the_text():
    assert vonage_inbound({"msisdn": "14155550101", "text": "STOP"}) == ("+14155550101", "STOP")
    with pytest.raises(PayloadError):
        vonage_inbound({"text": "STOP"})
