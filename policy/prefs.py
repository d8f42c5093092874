"""The preference model: override rows, the levels they sit at, and how a value
is resolved for one (channel, category, content type, context).

A user stores only what differs from the defaults: a list of ``Preference``
rows. Each row is keyed by (channel, category, content_type, context), where
``"*"`` means "every"; which of those are set decides its level. Resolution is
per field and most specific first:

    contextual > content type > category > channel > global   (the user's rows)
    > template (the user's template, child before the template it extends)
    > system defaults (configuration)  > built-in (enabled, immediate)

so a user who turned email off but marketing on keeps marketing email, and a
row that sets only ``frequency`` leaves ``enabled`` to a less specific level.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from policy.windows import Window

Frequency = Literal["immediate", "hourly", "daily", "weekly", "monthly", "never"]
FREQUENCIES: tuple[str, ...] = ("immediate", "hourly", "daily", "weekly", "monthly", "never")
DIGEST_FREQUENCIES = frozenset({"hourly", "daily", "weekly", "monthly"})
CONTEXT_KEYS: tuple[str, ...] = ("device", "location", "activity", "urgency")
USER_CHANNELS: tuple[str, ...] = ("email", "sms", "push", "in_app", "web", "voice", "webhook")

# Levels, most specific first; the number is the rank used to order rows.
LEVELS = {"contextual": 5, "content": 4, "category": 3, "channel": 2, "global": 1}
FIELDS: tuple[str, ...] = ("enabled", "frequency", "quiet_hours", "time_windows", "custom")

# No control characters anywhere: PostgreSQL refuses NUL in text and jsonb, and a
# value that cannot be stored must be refused when it arrives.
Token = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+\Z")]
ContextValue = Annotated[str, Meta(max_length=100, pattern=r"^[^\x00-\x1f\x7f]*\Z")]


class Preference(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One override. Key fields say where it applies; value fields left ``None``
    are not set here and come from a less specific level."""

    channel: Token = "*"
    category: Token = "*"
    content_type: Token = "*"
    context: dict[Token, ContextValue] = {}
    enabled: bool | None = None
    frequency: Frequency | None = None
    quiet_hours: list[Window] | None = None
    time_windows: list[Window] | None = None
    custom: dict[str, Any] | None = None
    priority: Annotated[int, Meta(ge=-1000, le=1000)] = 0  # breaks ties at the same level: higher wins
    expires_at: Annotated[float, Meta(ge=0, le=4e9)] | None = None  # epoch seconds; ignored from then on

    @property
    def level(self) -> str:
        if self.context:
            return "contextual"
        if self.content_type != "*":
            return "content"
        if self.category != "*":
            return "category"
        return "channel" if self.channel != "*" else "global"

    def key(self) -> tuple[str, str, str, str]:
        return (self.channel, self.category, self.content_type, context_key(self.context))

    def value(self) -> dict[str, Any]:
        """The value fields that are set (the ``value`` JSON of a stored row)."""
        return {f: getattr(self, f) for f in FIELDS if getattr(self, f) is not None}


class PrefKey(Struct, kw_only=True, forbid_unknown_fields=True):
    """Which row a PATCH removes."""

    channel: Token = "*"
    category: Token = "*"
    content_type: Token = "*"
    context: dict[Token, ContextValue] = {}

    def key(self) -> tuple[str, str, str, str]:
        return (self.channel, self.category, self.content_type, context_key(self.context))


def narrower(rows: Iterable[Preference], category: str, channel: str | None = None) -> list[PrefKey]:
    """The keys of a person's rows for ``category`` (on ``channel``, or any) that
    are narrower than the category's own row: one content type or context. Such a
    row would override an opt-out of the category, so an opt-out removes them."""
    return [PrefKey(channel=p.channel, category=p.category, content_type=p.content_type, context=p.context)
            for p in rows if p.category == category and (channel is None or p.channel == channel)
            and (p.content_type != "*" or p.context)]


def context_key(context: dict[str, str]) -> str:
    """The canonical text of a context (stored, and part of a row's identity)."""
    return "&".join(f"{k}={context[k]}" for k in sorted(context))


def specificity(p: Preference) -> tuple:
    """Sort key, larger = more specific: the level, then within it how many of
    channel, category, content type and context keys are named, then ``priority``,
    then the row's key, so the order never depends on the order rows came in."""
    return (LEVELS[p.level], p.channel != "*", p.category != "*", p.content_type != "*", len(p.context),
            p.priority, p.key())


def ordered(rows: Iterable[Preference]) -> tuple[Preference, ...]:
    """Rows most specific first: the order resolution reads them in."""
    return tuple(sorted(rows, key=specificity, reverse=True))


class Resolved(Struct, kw_only=True):
    """The effective value of every field for one target, and where each came from
    (``"contextual"`` … ``"global"``, ``"template"``, ``"default"``, ``"builtin"``)."""

    enabled: bool = True
    frequency: str = "immediate"
    quiet_hours: tuple[Window, ...] = ()
    time_windows: tuple[Window, ...] = ()
    custom: dict[str, Any] | None = None
    source: dict[str, str] = {}


def matches(p: Preference, channel: str, category: str, content_type: str, context: dict[str, str]) -> bool:
    if p.channel != "*" and p.channel != channel:
        return False
    if p.category != "*" and p.category != category:
        return False
    if p.content_type != "*" and p.content_type != content_type:
        return False
    for k, v in p.context.items():
        if context.get(k) != v:
            return False
    return True


def resolve(layers: Sequence[tuple[str | None, Sequence[Preference]]], channel: str, category: str,
            content_type: str = "*", context: dict[str, str] | None = None, now: float = 0.0) -> Resolved:
    """Resolve every field from ``layers`` (most specific layer first; each an
    (origin, rows already ``ordered``) pair; origin ``None`` names each row by
    its own level). A row whose ``expires_at`` has passed is skipped."""
    ctx = context or {}
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for origin, rows in layers:
        for p in rows:
            if p.expires_at is not None and p.expires_at <= now:
                continue
            if not matches(p, channel, category, content_type, ctx):
                continue
            for f in FIELDS:
                if f not in values:
                    v = getattr(p, f)
                    if v is not None:
                        values[f] = v
                        source[f] = origin or p.level
            if len(values) == len(FIELDS):
                break
    out = Resolved(source=source)
    for f, v in values.items():
        setattr(out, f, tuple(v) if f in ("quiet_hours", "time_windows") else v)
    for f in FIELDS:
        source.setdefault(f, "builtin")
    return out
