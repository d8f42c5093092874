"""The UserShard's planning (policy.plan) and release (policy.release) as pure
functions: every (notification, channel) gets exactly one disposition, holds
carry what the store needs, fallbacks walk their channels in order, released
items are built from what was claimed. No PostgreSQL, no Ray."""

from datetime import datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from policy import wire
from policy.held import DueDeferred, DueDigest, DueFallback, HeldDeferred, HeldDigest, HeldFallback
from policy.links import LinkRules, verify
from policy.plan import (
    RETRY_REASONS,
    Context,
    Item,
    fallback_checks,
    next_fallbacks,
    plan_round,
    retry_later,
    start_fallbacks,
)
from policy.prefs import Preference, ordered
from policy.release import answered, deferred_items, digest_id, digest_item, fallback_items, next_bucket
from policy.rules import Policy, PolicyConfig, Rule
from policy.templating import Compiled, MessageTemplate
from policy.types import CHANNELS, Content, DigestKey, NotificationRequest, Outcome, TemplateRef, UserState
from policy.windows import Window

BERLIN = ZoneInfo("Europe/Berlin")
ALL = frozenset(CHANNELS)
# SMS and voice need consent, as the default rules say; the rest is open
RULES = Policy(PolicyConfig(rules=(Rule(name="sms_consent", kind="consent_required", channel="sms"),)))


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN).timestamp()


NOON = at("2026-11-18T12:00")
NIGHT = at("2026-11-18T23:30")


def req(channels=("email",), category="job_alerts", **kw) -> NotificationRequest:
    kw.setdefault("content", Content(subject="s", text="t", html="<p>hi <a href=\"https://x.test/a\">a</a></p>"))
    kw.setdefault("user_id", "u1")
    return NotificationRequest(category=category, channels=list(channels), **kw)


def user(uid="u1", *rows, **kw) -> UserState:
    kw.setdefault("addresses", {c: f"{uid}@x.test" for c in ("email", "sms", "push", "voice", "web")})
    return UserState(user_id=uid, prefs=ordered(rows), timezone="Europe/Berlin", **kw)


def ctx(**kw) -> Context:
    kw.setdefault("available", ALL)
    kw.setdefault("policy", RULES)
    return Context(**kw)


def test_a_plain_send_becomes_one_task_with_the_users_address_and_locale():
    state = user(locale="de")
    plan = plan_round([Item("n1", "u1", req(["email", "webhook"]))], {"u1": state}, set(), ctx(), now=NOON)
    assert not plan.holds and not plan.outcomes
    (email,), (hook,) = plan.sends["email"], plan.sends["webhook"]
    assert (email.notification_id, email.address, email.locale, email.category) == ("n1", "u1@x.test", "de",
                                                                                     "job_alerts")
    assert hook.address == ""  # a webhook's address is the provider's


def test_suppressed_channels_are_settled_in_the_plan_with_their_reason():
    off = user("u1", Preference(channel="email", category="marketing", enabled=False))
    items = [Item("n1", "u1", req(["email", "sms"], "marketing", priority="high"))]
    plan = plan_round(items, {"u1": off}, set(), ctx(parent_id="b1"), now=NOON)
    assert not plan.sends
    assert [(o.channel, o.status, o.reason, o.priority, o.parent_id) for o in plan.outcomes] == [
        ("email", "suppressed", "pref.category_off", "high", "b1"),
        ("sms", "suppressed", "consent.missing_sms", "high", "b1")]
    assert [o.completed_at for o in plan.outcomes] == [NOON, NOON]


def test_quiet_hours_and_digests_become_holds_the_store_can_write():
    quiet = user("u1", Preference(quiet_hours=[Window(start="22:00", end="07:00")]))
    digest = user("u2", Preference(category="job_alerts", frequency="daily"))
    items = [Item("n1", "u1", req()), Item("n2", "u2", msgspec.structs.replace(req(), user_id="u2"))]
    plan = plan_round(items, {"u1": quiet, "u2": digest}, set(), ctx(parent_id="b1"), now=NIGHT)
    deferred, digested = plan.holds
    assert isinstance(deferred, HeldDeferred) and isinstance(digested, HeldDigest)
    assert (deferred.channel, deferred.reason, deferred.due_at, deferred.parent_id) == (
        "email", "quiet_hours", at("2026-11-19T07:00"), "b1")
    assert wire.decode(deferred.request, NotificationRequest).user_id == "u1"
    assert digested.key == DigestKey("u2", "email", "job_alerts", "daily", int(at("2026-11-19T00:00")))
    assert (digested.reason, digested.due_at) == ("digest.daily", at("2026-11-19T00:00"))
    assert plan.kept() == {"n1", "n2"}
    # a released notification is never collected into a digest again
    again = plan_round(items[1:], {"u2": digest}, set(), ctx(digest=False), now=NIGHT)
    assert list(again.sends) == ["email"] and not again.holds


def test_recorded_channels_are_left_out():
    plan = plan_round([Item("n1", "u1", req(["email", "webhook"]))], {"u1": user()}, {("n1", "email")}, ctx(),
                      now=NOON)
    assert list(plan.sends) == ["webhook"] and not plan.outcomes


def test_templates_render_in_the_users_locale_and_their_errors_are_the_requests():
    parts = {"email": {
        "default": Compiled(MessageTemplate(id="t", channel="email", subject="Hi {{ name }}", text="x")),
        "de": Compiled(MessageTemplate(id="t", channel="email", subject="Hallo {{ name }}", text="x"))}}
    templates = {("t", None): parts}
    def templated(data):
        return req(content=None, template=TemplateRef(id="t", data=data))
    states = {"u1": user(locale="de-AT"), "u2": user("u2")}
    items = [Item("n1", "u1", templated({"name": "Ada"})), Item("n2", "u2", templated({})),
             Item("n3", "u1", msgspec.structs.replace(templated({"name": "x"}), channels=["push"]))]
    plan = plan_round(items, states, set(), ctx(templates=templates), now=NOON)
    assert [t.content.subject for t in plan.sends["email"]] == ["Hallo Ada"]
    rejected = {o.notification_id: (o.status, o.reason) for o in plan.outcomes}
    assert rejected == {"n2": ("rejected", "template.error"), "n3": ("rejected", "template.missing")}
    assert "name" in next(o.detail for o in plan.outcomes if o.notification_id == "n2")
    no_content = plan_round([Item("n4", "u1", req(content=None))], states, set(), ctx(), now=NOON)
    assert [(o.status, o.reason) for o in no_content.outcomes] == [("rejected", "content.missing")]


def test_links_are_tracked_on_tracked_channels_with_html_only():
    rules = LinkRules(secret=b"s" * 16, base_url="https://t.test", opens=True, clicks=True,
                      channels=frozenset({"email"}))
    plan = plan_round([Item("00000000-0000-0000-0000-000000000001", "u1", req(["email", "web"]))],
                      {"u1": user()}, set(), ctx(links=rules), now=NOON)
    (email,), (web,) = plan.sends["email"], plan.sends["web"]
    token = email.content.html.split("/v1/t/c/")[1].split('"')[0]
    assert verify(rules.secret, token, "c").url == "https://x.test/a"
    assert web.content.html == req().content.html


def test_fallback_checks_only_for_what_this_call_sent():
    later = req(fallback=["sms"], fallback_after_s=3600)
    items = [Item("n1", "u1", later), Item("n2", "u1", later), Item("n3", "u1", later), Item("n4", "u1", req())]
    checks = fallback_checks(items, sent={"n1", "n3", "n4"}, done={("n3", "email")}, now=NOON)
    assert [(c.notification_id, c.due_at) for c in checks] == [("n1", NOON + 3600)]
    assert isinstance(checks[0], HeldFallback)


def test_fallbacks_walk_their_channels_in_order_skipping_those_asked_already():
    r = req(["email", "push"], fallback=["push", "sms", "voice"])
    pending = start_fallbacks([Item("n1", "u1", r), Item("n2", "u1", r)], handled={"n2"})
    tried = []
    while pending:
        attempt, pending = next_fallbacks(pending)
        tried += [(it.notification_id, it.request.channels) for it in attempt]
    assert tried == [("n1", ["sms"]), ("n1", ["voice"])]
    assert start_fallbacks([Item("n3", "u1", req())], set()) == []


def test_deferred_dues_become_one_item_per_notification_on_the_claimed_channels():
    blob = wire.encode(req(["email", "push", "sms"]))
    dues = [DueDeferred("u1", "n1", "push", blob), DueDeferred("u1", "n1", "email", blob),
            DueDeferred("u1", "n1", "push", blob), DueDeferred("u2", "n2", "sms", blob)]
    items = deferred_items(dues)
    assert [(it.notification_id, it.user_id, it.request.channels) for it in items] == [
        ("n1", "u1", ["push", "email"]), ("n2", "u2", ["sms"])]


def test_a_due_fallback_check_sends_the_next_channel_unless_answered():
    r = wire.encode(req(["push"], fallback=["push", "sms", "email"], fallback_after_s=60))
    opened = wire.encode(req(["push"], fallback=["email"], fallback_after_s=60, fallback_unless="opened"))
    dues = [DueFallback("u1", "n1", r), DueFallback("u1", "n2", r), DueFallback("u1", "n3", opened),
            DueFallback("u1", "n4", r)]
    statuses = {"n2": {"delivered"}, "n3": {"delivered"}, "n4": {"sent"}}
    items, done = fallback_items(dues, statuses, engaged=set(), recorded={("n4", "sms"), ("n4", "push")})
    assert [(it.notification_id, it.request.channels, it.request.fallback) for it in items] == [
        ("n1", ["sms"], ["email"]), ("n3", ["email"], []), ("n4", ["sms"], ["email"])]
    assert all(it.request.fallback_after_s is None for it in items)
    assert done == {("n4", "sms")}
    assert answered("opened", {"delivered"}, engaged=True) and not answered("opened", {"delivered"}, False)


def test_a_digest_is_one_notification_named_by_its_bucket():
    key = DigestKey("u|1", "email", "job_alerts", "daily", int(at("2026-11-19T00:00")))
    found = [("a", wire.encode(req(content=Content(subject="first", text="x")))),
             ("b", wire.encode(req(content=Content(text="second line\nmore"))))]
    item = digest_item(DueDigest("u|1", key), found, now=NOON)
    assert item.notification_id == digest_id(key) == digest_id(DigestKey.parse(key.text()))
    assert item.request.channels == ["email"] and item.request.accepted_at == NOON
    assert [i["line"] for i in item.request.content.data["digest"]["items"]] == ["first", "second line"]
    held = HeldDigest(notification_id="c", user_id="u|1", category="job_alerts", priority="normal",
                      due_at=float(key.period_end), request=b"", accepted_at=NOON, channel="email", key=key)
    nxt, due = next_bucket(held, BERLIN)
    assert (nxt.period_end, due) == (int(at("2026-11-20T00:00")), at("2026-11-20T00:00"))


# -- properties ----------------------------------------------------------------------------

channels = st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=4)
prefs = st.lists(st.builds(Preference, channel=st.sampled_from(("*", *CHANNELS)),
                           category=st.sampled_from(("*", "job_alerts", "marketing")),
                           enabled=st.sampled_from((None, True, False)),
                           frequency=st.sampled_from((None, "immediate", "daily", "never")),
                           quiet_hours=st.sampled_from((None, [Window(start="22:00", end="07:00")]))),
                 max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(channels, st.sampled_from(("job_alerts", "marketing", "security")),
                          st.sampled_from(("u1", "u2", "ghost")), st.booleans()), min_size=1, max_size=8),
       prefs, st.sets(st.sampled_from(CHANNELS)), st.sampled_from((NOON, NIGHT)), st.booleans())
def test_every_channel_not_recorded_gets_exactly_one_disposition(reqs, rows, consent, now, digest):
    states = {"u1": user("u1", *rows, consent=frozenset(consent)), "u2": user("u2", addresses={})}
    items = [Item(f"n{i}", uid, req(chs, cat, user_id=uid)) for i, (chs, cat, uid, _) in enumerate(reqs)]
    done = {(f"n{i}", chs[0]) for i, (chs, _, _, recorded) in enumerate(reqs) if recorded}
    plan = plan_round(items, states, done, ctx(digest=digest), now=now)
    seen = [(t.notification_id, ch) for ch, ts in plan.sends.items() for t in ts]
    seen += [(h.notification_id, h.channel) for h in plan.holds]
    seen += [(o.notification_id, o.channel) for o in plan.outcomes]
    want = {(it.notification_id, ch) for it in items for ch in it.request.channels} - done
    assert sorted(seen) == sorted(want)  # each once: no pair twice, none missing
    assert all(ch == t.channel for ch, ts in plan.sends.items() for t in ts)
    assert all(h.due_at > now for h in plan.holds)
    assert digest or not any(isinstance(h, HeldDigest) for h in plan.holds)


def failed(nid: str, reason: str, channel="email") -> Outcome:
    return Outcome(nid, "u1", channel, "job_alerts", "failed", reason, 0.0, 0.0)


def test_deliveries_that_failed_for_a_passing_reason_are_held_with_doubling_waits():
    now = 10_000.0
    items = [Item(f"00000000-0000-0000-0000-00000000000{i}", "u1", req(accepted_at=now - age))
             for i, age in enumerate((0, 40, 1000, 3590, 3596))]
    outcomes = [failed(items[0].notification_id, "circuit_open"), failed(items[1].notification_id, "network_error"),
                failed(items[2].notification_id, "provider_error"), failed(items[3].notification_id, "destination_error"),
                failed(items[4].notification_id, "provider_error")]
    held, kept = retry_later(items, outcomes, 3600, now=now)
    assert [h.notification_id for h in held] == [it.notification_id for it in items[:4]]
    assert [o.notification_id for o in kept] == [items[4].notification_id]  # no time left for a try: it fails now
    waits = [h.due_at - now for h in held]
    assert 4.0 <= waits[0] <= 6.0 and 32.0 <= waits[1] <= 48.0 and 240.0 <= waits[2] <= 360.0
    assert held[3].due_at == now + 10  # never past the horizon
    assert all(h.reason.startswith("retry.") and h.channel == "email" for h in held)
    assert msgspec.msgpack.decode(held[0].request, type=NotificationRequest).user_id == "u1"


def test_final_failures_and_requests_with_fallbacks_are_not_held():
    now = 100.0
    it = Item("00000000-0000-0000-0000-000000000001", "u1", req(accepted_at=now))
    with_fallback = Item("00000000-0000-0000-0000-000000000002", "u1",
                         req(accepted_at=now, fallback=["sms"]))
    outcomes = [failed(it.notification_id, "invalid_message"), failed(it.notification_id, "auth_error", "sms"),
                failed(with_fallback.notification_id, "circuit_open"),
                Outcome(it.notification_id, "u1", "push", "job_alerts", "sent", "ok", 0.0, 0.0)]
    held, kept = retry_later([it, with_fallback], outcomes, 3600, now=now)
    assert held == [] and kept == outcomes
    assert retry_later([it], [failed(it.notification_id, "circuit_open")], 0, now=now)[0] == []  # off


@given(st.lists(st.sampled_from(sorted(RETRY_REASONS) + ["invalid_message", "address_gone", "ok"]), max_size=20),
       st.floats(0, 10_000))
def test_every_outcome_is_either_held_or_kept(reasons, age):
    now = 1e6
    items = [Item(f"00000000-0000-0000-0000-{i:012d}", "u1", req(accepted_at=now - age)) for i in range(len(reasons))]
    outcomes = [failed(it.notification_id, r) for it, r in zip(items, reasons, strict=True)]
    held, kept = retry_later(items, outcomes, 3600, now=now)
    assert len(held) + len(kept) == len(outcomes)
    assert all(now < h.due_at <= now - age + 3600 for h in held)


def test_a_missing_or_future_acceptance_time_starts_the_retry_clock_now_and_is_kept():
    """Or the age would be 0 at every release, and the retries would never end."""
    now = 50_000.0
    for accepted in (None, 0.0, now + 10_000):
        it = Item("00000000-0000-0000-0000-000000000001", "u1", req(accepted_at=accepted))
        (held,), _ = retry_later([it], [failed(it.notification_id, "circuit_open")], 3600, now=now)
        assert held.accepted_at == now and 4.0 <= held.due_at - now <= 6.0
        again = msgspec.msgpack.decode(held.request, type=NotificationRequest)
        assert again.accepted_at == now
        later = Item(it.notification_id, "u1", again)  # released an hour on: it fails then
        assert retry_later([later], [failed(it.notification_id, "circuit_open")], 3600, now=now + 3600)[0] == []


# -- expiry: a notification's life and its collapse key ------------------------------------

EXPIRY = Policy(PolicyConfig(rules=(
    Rule(name="push_a_day", kind="expiry", channels=("push", "web"), ttl_s=86400),
    Rule(name="codes", kind="expiry", category="security", ttl_s=600, collapse_key="sign-in"),
)))


def test_the_request_s_life_and_collapse_key_come_first_then_the_category_rule_then_the_general_one():
    items = [Item("n1", "u1", req(["push", "email"], "security", accepted_at=NOON - 60)),
             Item("n2", "u1", req(["push", "email"], "job_alerts", accepted_at=NOON - 60)),
             Item("n3", "u1", req(["push"], "security", accepted_at=NOON - 60, ttl_s=3600, collapse_key="mine"))]
    plan = plan_round(items, {"u1": user()}, set(), ctx(policy=EXPIRY), now=NOON)
    got = {(t.notification_id, t.channel): (t.expires_at, t.collapse_key) for ts in plan.sends.values() for t in ts}
    assert got == {("n1", "push"): (NOON + 540, "sign-in"), ("n1", "email"): (NOON + 540, "sign-in"),
                   ("n2", "push"): (NOON - 60 + 86400, None), ("n2", "email"): (None, None),
                   ("n3", "push"): (NOON + 3540, "mine")}


def test_a_send_past_its_life_is_suppressed_as_expired_and_never_becomes_a_task():
    late = Item("n1", "u1", req(["push", "email"], "security", accepted_at=NOON - 601))
    plan = plan_round([late], {"u1": user()}, set(), ctx(policy=EXPIRY), now=NOON)
    assert not plan.sends
    assert sorted((o.channel, o.status, o.reason) for o in plan.outcomes) == [
        ("email", "suppressed", "ttl.expired"), ("push", "suppressed", "ttl.expired")]


def test_a_future_accepted_at_does_not_lengthen_the_life():
    item = Item("n1", "u1", req(["push"], "job_alerts", accepted_at=NOON + 3600, ttl_s=60))
    (task,) = plan_round([item], {"u1": user()}, set(), ctx(policy=EXPIRY), now=NOON).sends["push"]
    assert task.expires_at == NOON + 60


def test_expiry_rules_are_checked_when_configured():

    with pytest.raises(ValueError, match="ttl_s"):
        Rule(name="x", kind="expiry")
    with pytest.raises(ValueError, match="ttl_s"):
        Rule(name="x", kind="mandatory", ttl_s=60)
    with pytest.raises(ValueError, match="collapse_key"):
        Rule(name="x", kind="mandatory", collapse_key="k")
    with pytest.raises(msgspec.ValidationError, match="channels"):
        msgspec.convert({"name": "x", "kind": "expiry", "ttl_s": 60, "channels": ["pushh"]}, Rule)
    with pytest.raises(msgspec.ValidationError, match="ttl_s"):
        msgspec.convert({"name": "x", "kind": "expiry", "ttl_s": 0}, Rule)
    with pytest.raises(ValueError, match="channels, not channel"):  # it would apply to every channel
        Rule(name="x", kind="expiry", ttl_s=60, channel="push")
    with pytest.raises(msgspec.ValidationError, match="channel"):
        msgspec.convert({"name": "x", "kind": "consent_required", "channel": "smss"}, Rule)


def test_a_collapse_key_or_a_category_with_a_trailing_newline_is_refused():
    # msgspec searches with re.search, where "$" matches before a final newline: the patterns end in \Z
    for doc in ({"collapse_key": "sign-in\n"}, {"category": "orders\n"}, {"content": {"subject": "Hi\n"}}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"user_id": "u1", "category": "orders", "channels": ["push"], **doc}, NotificationRequest)


# -- scheduled sends: held, released, decided again from the same moment -------------------

def test_a_scheduled_send_is_held_then_released_and_sent_with_its_life_counted_from_then():
    accepted = NOON - 3 * 86400  # scheduled three days ahead, for 09:00 on the recipient's (Berlin) clock
    item = Item("n1", "u1", req(["push"], accepted_at=accepted, send_at_local="2026-11-18T09:00"))
    first = plan_round([item], {"u1": user()}, set(), ctx(policy=EXPIRY), now=accepted)
    (hold,) = first.holds
    assert (hold.reason, hold.due_at) == ("scheduled", at("2026-11-18T09:00"))
    # the Scheduler hands it back (stored as MessagePack, as held rows are) and it is decided again
    (again,) = deferred_items([DueDeferred(hold.user_id, hold.notification_id, hold.channel, hold.request)])
    second = plan_round([again], {"u1": user()}, set(), ctx(policy=EXPIRY), now=hold.due_at + 1)
    (task,) = second.sends["push"]  # not held again, and not expired: push's day starts when it was due
    assert task.expires_at == hold.due_at + 86400


def test_a_time_of_day_held_without_an_acceptance_time_is_released_not_held_again():
    item = Item("n1", "u1", req(["email"], send_at_local="09:00"))  # no accepted_at: the hold stores its own
    (hold,) = plan_round([item], {"u1": user()}, set(), ctx(), now=NOON).holds
    (again,) = deferred_items([DueDeferred(hold.user_id, hold.notification_id, hold.channel, hold.request)])
    assert again.request.accepted_at == NOON
    assert plan_round([again], {"u1": user()}, set(), ctx(), now=hold.due_at).sends  # due: sent, not a day on
