"""Business rules as data, and the deployment's preference policy.

A rule is a row of configuration (``[[preferences.rules]]`` in TOML), not code:

- ``mandatory``: the category may not be switched off on every channel
  (``channels`` narrows which count; default: every user channel but webhook).
- ``bypass_quiet_hours``: requests of these ``priorities`` pass quiet hours and
  time windows (never consent).
- ``bypass_digest``: requests of these ``priorities`` are never held for a digest.
- ``channel_priority``: ``channel`` is used only for these ``priorities``
  (e.g. voice only for critical).
- ``consent_required``: ``channel`` needs the user's granted consent, for
  ``purpose`` (``"*"``: the channel's). A record of the purpose decides; without
  one, the channel's does. With ``double_opt_in`` a grant is pending until the
  person confirms it (SMS: replies YES).
- ``send_window``: on ``channels`` (every channel when empty), requests are sent
  only inside ``windows``, wall-clock time in the recipient's zone, and held until
  the next one opens otherwise, with ``reason`` (default ``rule.<name>``). The TCPA
  rule is one: marketing SMS and voice only 08:00–21:00, reason ``tcpa.window``.
  No priority passes it.
- ``expiry``: notifications of ``category`` on ``channels`` (every channel when
  empty) are worth sending for ``ttl_s`` seconds after they were accepted, and
  push services are told to drop them then; ``collapse_key`` makes a newer push
  replace an older one not yet delivered. A request's own ``ttl_s`` and
  ``collapse_key`` come first; a rule of the category before a rule of ``"*"``.

``category`` narrows any rule to one category (``"*"``: all).
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from policy.choice import ChoiceConfig
from policy.fatigue import Fatigue, FatigueConfig
from policy.prefs import Preference, Resolved, ordered, resolve
from policy.timing import TimingConfig
from policy.types import Channel, CollapseKey, TtlSeconds
from policy.windows import Window, window_errors

_NO_NUL = r"^[^\x00]*\Z"
RuleKind = Literal["mandatory", "bypass_quiet_hours", "bypass_digest", "channel_priority", "consent_required",
                   "send_window", "expiry"]


class Rule(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    name: str
    kind: RuleKind
    category: str = "*"
    channel: Channel | Literal["*"] = "*"
    channels: tuple[Channel, ...] = ()  # a misspelt one would silently narrow nothing
    priorities: tuple[str, ...] = ()
    windows: tuple[Window, ...] = ()  # send_window: when sending is allowed
    reason: Annotated[str, Meta(pattern=r"^([a-z_]+\.)*[a-z_]+\Z")] | None = None  # send_window's hold reason
    purpose: Annotated[str, Meta(pattern=r"^(\*|[a-z][a-z0-9_]{0,31})\Z")] = "*"  # consent_required
    double_opt_in: bool = False  # consent_required: a grant waits for the person's confirmation
    ttl_s: TtlSeconds | None = None  # expiry: seconds a notification is worth sending
    collapse_key: CollapseKey | None = None  # expiry: a newer push replaces an undelivered older one

    def __post_init__(self) -> None:
        if self.double_opt_in and (self.kind != "consent_required" or self.channel != "sms" or self.purpose == "*"):
            raise ValueError(f"rule {self.name!r}: double_opt_in is for a consent_required rule of one purpose on sms "
                             "(the person confirms by replying YES to a text)")
        if (self.kind == "expiry") != (self.ttl_s is not None):
            raise ValueError(f"rule {self.name!r}: ttl_s is what an expiry rule sets, and only an expiry rule")
        if self.collapse_key is not None and self.kind != "expiry":
            raise ValueError(f"rule {self.name!r}: collapse_key belongs to an expiry rule")
        if self.kind == "expiry" and self.channel != "*":
            raise ValueError(f"rule {self.name!r}: an expiry rule names its channels in channels, not channel")
        if self.kind == "send_window":
            if not self.windows:
                raise ValueError(f"rule {self.name!r}: a send_window needs windows")
            problems = window_errors(list(self.windows), "allowed", "windows")
            if problems:
                raise ValueError(f"rule {self.name!r}: " + "; ".join(f"{f}: {why}" for f, why in problems))

    def applies(self, category: str) -> bool:
        return self.category == "*" or self.category == category


class Template(Struct, kw_only=True, forbid_unknown_fields=True):
    """A named, versioned set of preference rows; ``extends`` names a parent
    template whose rows apply where this one sets nothing."""

    id: str  # its form is checked with the other rows' errors (engine/http/prefs.py)
    version: int = 1
    # no NUL (PostgreSQL cannot store one in text); ``extends`` in the id's form,
    # since it is looked up before the template's other errors are reported
    name: Annotated[str, Meta(max_length=200, pattern=_NO_NUL)] = ""
    description: Annotated[str, Meta(max_length=2000, pattern=_NO_NUL)] = ""
    extends: Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+\Z")] | None = None
    preferences: list[Preference] = []


class PolicyConfig(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """What a deployment configures (``[preferences]``). Empty ``categories`` or
    ``content_types`` accept any value."""

    categories: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ()
    defaults: tuple[Preference, ...] = ()
    rules: tuple[Rule, ...] = ()
    default_template: str = ""
    max_rows: int = 200
    fatigue: FatigueConfig = FatigueConfig()  # caps per person per window (policy/fatigue.py)
    timing: TimingConfig = TimingConfig()  # "deliver": "optimal" (policy/timing.py)
    choice: ChoiceConfig = ChoiceConfig()  # "channel_strategy": "best" (policy/choice.py)


NOT_MANDATORY_CHANNELS = frozenset({"webhook"})


class Policy:
    """A PolicyConfig compiled for fast lookups. Resolution that involves no
    user rows and no template (most users) is cached per target."""

    def __init__(self, cfg: PolicyConfig | None = None):
        self.cfg = cfg or PolicyConfig()
        self.defaults = ordered(self.cfg.defaults)
        self.categories = frozenset(self.cfg.categories)
        self.content_types = frozenset(self.cfg.content_types)
        self._cache: dict[tuple, Resolved] = {}
        self._defaults_expire = any(p.expires_at is not None for p in self.defaults)
        # a default for one context (push off on desktops): each device is decided apart
        self.contextual_defaults = any(p.context for p in self.defaults)
        by_kind: dict[str, list[Rule]] = {}
        for r in self.cfg.rules:
            by_kind.setdefault(r.kind, []).append(r)
        self.rules = by_kind
        self.consent_channels: dict[str, list[Rule]] = {}  # channel -> its rules, one category before "*"
        for r in sorted(by_kind.get("consent_required", ()), key=lambda r: r.category == "*"):
            self.consent_channels.setdefault(r.channel, []).append(r)
        self.channel_rules: dict[str, Rule] = {r.channel: r for r in by_kind.get("channel_priority", ())}
        self.send_windows = by_kind.get("send_window", [])
        # a rule of the category before one of "*"
        self.expiry_rules = sorted(by_kind.get("expiry", ()), key=lambda r: r.category == "*")
        # None without caps: nothing is counted, and deciding costs nothing more
        self.fatigue: Fatigue | None = Fatigue(self.cfg.fatigue) if self.cfg.fatigue.caps else None

    def resolve(self, rows: tuple[Preference, ...], templates: tuple[tuple[str, tuple[Preference, ...]], ...],
                channel: str, category: str, content_type: str = "*", context: dict[str, str] | None = None,
                now: float = 0.0) -> Resolved:
        """The effective value for one user and target. ``rows`` are the user's
        own (``ordered``), ``templates`` their template chain, child first."""
        if not rows and not templates:
            if not context:
                key: tuple = (channel, category, content_type)
            elif len(context) == 1 and "urgency" in context:  # the common case: no request context
                key = (channel, category, content_type, context["urgency"])
            else:
                key = (channel, category, content_type, tuple(sorted(context.items())))
            hit = self._cache.get(key)
            if hit is None or self._defaults_expire:
                hit = resolve([("default", self.defaults)], channel, category, content_type, context, now)
                if len(self._cache) < 100_000:
                    self._cache[key] = hit
            return hit
        layers: list = [(None, rows)]
        layers.extend((f"template:{tid}", trows) for tid, trows in templates)
        layers.append(("default", self.defaults))
        return resolve(layers, channel, category, content_type, context, now)

    def bypasses(self, kind: str, priority: str, category: str) -> bool:
        return any(priority in r.priorities and r.applies(category) for r in self.rules.get(kind, ()))

    def channel_blocked(self, channel: str, priority: str, category: str) -> str | None:
        """The reason code if a ``channel_priority`` rule keeps this request off the channel."""
        r = self.channel_rules.get(channel)
        if r is not None and r.applies(category) and priority not in r.priorities:
            return f"rule.{r.name}"
        return None

    def send_windows_for(self, channel: str, category: str) -> list[Rule]:
        return [r for r in self.send_windows if r.applies(category) and (not r.channels or channel in r.channels)]

    def expiry(self, channel: str, category: str) -> Rule | None:
        """The ``expiry`` rule for a send of ``category`` on ``channel``, if any."""
        return next((r for r in self.expiry_rules if r.applies(category) and (not r.channels or channel in r.channels)),
                    None)

    def consent_rule(self, channel: str, category: str) -> Rule | None:
        """The consent rule a send of ``category`` on ``channel`` must pass, if any."""
        return next((r for r in self.consent_channels.get(channel, ()) if r.applies(category)), None)

    def needs_consent(self, channel: str, category: str) -> bool:
        return self.consent_rule(channel, category) is not None

    def double_opt_in(self, channel: str, purpose: str) -> bool:
        """Whether a grant of ``purpose`` on ``channel`` waits for confirmation."""
        return any(r.double_opt_in and r.purpose in (purpose, "*") for r in self.consent_channels.get(channel, ()))

    def mandatory(self) -> list[Rule]:
        return self.rules.get("mandatory", [])

    def can_opt_out(self, category: str) -> bool:
        """Whether a person may switch ``category`` off on a channel by themselves
        (a one-click unsubscribe): a category preference rows may name, with no
        mandatory rule on it."""
        return (not self.categories or category in self.categories) and not any(
            r.applies(category) for r in self.mandatory())

