"""The hosted preference center: ``GET``/``POST /p/{token}``.

A person reaches it through the sealed, expiring link at the foot of every
non-transactional email (``policy.unsubscribe.UnsubscribeRules.center_url``) or
the inbox's ``preference_center``. Server-rendered (Jinja2, autoescaped), no
JavaScript, labels on every control, usable at phone width.

What it edits: each category on each channel (mandatory ones shown, not
switchable), each category's frequency, quiet hours, time zone, consent for the
channels that need it, and "stop all marketing". Saving sends only what the
person changed against what the page showed, as one preference patch through
their UserShard with the version the page was made from (``If-Match``): the
same versioned, audited path as the API (actor ``user:<id>(center)``). If
something changed it meanwhile, the answer is 409 with the person's input kept
and the new version, so saving again applies it on top.
"""

from __future__ import annotations

import time
import zoneinfo
from dataclasses import dataclass, field

import jinja2
import msgspec
from aiohttp import web

from actors.user_links import unsubscribe_rules
from actors.user_prefs import PrefCommand
from engine import prefs_bus
from engine.http.access import Media, Public, Route, register
from engine.http.center_text import language, words
from engine.http.common import ENGINE
from engine.http.unsubscribe import PAGE_MEDIA, page
from policy import wire
from policy.decide import current_consent, split_consent_key
from policy.prefs import FREQUENCIES, USER_CHANNELS, Preference, narrower
from policy.types import UserState
from policy.unsubscribe import open_center
from policy.validate import PreferencesPatch
from policy.windows import Window

HHMM_CHARS = 5

_pages = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
CENTER = _pages.from_string("""<!doctype html>
<html lang="{{ lang }}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ t.title }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:1rem auto;padding:0 1rem;line-height:1.5}
fieldset{margin:0 0 1rem;border:1px solid #ccc;border-radius:6px}label{margin-right:1rem;white-space:nowrap}
.note{padding:.5rem 1rem;border-radius:6px;background:#eef}.error{background:#fee}
button{font-size:1rem;padding:.6rem 1.2rem}input,select{font-size:1rem}</style></head>
<body><main>
<h1>{{ t.title }}</h1>
{% if note %}<p class="note{% if error %} error{% endif %}" role="status">{{ note }}</p>{% endif %}
<form method="post">
<input type="hidden" name="version" value="{{ version }}">
{% for c in categories %}
<fieldset><legend>{{ c.label }}</legend>
{% for ch in channels %}
<label><input type="checkbox" name="on.{{ c.name }}.{{ ch }}" id="on.{{ c.name }}.{{ ch }}"
 {% if v.on[c.name][ch] %}checked{% endif %} {% if c.mandatory %}disabled{% endif %}> {{ ch }}</label>
{% endfor %}
{% if c.mandatory %}<p>{{ t.always }}</p>{% else %}
<p><label for="freq.{{ c.name }}">{{ t.how_often }}</label>
<select name="freq.{{ c.name }}" id="freq.{{ c.name }}">
{% for f in frequencies %}<option value="{{ f }}" {% if v.freq[c.name] == f %}selected{% endif %}>{{ t[f] }}</option>{% endfor %}
</select></p>{% endif %}
</fieldset>
{% endfor %}
<fieldset><legend>{{ t.quiet_hours }}</legend>
<label for="quiet_start">{{ t["from"] }}</label><input type="time" name="quiet_start" id="quiet_start" value="{{ v.quiet_start }}">
<label for="quiet_end">{{ t.to }}</label><input type="time" name="quiet_end" id="quiet_end" value="{{ v.quiet_end }}">
<p><label for="timezone">{{ t.timezone }}</label>
<input type="text" name="timezone" id="timezone" value="{{ v.timezone }}" maxlength="64" autocomplete="off"></p>
</fieldset>
{% if consent_channels %}<fieldset><legend>{{ t.consent }}</legend>
{% for ch in consent_channels %}
<label><input type="checkbox" name="consent.{{ ch }}" id="consent.{{ ch }}" {% if v.consent[ch] %}checked{% endif %}>
 {{ t.agree.format(channel=ch) }}</label>
{% endfor %}</fieldset>{% endif %}
{% if has_marketing %}<p><label><input type="checkbox" name="stop_marketing" id="stop_marketing"
 {% if v.stop_marketing %}checked{% endif %}> {{ t.stop_marketing }}</label></p>{% endif %}
<button type="submit">{{ t.save }}</button>
</form></main></body></html>
""")


@dataclass
class Values:
    """What the page shows, or what the person submitted."""

    on: dict[str, dict[str, bool]] = field(default_factory=dict)
    freq: dict[str, str] = field(default_factory=dict)
    quiet_start: str = ""
    quiet_end: str = ""
    timezone: str = "UTC"
    consent: dict[str, bool] = field(default_factory=dict)
    consent_keys: dict[str, list[str]] = field(default_factory=dict)  # shown: the keys each box stands for
    stop_marketing: bool = False


@dataclass
class Layout:
    categories: list[dict]
    channels: list[str]
    consent_channels: list[str]
    marketing: frozenset[str] = frozenset()
    t: dict[str, str] = field(default_factory=lambda: words("en"))  # the page's words, in the person's language
    lang: str = "en"


def _layout(engine, effective: dict, state: UserState) -> Layout:
    policy = engine.policy
    enabled = engine.enabled_channels
    channels = [ch for ch in USER_CHANNELS if ch in enabled and ch != "webhook"]
    names = list(policy.categories) or sorted({e["category"] for e in effective["effective"]} - {"*"})
    cats = [{"name": c, "label": c.replace("_", " ").capitalize(), "mandatory": not policy.can_opt_out(c)}
            for c in names]
    consent = [ch for ch in channels if any(r.channel == ch for r in policy.rules.get("consent_required", ()))]
    return Layout(cats, channels, consent, frozenset(engine.cfg.compliance.marketing_categories),
                  words(state.locale), language(state.locale))


def _global_quiet(state: UserState) -> list | None:
    for p in state.prefs:
        if p.key() == ("*", "*", "*", "") and p.quiet_hours is not None:
            return p.quiet_hours
    return None


def _shown(layout: Layout, effective: dict, state: UserState) -> Values:
    resolved = {(e["channel"], e["category"]): e for e in effective["effective"]}
    v = Values(timezone=effective["timezone"])
    for c in layout.categories:
        name = c["name"]
        v.on[name] = {ch: bool(resolved.get((ch, name), {}).get("enabled", True)) for ch in layout.channels}
        first = resolved.get((layout.channels[0], name), {}) if layout.channels else {}
        v.freq[name] = first.get("frequency") or "immediate"
    quiet = _global_quiet(state)
    if quiet:
        v.quiet_start, v.quiet_end = quiet[0].start, quiet[0].end
    held = current_consent(state, time.time())  # each channel's keys that a withdrawal there must reach
    v.consent_keys = {ch: sorted(k for k, s in held.items() if s in ("granted", "pending")
                                 and split_consent_key(k)[0] == ch) for ch in layout.consent_channels}
    v.consent = {ch: bool(keys) for ch, keys in v.consent_keys.items()}
    marketing = [c["name"] for c in layout.categories if c["name"] in layout.marketing]
    v.stop_marketing = bool(marketing) and not any(v.on[c][ch] for c in marketing for ch in layout.channels)
    return v


def _submitted(layout: Layout, form) -> Values:
    v = Values(quiet_start=str(form.get("quiet_start", "")).strip()[:HHMM_CHARS],
               quiet_end=str(form.get("quiet_end", "")).strip()[:HHMM_CHARS],
               timezone=str(form.get("timezone", "")).strip()[:64], stop_marketing="stop_marketing" in form)
    for c in layout.categories:
        v.on[c["name"]] = {ch: f"on.{c['name']}.{ch}" in form for ch in layout.channels}
        f = str(form.get(f"freq.{c['name']}", "immediate"))
        v.freq[c["name"]] = f if f in FREQUENCIES else "immediate"
    v.consent = {ch: f"consent.{ch}" in form for ch in layout.consent_channels}
    return v


class _Rows:
    """The patch's rows, each merged into the person's own row of the same key:
    a PATCH's ``set`` replaces a whole row, and a frequency or quiet hours saved
    here must not drop what else that row holds (``enabled``, windows, expiry)."""

    def __init__(self, state: UserState):
        self.mine = {p.key(): p for p in state.prefs}
        self.rows: dict[tuple, Preference] = {}

    def change(self, **fields) -> None:
        key = Preference(**{k: v for k, v in fields.items() if k in KEY_FIELDS})
        current = self.rows.get(key.key()) or self.mine.get(key.key())
        values = {k: v for k, v in fields.items() if k not in KEY_FIELDS}
        self.rows[key.key()] = msgspec.structs.replace(current, **values) if current is not None else \
            msgspec.structs.replace(key, **values)


KEY_FIELDS = ("channel", "category", "content_type", "context")


def _patch(layout: Layout, shown: Values, want: Values, state: UserState) -> tuple[PreferencesPatch | None, str | None]:
    """What changed between the page and the submission, as one patch; or what is wrong with it."""
    rows, removals = _Rows(state), []
    for c in layout.categories:
        name = c["name"]
        if c["mandatory"]:
            continue
        if want.stop_marketing and name in layout.marketing:
            if not shown.stop_marketing:  # off on every channel, and the narrower rows that would override it
                for ch in USER_CHANNELS:
                    rows.change(channel=ch, category=name, enabled=False)
                removals += narrower(state.prefs, name)
            continue
        for ch in layout.channels:
            if want.on[name][ch] != shown.on[name][ch]:
                rows.change(channel=ch, category=name, enabled=want.on[name][ch])
        if want.freq[name] != shown.freq[name]:
            for ch in layout.channels:  # per channel: a channel's own frequency row would win over (*, category)
                rows.change(channel=ch, category=name, frequency=want.freq[name])
    quiet = (want.quiet_start, want.quiet_end)
    if quiet != (shown.quiet_start, shown.quiet_end):
        if all(quiet):
            try:
                window = msgspec.convert({"start": quiet[0], "end": quiet[1]}, Window)
            except msgspec.ValidationError:
                return None, layout.t["quiet_format"]
            rows.change(quiet_hours=[window])
        elif any(quiet):
            return None, layout.t["quiet_both"]
        else:
            rows.change(quiet_hours=[])
    patch = PreferencesPatch(set=list(rows.rows.values()), remove=removals)
    if want.timezone != shown.timezone:
        try:
            zoneinfo.ZoneInfo(want.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            return None, layout.t["bad_zone"].format(zone=want.timezone)
        patch.timezone = want.timezone
    # consent is only withdrawn here: a forwarded link must not sign anyone up for texts or calls
    # (every purpose's grant on that channel: the box stands for all of them)
    patch.consent = {k: "withdrawn" for ch in layout.consent_channels if shown.consent[ch] and not want.consent[ch]
                     for k in shown.consent_keys.get(ch) or [ch]}
    return patch, None


def _render(layout: Layout, v: Values, version: int, note: str = "", error: bool = False,
            status: int = 200) -> web.Response:
    body = CENTER.render(categories=layout.categories, channels=layout.channels,
                         consent_channels=layout.consent_channels, frequencies=FREQUENCIES, v=v, version=version,
                         note=note, error=error, t=layout.t, lang=layout.lang,
                         has_marketing=any(c["name"] in layout.marketing for c in layout.categories))
    return web.Response(status=status, text=body, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                                 "X-Frame-Options": "DENY", "Content-Security-Policy": "default-src 'none'; "
                                 "style-src 'unsafe-inline'; form-action 'self'"})


GONE = ("Link not valid", "This link has expired or is not valid. Use the link in your most recent message.")


async def _person(request: web.Request):
    engine = request.app[ENGINE]
    rules = unsubscribe_rules(engine.cfg)  # None: no links are made, none open
    link = open_center(rules.secret, request.match_info["token"], time.time()) if rules is not None else None
    if link is None:
        return None
    found = await engine.shard_for(link.user_id).get_user.remote(link.user_id)
    if found is None:
        return None
    effective = wire.decode(await engine.shard_for(link.user_id).effective.remote(link.user_id), dict)
    return engine, link.user_id, wire.decode(found, UserState), effective


async def show(request: web.Request) -> web.Response:
    """The preference center page: a person's categories, channels, frequency, quiet hours, consent.

    A link that expired or does not open, or a person erased since, is a 404
    page."""
    person = await _person(request)
    if person is None:
        return page(404, *GONE)
    engine, _uid, state, effective = person
    layout = _layout(engine, effective, state)
    return _render(layout, _shown(layout, effective, state), effective["version"])


async def save(request: web.Request) -> web.Response:
    """Save the preference center's form: what the person changed, as one versioned preference patch.

    200 with the page as saved (or saying nothing changed); 409 with the
    person's input kept and the new version when their preferences changed
    since the page was made (saving again applies it on top); 422 with their
    input kept when a value is wrong (quiet hours, time zone) or the patch is
    refused; 400 page without a valid ``version``; 404 page as for the GET."""
    person = await _person(request)
    if person is None:
        return page(404, *GONE)
    engine, uid, state, effective = person
    try:
        form = await request.post()
        version = int(str(form.get("version", "")))
    except (ValueError, LookupError):
        return page(400, "Not understood", "Reload the page and try again.")
    layout = _layout(engine, effective, state)
    want = _submitted(layout, form)
    if version != effective["version"]:  # changed elsewhere since the page was made: keep what they chose
        return _render(layout, want, effective["version"], layout.t["stale"], error=True, status=409)
    patch, problem = _patch(layout, _shown(layout, effective, state), want, state)
    if problem is not None:
        return _render(layout, want, version, problem, error=True, status=422)
    if not (patch.set or patch.remove or patch.consent or patch.timezone):
        return _render(layout, want, version, layout.t["nothing"])
    cmd = PrefCommand(user_id=uid, patch=patch, if_match=version, source="center", actor=f"user:{uid}(center)")
    result = (await prefs_bus.run_commands(engine, [cmd]))[0]
    if result.status == "conflict":
        return _render(layout, want, result.version, layout.t["stale"], error=True, status=409)
    if result.status != "ok":
        reason = result.errors[0][1] if result.errors else "refused"
        return _render(layout, want, version, layout.t["not_saved"].format(reason=reason), error=True, status=422)
    effective = wire.decode(await engine.shard_for(uid).effective.remote(uid), dict)
    fresh = await engine.shard_for(uid).get_user.remote(uid)
    return _render(layout, _shown(layout, effective, wire.decode(fresh, UserState)), effective["version"],
                   layout.t["saved"])


_CHANNEL = "(" + "|".join(USER_CHANNELS) + ")"
# The fields save() reads of the form (request.post(): urlencoded or multipart), as the page writes them
FORM = {
    "type": "object",
    "properties": {
        "version": {"type": "integer", "description": "The preferences' version the page was made from "
                                                      "(the hidden field); another one is a 409"},
        "quiet_start": {"type": "string", "examples": ["22:00"], "description": "Quiet hours' start, HH:MM (with "
                        f"quiet_end; both empty: none; only the first {HHMM_CHARS} characters are read)"},
        "quiet_end": {"type": "string", "examples": ["07:00"], "description": "Quiet hours' end, HH:MM"},
        "timezone": {"type": "string", "examples": ["Europe/Vienna"],
                     "description": "An IANA time zone (only the first 64 characters are read)"},
        "stop_marketing": {"type": "string", "description": "Present (a checked box): stop every marketing "
                                                            "category on every channel"},
    },
    "patternProperties": {
        rf"^on\..+\.{_CHANNEL}$": {"type": "string", "description": "on.<category>.<channel>: present (a checked "
                                                                     "box) is on, absent off"},
        r"^freq\..+$": {"type": "string", "examples": list(FREQUENCIES), "description": "freq.<category>: how often (another value "
                                                                   "is immediate)"},
        rf"^consent\.{_CHANNEL}$": {"type": "string", "description": "consent.<channel>: present keeps the "
                                                                      "consent given; absent withdraws it"},
    },
    "required": ["version"],
}
WHY = "the sealed, expiring preference center link is the credential"
ROUTES = [
    Route("GET", "/p/{token}", show, Public(WHY), answers={200: PAGE_MEDIA}, errors=(404,)),
    Route("POST", "/p/{token}", save, Public(WHY),
          body=(Media("application/x-www-form-urlencoded", FORM), Media("multipart/form-data", FORM)),
          answers={200: PAGE_MEDIA}, errors=(404, 409, 422), example={"version": 3, "quiet_start": "22:00",
                                                                     "quiet_end": "07:00", "timezone": "UTC"}),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
