"""The preference model: resolution order (property-tested against a brute-force
oracle), rules as data, decisions with quiet hours and digests, validation."""

from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings, strategies as st

from policy.decide import decide
from policy.prefs import FIELDS, LEVELS, Preference, PrefKey, matches, ordered, specificity
from policy.rules import Policy, PolicyConfig, Rule
from policy.types import Content, DigestKey, NotificationRequest, UserState
from policy.validate import PreferencesDoc, PreferencesPatch, apply_patch, doc_errors, patch_errors, rule_errors
from policy.windows import Window

ALL = frozenset({"email", "sms", "push", "voice", "webhook", "in_app"})
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, tz=BERLIN) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def req(channels=("email",), category="job_alerts", priority="normal", **kw):
    return NotificationRequest(user_id="u1", category=category, channels=list(channels), priority=priority,
                               content=Content(subject="s", text="x"), **kw)


def user(*rows, **kw):
    kw.setdefault("addresses", {c: "x@y.z" for c in ("email", "sms", "push", "voice")})
    return UserState(user_id="u1", prefs=ordered(rows), timezone="Europe/Berlin", **kw)


def reasons(request, state, policy=Policy(), now=1_795_000_000.0):  # 2026-11-18 11:06 UTC
    return [(d.action, d.reason) for d in decide(request, state, ALL, policy, now=now)]


# -- resolution order --------------------------------------------------------------

def test_most_specific_level_wins_per_field():
    state = user(Preference(channel="email", enabled=False),
                 Preference(category="marketing", enabled=True, frequency="weekly"),
                 Preference(channel="email", category="marketing", content_type="promo", enabled=False))
    assert reasons(req(category="job_alerts"), state) == [("suppress", "pref.channel_off")]
    assert reasons(req(category="marketing"), state, now=at("2026-11-18T12:00"))[0] == ("digest", "digest.weekly")
    assert reasons(req(category="marketing", content_type="promo"), state) == [("suppress", "pref.content_off")]


def test_context_beats_content_and_urgency_is_the_priority():
    state = user(Preference(channel="push", enabled=False),
                 Preference(channel="push", context={"urgency": "critical"}, enabled=True),
                 Preference(channel="push", context={"device": "watch"}, enabled=True))
    assert reasons(req(["push"]), state) == [("suppress", "pref.channel_off")]
    assert reasons(req(["push"], priority="critical"), state) == [("send", "ok")]
    assert reasons(req(["push"], context={"device": "watch"}), state) == [("send", "ok")]


def test_template_then_defaults_fill_what_the_user_left_unset():
    policy = Policy(PolicyConfig(defaults=(Preference(category="marketing", enabled=False),)))
    template = (("jobs", ordered([Preference(category="marketing", enabled=True, frequency="daily")])),)
    bare = user()
    assert reasons(req(category="marketing"), bare, policy) == [("suppress", "pref.default_off")]
    following = user(templates=template, template="jobs")
    now = at("2026-11-18T12:00")
    assert reasons(req(category="marketing"), following, policy, now) == [("digest", "digest.daily")]
    r = policy.resolve((), template, "email", "marketing", now=now)
    assert r.source["enabled"] == "template:jobs" and r.source["quiet_hours"] == "builtin"


def test_expired_rows_are_ignored():
    state = user(Preference(channel="email", enabled=False, expires_at=100.0))
    assert reasons(req(), state, now=99.0) == [("suppress", "pref.channel_off")]
    assert reasons(req(), state, now=101.0) == [("send", "ok")]


ROWS = st.builds(
    Preference,
    channel=st.sampled_from(["*", "email", "sms"]),
    category=st.sampled_from(["*", "jobs", "news"]),
    content_type=st.sampled_from(["*", "digest"]),
    context=st.sampled_from([{}, {"device": "phone"}, {"device": "phone", "location": "home"}]),
    enabled=st.none() | st.booleans(),
    frequency=st.none() | st.sampled_from(["immediate", "daily", "never"]),
    priority=st.integers(0, 2),
)


def test_order_of_rows_does_not_matter():
    a = Preference(content_type="newsletter", enabled=False)
    b = Preference(category="marketing", content_type="newsletter", enabled=True)
    for rows in ([a, b], [b, a]):
        assert Policy().resolve(ordered(rows), (), "email", "marketing", "newsletter").enabled is True


@settings(max_examples=300, deadline=None)
@given(st.lists(ROWS, max_size=12, unique_by=lambda p: p.key()), st.sampled_from(["email", "sms", "push"]),
       st.sampled_from(["jobs", "news"]), st.sampled_from(["*", "digest"]),
       st.sampled_from([{}, {"device": "phone"}, {"device": "phone", "location": "home"}]))
def test_resolution_matches_a_brute_force_oracle(rows, channel, category, content_type, context):
    got = Policy().resolve(ordered(rows), (), channel, category, content_type, context)
    for field in ("enabled", "frequency"):
        candidates = [p for p in rows if matches(p, channel, category, content_type, context)
                      and getattr(p, field) is not None]
        if not candidates:
            assert got.source[field] == "builtin"
            continue
        winner = max(candidates, key=specificity)  # a total order: no ties
        assert getattr(got, field) == getattr(winner, field)
        assert got.source[field] == winner.level
        # and no more specific level could have set it
        assert all(LEVELS[p.level] <= LEVELS[winner.level] for p in candidates)


# -- rules as data -----------------------------------------------------------------

RULES = Policy(PolicyConfig(rules=(
    Rule(name="voice_critical_only", kind="channel_priority", channel="voice", priorities=("critical",)),
    Rule(name="sms_consent", kind="consent_required", channel="sms"),
    Rule(name="critical_passes_quiet", kind="bypass_quiet_hours", priorities=("critical",)),
    Rule(name="security_now", kind="bypass_digest", category="security", priorities=("normal", "high", "critical")),
    Rule(name="security_mandatory", kind="mandatory", category="security"),
)))
QUIET = [Window(start="22:00", end="07:00")]


def test_channel_rule_and_consent_never_bypassed():
    state = user(Preference(quiet_hours=QUIET))
    assert reasons(req(["voice"]), state, RULES) == [("suppress", "rule.voice_critical_only")]
    assert reasons(req(["sms"], priority="critical"), state, RULES) == [("suppress", "consent.missing_sms")]
    consented = user(consent=frozenset({"sms"}))
    assert reasons(req(["sms"]), consented, RULES) == [("send", "ok")]


def test_quiet_hours_defer_to_the_window_end_unless_critical():
    state = user(Preference(quiet_hours=QUIET))
    night = at("2026-11-18T23:30")
    (d,) = decide(req(), state, ALL, RULES, now=night)
    assert (d.action, d.reason, d.until) == ("defer", "quiet_hours", at("2026-11-19T07:00"))
    assert reasons(req(priority="critical"), state, RULES, night) == [("send", "ok")]
    assert reasons(req(), state, RULES, at("2026-11-19T07:00")) == [("send", "ok")]


def test_time_windows_defer_to_the_next_start():
    state = user(Preference(channel="sms", time_windows=[Window(start="09:00", end="17:00",
                                                                days=("mon", "tue", "wed", "thu", "fri"))]),
                 consent=frozenset({"sms"}))
    (d,) = decide(req(["sms"]), state, ALL, RULES, now=at("2026-11-21T10:00"))  # a Saturday
    assert (d.action, d.reason, d.until) == ("defer", "time_window", at("2026-11-23T09:00"))


def test_digest_key_names_the_period_in_the_users_zone():
    state = user(Preference(category="job_alerts", frequency="daily"))
    (d,) = decide(req(), state, ALL, RULES, now=at("2026-11-18T23:59"))
    assert d.action == "digest" and d.until == at("2026-11-19T00:00")
    assert d.key == DigestKey("u1", "email", "job_alerts", "daily", int(at("2026-11-19T00:00")))
    assert d.key.text() == f"u1|email|job_alerts|daily|{int(at('2026-11-19T00:00'))}"  # as stored
    security = user(Preference(frequency="daily"))
    assert reasons(req(category="security"), security, RULES, at("2026-11-18T12:00")) == [("send", "ok")]
    assert decide(req(), state, ALL, RULES, now=at("2026-11-18T12:00"), digest=False)[0].action == "send"


def test_frequency_never_suppresses():
    assert reasons(req(), user(Preference(frequency="never"))) == [("suppress", "pref.frequency_never")]


# -- validation --------------------------------------------------------------------

STRICT = Policy(PolicyConfig(categories=("job_alerts", "marketing", "security"), rules=RULES.cfg.rules))


def test_every_violation_is_reported_with_its_path():
    doc = PreferencesDoc(preferences=[
        Preference(channel="pigeon", category="spam", enabled=False),
        Preference(channel="email", quiet_hours=[Window(start="08:00", end="08:00")]),
        Preference(channel="sms", time_windows=[Window(start="18:00", end="09:00")]),
        Preference(channel="email", enabled=True),
        Preference(channel="push", context={"mood": "calm"}, enabled=True),
        Preference(channel="web"),
    ], consent={"fax": "granted"}, timezone="Mars/Olympus")
    fields = {f for f, _ in doc_errors(doc, STRICT)}
    assert fields == {"preferences[0].channel", "preferences[0].category", "preferences[1].quiet_hours[0].end",
                      "preferences[2].time_windows[0].end", "preferences[3]", "preferences[4].context.mood",
                      "preferences[5]", "consent.fax", "timezone"}


def test_mandatory_category_cannot_be_switched_off_everywhere():
    off = [Preference(enabled=False)]
    assert rule_errors(off, (), STRICT, 0.0)[0][0] == "preferences"
    assert rule_errors(off + [Preference(channel="email", category="security", enabled=True)], (), STRICT, 0.0) == []


def test_patch_sets_by_key_and_removes():
    rows = [Preference(channel="email", enabled=False), Preference(category="marketing", frequency="weekly")]
    out = apply_patch(rows, PreferencesPatch(set=[Preference(channel="email", enabled=True)]))
    assert [(p.channel, p.category, p.enabled) for p in out] == [("*", "marketing", None), ("email", "*", True)]
    out = apply_patch(out, PreferencesPatch(remove=[PrefKey(category="marketing")]))
    assert [(p.channel, p.enabled) for p in out] == [("email", True)]
    assert patch_errors(PreferencesPatch(set=[Preference(channel="nope", enabled=True)]), STRICT)[0][0] == \
        "set[0].channel"


def test_fields_are_what_rows_can_set():
    assert set(FIELDS) == set(Preference(enabled=True).value()) | {"frequency", "quiet_hours", "time_windows",
                                                                      "custom"}


def test_mandatory_rule_sees_what_decide_would_do():
    security_on_email = Preference(channel="email", category="security", enabled=True)
    ways_round = [
        [Preference(category="security", frequency="never")],
        [Preference(context={"urgency": u}, enabled=False) for u in ("low", "normal", "high", "critical")],
        [Preference(enabled=False), Preference(channel="email", category="security", enabled=True, expires_at=5e8)],
        [Preference(channel=c, enabled=False) for c in ("email", "push", "in_app", "web")],  # sms: no consent
    ]
    for rows in ways_round:
        assert rule_errors(rows, (), STRICT, 1e8), rows
    assert rule_errors([Preference(enabled=False), security_on_email], (), STRICT, 1e8) == []
    sms_only = [Preference(channel=c, enabled=False) for c in ("email", "push", "in_app", "web")]
    assert rule_errors(sms_only, (), STRICT, 1e8, consent=frozenset({"sms"})) == []
