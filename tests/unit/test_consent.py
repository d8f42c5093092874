"""Consent by channel and purpose (policy.decide.consent_status): a purpose's own
record decides, else the whole channel's; an expiry ends a grant; every refusal
names its status (consent.<status>_<channel>)."""

from __future__ import annotations

import pytest

from policy.decide import consent_status, decide_channel
from policy.rules import Policy, PolicyConfig, Rule
from policy.types import Message, UserState
from policy.validate import ConsentRecord, PreferencesPatch, consent_errors

NOW = 1_800_000_000.0
POLICY = Policy(PolicyConfig(rules=(
    Rule(name="sms_marketing", kind="consent_required", channel="sms", category="marketing", purpose="marketing",
         double_opt_in=True),
    Rule(name="sms_any", kind="consent_required", channel="sms"),
)))


def state(**kw) -> UserState:
    return UserState(user_id="u", addresses={"sms": "+15550001111"}, **kw)


@pytest.mark.parametrize("kw, purpose, expected", [
    ({}, "marketing", "missing"),
    ({"consent": frozenset({"sms"})}, "marketing", "granted"),  # the whole channel covers every purpose
    ({"consent": frozenset({"sms:marketing"})}, "marketing", "granted"),
    ({"consent": frozenset({"sms:marketing"})}, "*", "missing"),  # a purpose does not cover the channel
    ({"consent_state": {"sms:marketing": "pending"}}, "marketing", "pending"),
    # the purpose's own record decides, over a grant of the whole channel
    ({"consent_state": {"sms:marketing": "withdrawn"}, "consent": frozenset({"sms"})}, "marketing", "withdrawn"),
    ({"consent_state": {"sms:marketing": "pending"}, "consent": frozenset({"sms"})}, "marketing", "pending"),
    ({"consent": frozenset({"sms:marketing"}), "consent_until": {"sms:marketing": NOW - 1}}, "marketing", "expired"),
    ({"consent": frozenset({"sms:marketing"}), "consent_until": {"sms:marketing": NOW + 1}}, "marketing", "granted"),
    ({"consent_state": {"sms": "withdrawn"}}, "marketing", "withdrawn"),
])
def test_consent_status(kw, purpose, expected):
    assert consent_status(state(**kw), "sms", purpose, NOW) == expected


def test_each_refusal_names_its_status_and_the_rule_for_the_category_applies():
    def reason(s: UserState, category: str) -> str:
        return decide_channel(Message(category=category, channels=["sms"]), s, "sms", frozenset({"sms"}), POLICY, now=NOW).reason

    assert reason(state(consent_state={"sms:marketing": "pending"}), "marketing") == "consent.pending_sms"
    assert reason(state(consent=frozenset({"sms:marketing"})), "marketing") == "ok"
    assert reason(state(consent=frozenset({"sms:marketing"})), "messages") == "consent.missing_sms"
    assert reason(state(consent=frozenset({"sms:marketing"}), consent_until={"sms:marketing": NOW}),
                  "marketing") == "consent.expired_sms"
    # a double opt-in purpose takes only its own confirmed grant: the whole channel's does not stand in
    assert reason(state(consent=frozenset({"sms"})), "marketing") == "consent.missing_sms"
    assert reason(state(consent=frozenset({"sms"})), "messages") == "ok"
    assert POLICY.double_opt_in("sms", "marketing") and not POLICY.double_opt_in("sms", "*")


def test_consent_keys_and_records_are_checked_at_the_edge():
    patch = PreferencesPatch(consent={"sms:marketing": ConsentRecord(status="granted"), "fax": "granted",
                                      "sms:Bad": "granted"})
    assert [f for f, _ in consent_errors(patch.consent)] == ["consent.fax", "consent.sms:Bad"]
    import msgspec
    bad_ip = msgspec.json.decode(b'{"consent": {"sms": {"status": "granted", "evidence": {"ip": "999.1.1.1"}}}}',
                                 type=PreferencesPatch)
    assert consent_errors(bad_ip.consent) == [("consent.sms.evidence.ip", "not an IP address")]
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"consent": {"sms": {"status": "pending"}}}', type=PreferencesPatch)


def test_double_opt_in_is_for_one_purpose_on_sms():
    for bad in ({"channel": "email", "purpose": "marketing"}, {"channel": "sms"}):
        with pytest.raises(ValueError, match="double_opt_in"):
            Rule(name="x", kind="consent_required", double_opt_in=True, **bad)


def test_the_blind_index_reads_a_phone_number_as_twilio_writes_it():
    from infra.pii import Keyring
    ring = Keyring({"m": b"k" * 32}).with_index(b"i" * 32)
    assert ring.blind("sms", "+1 (415) 555-2671") == ring.blind("sms", "+14155552671")
