from hypothesis import given, strategies as st

from policy.decide import decide
from policy.prefs import Preference, ordered
from policy.sharding import shard_of, stable_hash
from policy.types import CHANNELS, Content, NotificationRequest, UserState


def offs(*keys):
    """Opt-out rows ("channel:category"), ordered as the shard keeps them."""
    return ordered(Preference(channel=k.split(":")[0], category=k.split(":")[1], enabled=False) for k in keys)

AVAILABLE = frozenset({"email", "webhook", "sms"})
NOW = 1_795_000_000.0  # any time: nothing here depends on the clock


def req(channels, category="job_alerts"):
    return NotificationRequest(user_id="u1", category=category, channels=channels, content=Content(text="x"))


def test_sends_when_nothing_stands_in_the_way():
    state = UserState(user_id="u1", addresses={"email": "a@b.c"})
    assert [(d.channel, d.action, d.reason) for d in decide(req(["email", "webhook"]), state, AVAILABLE, now=NOW)] == [
        ("email", "send", "ok"), ("webhook", "send", "ok")]


def test_reasons_in_order_of_precedence():
    state = UserState(user_id="u1", addresses={"email": "a@b.c"}, prefs=offs("email:marketing"),
                      suppressed={"email": "bounce"})
    assert decide(req(["email"], "marketing"), state, AVAILABLE, now=NOW)[0].reason == "pref.category_off"
    assert decide(req(["email"], "job_alerts"), state, AVAILABLE, now=NOW)[0].reason == "suppression.bounce"
    assert decide(req(["sms"]), state, AVAILABLE, now=NOW)[0].reason == "address.missing_sms"
    assert decide(req(["push"]), state, AVAILABLE, now=NOW)[0].reason == "channel.unavailable"


def test_wildcards():
    everything_off = UserState(user_id="u1", addresses={"email": "a@b.c"}, prefs=offs("*:marketing"))
    assert decide(req(["email", "webhook"], "marketing"), everything_off, AVAILABLE, now=NOW)[1].reason == "pref.category_off"
    no_email = UserState(user_id="u1", addresses={"email": "a@b.c"}, prefs=offs("email:*"))
    assert decide(req(["email"]), no_email, AVAILABLE, now=NOW)[0].reason == "pref.channel_off"


def test_unknown_user():
    out = decide(req(["email", "webhook"]), None, AVAILABLE, now=NOW)
    assert [(d.action, d.reason) for d in out] == [("suppress", "user.unknown"), ("send", "ok")]


@given(st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=7))
def test_one_decision_per_distinct_channel_in_request_order(channels):
    state = UserState(user_id="u1", addresses={c: "x" for c in CHANNELS})
    out = decide(req(channels), state, AVAILABLE, now=NOW)
    assert [d.channel for d in out] == list(dict.fromkeys(channels))


@given(st.text(min_size=1, max_size=64), st.integers(1, 64))
def test_shard_is_stable_and_in_range(key, n):
    assert 0 <= shard_of(key, n) < n
    assert stable_hash(key) == stable_hash(str(key))


def test_stable_hash_is_fixed_across_processes():
    assert stable_hash("user-42") == 2097592435  # crc32: must never change, or users move shards
