"""Several devices per user (policy/devices.py): which devices a push goes to,
and their outcomes as the channel's one outcome; the planner and the cache
carry them."""

from __future__ import annotations

from hypothesis import given, strategies as st

from actors.channel_shard import slots_for
from actors.user_cache import UserCache
from policy import devices
from policy.plan import RETRY_REASONS, Context, Item, plan_round
from policy.prefs import Preference, ordered
from policy.rules import Policy, PolicyConfig
from policy.types import Attempt, Content, DeliveryTask, Device, NotificationRequest, Outcome, Target, UserState

NOW = 1_800_000_000.0
POLICY = Policy(PolicyConfig())
PHONE = Device(device_id="phone", service="apns", token="a" * 64, platform="ios", kind="mobile", last_seen=NOW)
TABLET = Device(device_id="tablet", service="fcm", token="fcm-t", platform="android", kind="tablet", last_seen=NOW)
BROWSER = Device(device_id="laptop", service="webpush", token='{"endpoint": "https://x"}', platform="web",
                 kind="desktop", last_seen=NOW)
REQ = NotificationRequest(user_id="u", category="messages", channels=["push", "web"],
                          content=Content(subject="s", text="t"), accepted_at=NOW)


def state(*devs: Device, prefs: tuple[Preference, ...] = ()) -> UserState:
    return UserState(user_id="u", devices=devs, prefs=ordered(prefs))


def test_a_push_goes_to_each_device_of_its_channel_and_a_stale_one_is_left_out():
    old = Device(device_id="old", service="fcm", token="x", last_seen=NOW - devices.STALE_S - 1)
    found, owned = devices.targets(state(PHONE, TABLET, BROWSER, old), "push", REQ, POLICY, {}, NOW)
    assert [t.device_id for t in found] == ["phone", "tablet"] and owned == 2  # live ones
    found, owned = devices.targets(state(PHONE, TABLET, BROWSER), "web", REQ, POLICY, {}, NOW)
    assert [(t.device_id, t.service) for t in found] == [("laptop", "webpush")] and owned == 1


def test_the_device_context_applies_per_device():
    off = Preference(channel="push", context={"device": "tablet"}, enabled=False)
    found, _ = devices.targets(state(PHONE, TABLET, prefs=(off,)), "push", REQ, POLICY, {}, NOW)
    assert [t.device_id for t in found] == ["phone"]


def test_stale_devices_do_not_count_and_the_profile_address_is_used():
    old = Device(device_id="old", service="fcm", token="x", last_seen=NOW - devices.STALE_S - 1)
    ctx = Context(frozenset({"push"}), POLICY)
    req = NotificationRequest(user_id="u", category="messages", channels=["push"], content=Content(text="t"),
                              accepted_at=NOW)
    plan = plan_round([Item("n1", "u", req)], {"u": state(old)}, set(), ctx, now=NOW)
    assert [(o.channel, o.reason) for o in plan.outcomes] == [("push", "address.missing_push")]
    with_address = UserState(user_id="u", devices=(old,), addresses={"push": "profile-token"})
    plan = plan_round([Item("n1", "u", req)], {"u": with_address}, set(), ctx, now=NOW)
    (task,) = plan.sends["push"]
    assert task.targets is None and task.address == "profile-token"


def test_devices_all_off_are_not_bypassed_through_the_profile_address():
    off = (Preference(channel="push", context={"device": "mobile"}, enabled=False),)
    ctx = Context(frozenset({"push"}), POLICY)
    req = NotificationRequest(user_id="u", category="messages", channels=["push"], content=Content(text="t"),
                              accepted_at=NOW)
    with_address = UserState(user_id="u", devices=(PHONE,), addresses={"push": "profile-token"}, prefs=off)
    plan = plan_round([Item("n1", "u", req)], {"u": with_address}, set(), ctx, now=NOW)
    assert not plan.sends and [(o.channel, o.reason) for o in plan.outcomes] == [("push", "pref.device_off")]
    # a stale device's kind does not turn on a channel that is off
    stale_tablet = Device(device_id="t", service="fcm", token="x", kind="tablet", last_seen=NOW - devices.STALE_S - 1)
    rows = (Preference(channel="push", enabled=False), Preference(channel="push", context={"device": "tablet"},
                                                                   enabled=True))
    user = UserState(user_id="u", devices=(stale_tablet,), addresses={"push": "profile-token"}, prefs=ordered(rows))
    plan = plan_round([Item("n2", "u", req)], {"u": user}, set(), ctx, now=NOW)
    assert not plan.sends and [o.reason for o in plan.outcomes] == ["pref.channel_off"]


def test_a_device_kind_may_be_on_under_a_channel_that_is_off():
    rows = (Preference(channel="push", enabled=False),
            Preference(channel="push", context={"device": "mobile"}, enabled=True))
    ctx = Context(frozenset({"push"}), POLICY)
    req = NotificationRequest(user_id="u", category="messages", channels=["push"], content=Content(text="t"),
                              accepted_at=NOW)
    plan = plan_round([Item("n1", "u", req)], {"u": state(PHONE, TABLET, prefs=rows)}, set(), ctx, now=NOW)
    (task,) = plan.sends["push"]
    assert [t.device_id for t in task.targets] == ["phone"]


def test_the_planner_sends_one_task_with_every_device_or_suppresses_when_none_may():
    ctx = Context(frozenset({"push", "web"}), POLICY)
    plan = plan_round([Item("n1", "u", REQ)], {"u": state(PHONE, TABLET)}, set(), ctx, now=NOW)
    (task,) = plan.sends["push"]
    assert [t.device_id for t in task.targets] == ["phone", "tablet"] and task.address == PHONE.token
    assert [(o.channel, o.reason) for o in plan.outcomes] == [("web", "address.missing_web")]
    both_off = (Preference(channel="push", context={"device": "tablet"}, enabled=False),
                Preference(channel="push", context={"device": "mobile"}, enabled=False))
    plan = plan_round([Item("n2", "u", REQ)], {"u": state(PHONE, TABLET, prefs=both_off)}, set(), ctx, now=NOW)
    assert ("push", "pref.device_off") in [(o.channel, o.reason) for o in plan.outcomes]


def outcome(status: str, reason: str, provider: str = "apns") -> Outcome:
    return Outcome("n1", "u", "push", "messages", status, reason, NOW, NOW + 1, provider=provider,
                   attempts=[Attempt(provider, status == "sent", NOW, 5.0)])


TASK = DeliveryTask("n1", "u", "push", "messages", "a" * 64, Content(text="t"), accepted_at=NOW)
STATUSES = st.sampled_from([("sent", "ok"), ("failed", "address_gone"), ("failed", "provider_error"),
                            ("suppressed", "ttl.expired")])


@given(st.lists(STATUSES, min_size=1, max_size=5))
def test_merged_is_sent_when_any_device_took_it_and_lists_the_gone(results):
    pairs = [(Target(f"d{i}", "apns", f"t{i}"), outcome(s, r)) for i, (s, r) in enumerate(results)]
    m = devices.merged(TASK, pairs, NOW, RETRY_REASONS)
    assert (m.notification_id, m.channel) == ("n1", "push")
    assert [devices.split_gone(g) for g in m.gone or []] == [
        (t.device_id, devices.fingerprint(t.token)) for t, o in pairs if o.reason == "address_gone"]
    assert len(m.attempts) == len(results)
    reasons = [r for _, r in results]
    if "ok" in reasons:
        assert (m.status, m.reason) == ("sent", "ok")
    elif "provider_error" in reasons:  # one that may pass: the channel is tried again later, nothing was sent
        assert (m.status, m.reason) == ("failed", "provider_error")
    elif "ttl.expired" in reasons:
        assert (m.status, m.reason) == ("suppressed", "ttl.expired")
    else:
        assert (m.status, m.reason) == ("failed", "address_gone")


def test_a_final_failure_on_one_device_does_not_stop_the_retry_of_another():
    pairs = [(Target("gone", "apns", "t0"), outcome("failed", "address_gone")),
             (Target("bad", "apns", "t1"), outcome("failed", "invalid_message")),
             (Target("busy", "fcm", "t2"), outcome("failed", "network_error", "fcm"))]
    m = devices.merged(TASK, pairs, NOW, RETRY_REASONS)
    assert (m.status, m.reason) == ("failed", "network_error") and len(m.gone or []) == 1


def test_each_device_goes_to_the_providers_of_its_service():
    class P:
        def __init__(self, name, service=None):
            self.name, self.service = name, service

    class S:
        def __init__(self, provider):
            self.provider = provider

    apns, fcm = S(P("apns", "apns")), S(P("fcm", "fcm"))
    assert slots_for("apns", [apns, fcm]) == [apns] and slots_for("fcm", [apns, fcm]) == [fcm]
    assert slots_for("webpush", [apns, fcm]) == []  # none speaks it: the device's send fails, no_provider
    other = S(P("custom"))
    assert slots_for("fcm", [other]) == [other]  # no provider says: every one is tried


def test_the_cache_keeps_devices():
    cache = UserCache()
    cache["u"] = state(PHONE, BROWSER)
    assert cache["u"].devices == (PHONE, BROWSER)
