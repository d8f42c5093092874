"""Segments: an audience described by what is known of each user, evaluated by
the UserShard that owns them (addresses and consent are sealed in PostgreSQL, so
the shards, which hold them open, are where a condition on them can be tested).

A filter is JSON, a tree of at most ``MAX_NODES`` nodes and ``MAX_DEPTH`` levels:

- ``{"all": [f, …]}`` every one holds; ``{"any": [f, …]}`` one at least;
  ``{"not": f}`` it does not;
- ``{"field": F, "op": O, "value": V}`` a condition:

==================  ============================  =================================
field               ops                           value
==================  ============================  =================================
``locale``          eq, ne, in, prefix            a locale (``"en-GB"``), a list, a prefix
``timezone``        eq, ne, in, prefix            a zone (``"Europe/Paris"``), a list, ``"Europe/"``
``template``        eq, ne, in, exists            a preference template id (``exists``: true/false)
``address``         has                           a channel: an address (or device) there, not suppressed
``consent``         has                           a consent key (``"sms"``, ``"sms:marketing"``) granted now
``preference``      enabled                       ``"channel:category"``: the user's effective preference
                                                  sends it (enabled, frequency not ``never``)
``last_opened``     within_days, exists           days (1–3650); ``exists``: true/false
``last_clicked``    within_days, exists           as ``last_opened``
``last_engaged``    within_days, exists           an open or a click
==================  ============================  =================================

``check`` answers every mistake with the path of the field at fault;
``predicate`` turns a checked filter into a predicate over a user's state and
engagement. No clock here: ``now`` is an argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from msgspec import Struct

from policy.audience import Audience, Where
from policy.decide import consent_status, split_consent_key
from policy.devices import reachable
from policy.types import UserState

if TYPE_CHECKING:
    from policy.rules import Policy

MAX_DEPTH = 8
MAX_NODES = 100
MAX_LIST = 1000
MAX_ERRORS = 100  # mistakes named in one answer
DAY_S = 86_400.0
CHANNELS = frozenset({"email", "sms", "push", "in_app", "web", "voice", "webhook"})


class Engagement(Struct, array_like=True):
    """When a user last opened and last clicked (seconds since the epoch), from
    ``engagement_events``; read only for filters that ask (``needs_engagement``)."""

    opened: float | None = None
    clicked: float | None = None


class Invalid(ValueError):
    """A filter that cannot be used: (path, reason) for each mistake."""

    def __init__(self, errors: list[tuple[str, str]]):
        super().__init__("; ".join(f"{p}: {r}" for p, r in errors))
        self.errors = errors


TEXT_OPS = {"eq", "ne", "in", "prefix"}
FIELDS: dict[str, set[str]] = {
    "locale": TEXT_OPS, "timezone": TEXT_OPS, "template": {"eq", "ne", "in", "exists"},
    "address": {"has"}, "consent": {"has"}, "preference": {"enabled"},
    "last_opened": {"within_days", "exists"}, "last_clicked": {"within_days", "exists"},
    "last_engaged": {"within_days", "exists"},
}
ENGAGEMENT = frozenset({"last_opened", "last_clicked", "last_engaged"})


def _text(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 200 and v.isprintable()


def _value_error(fname: str, op: str, v: Any) -> str | None:
    """Why ``v`` is not a value for ``fname`` ``op``, or None."""
    if op == "in":
        if not isinstance(v, list) or not v or len(v) > MAX_LIST or not all(_text(x) for x in v):
            return f"expected a list of 1 to {MAX_LIST} strings"
        return None
    if op == "exists":
        return None if isinstance(v, bool) else "expected true or false"
    if op == "within_days":
        ok = isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 3650
        return None if ok else "expected a whole number of days, 1 to 3650"
    if not _text(v):
        return "expected a string of 1 to 200 printable characters"
    if fname == "address" and v not in CHANNELS:
        return f"expected a channel ({', '.join(sorted(CHANNELS))})"
    if fname == "consent" and split_consent_key(v)[0] not in CHANNELS:
        return 'expected a consent key: "<channel>" or "<channel>:<purpose>"'
    if fname == "preference":
        channel, _, category = v.partition(":")
        if channel not in CHANNELS or not category:
            return 'expected "<channel>:<category>"'
    return None


def check(where: Where, at: str = "$") -> None:
    """Raise ``Invalid`` naming every mistake's path (``at`` is the filter's own)."""
    errors: list[tuple[str, str]] = []
    nodes = [0]

    def visit(node: Where, path: str, depth: int) -> None:
        nodes[0] += 1
        if depth > MAX_DEPTH:
            errors.append((path, f"nested deeper than {MAX_DEPTH} levels"))
            return
        kinds = [k for k in ("all", "any", "not", "field") if getattr(node, "not_" if k == "not" else k) is not None]
        if len(kinds) != 1:
            errors.append((path, "expected exactly one of all, any, not, or a condition (field, op, value)"))
            return
        kind = kinds[0]
        if kind != "field" and (node.op is not None or node.value is not None):
            errors.append((f"{path}.{'op' if node.op is not None else 'value'}", f"not allowed beside {kind}"))
        if kind in ("all", "any"):
            parts = node.all if kind == "all" else node.any
            assert parts is not None
            if not parts:
                errors.append((f"{path}.{kind}", "expected at least one filter"))
            for i, part in enumerate(parts):
                visit(part, f"{path}.{kind}[{i}]", depth + 1)
            return
        if kind == "not":
            assert node.not_ is not None
            visit(node.not_, f"{path}.not", depth + 1)
            return
        fname = node.field
        assert fname is not None
        ops = FIELDS.get(fname)
        if ops is None:
            errors.append((f"{path}.field", f"unknown field; one of {', '.join(FIELDS)}"))
            return
        if node.op not in ops:
            errors.append((f"{path}.op", f"expected one of {', '.join(sorted(ops))} for {fname}"))
            return
        why = _value_error(fname, node.op, node.value)
        if why is not None:
            errors.append((f"{path}.value", why))

    visit(where, at, 1)
    if nodes[0] > MAX_NODES:
        errors.insert(0, (at, f"more than {MAX_NODES} nodes"))
    if errors:
        raise Invalid(errors[:MAX_ERRORS])


def audience_errors(audience: Audience, at: str) -> list[tuple[str, str]]:
    """What is wrong with a broadcast's audience (``at``: its path), as (path, reason)."""
    if audience.topic is None and audience.segment is None and audience.where is None:
        return [(at, 'give topic, segment or where (or "all")')]
    if audience.where is None:
        if audience.segment is not None:  # the HTTP API puts the saved filter in where; a producer must too
            return [(f"{at}.where", "a segment's filter is needed beside its name: the HTTP API reads the saved "
                                    "one; over NATS, send it")]
        return []
    try:
        check(audience.where, f"{at}.where")
    except Invalid as e:
        return e.errors
    return []


def needs_engagement(where: Where) -> bool:
    """Whether a condition reads engagement (its users' last opens and clicks are looked up)."""
    if where.field is not None:
        return where.field in ENGAGEMENT
    return any(needs_engagement(w) for w in (where.all or where.any or ([where.not_] if where.not_ else [])))


Predicate = Callable[[UserState, "Engagement | None", float], bool]


def predicate(where: Where, policy: Policy) -> Predicate:
    """A checked filter as a predicate (state, engagement or None, now) → bool.
    ``policy``: the engine's preference defaults and rules (for ``preference``)."""
    if where.all is not None:
        parts = [predicate(w, policy) for w in where.all]
        return lambda s, e, now: all(p(s, e, now) for p in parts)
    if where.any is not None:
        parts = [predicate(w, policy) for w in where.any]
        return lambda s, e, now: any(p(s, e, now) for p in parts)
    if where.not_ is not None:
        inner = predicate(where.not_, policy)
        return lambda s, e, now: not inner(s, e, now)
    return _condition(str(where.field), str(where.op), where.value, policy)


def _text_test(op: str, v: Any, get: Callable[[UserState], str | None]) -> Predicate:
    if op == "eq":
        return lambda s, e, now: get(s) == v
    if op == "ne":
        return lambda s, e, now: get(s) != v
    if op == "in":
        values = frozenset(v)
        return lambda s, e, now: get(s) in values
    if op == "exists":
        return lambda s, e, now: (get(s) is not None) == v
    return lambda s, e, now: (get(s) or "").startswith(v)  # prefix


def _since(op: str, v: Any, get: Callable[[Engagement], float | None]) -> Predicate:
    def at(e: Engagement | None) -> float | None:
        return None if e is None else get(e)

    if op == "exists":
        return lambda s, e, now: (at(e) is not None) == v
    window = float(v) * DAY_S
    return lambda s, e, now: (t := at(e)) is not None and t >= now - window


def _condition(fname: str, op: str, v: Any, policy: Policy) -> Predicate:
    if fname == "locale":
        return _text_test(op, v, lambda s: s.locale)
    if fname == "timezone":
        return _text_test(op, v, lambda s: s.timezone)
    if fname == "template":
        return _text_test(op, v, lambda s: s.template)
    if fname == "address":
        return lambda s, e, now: reachable(s, v, now) and v not in s.suppressed
    if fname == "consent":
        channel, purpose = split_consent_key(v)
        return lambda s, e, now: consent_status(s, channel, purpose, now) == "granted"
    if fname == "preference":
        channel, _, category = v.partition(":")

        def sends(s: UserState, e: Engagement | None, now: float) -> bool:
            r = policy.resolve(s.prefs, s.templates, channel, category, now=now)
            return r.enabled and r.frequency != "never"
        return sends
    if fname == "last_opened":
        return _since(op, v, lambda e: e.opened)
    if fname == "last_clicked":
        return _since(op, v, lambda e: e.clicked)
    if fname == "last_engaged":
        return _since(op, v, lambda e: max((t for t in (e.opened, e.clicked) if t is not None), default=None))
    raise ValueError(f"unchecked field {fname!r}")  # check() names it first


__all__ = ["ENGAGEMENT", "audience_errors", "FIELDS", "MAX_DEPTH", "MAX_NODES", "Engagement", "Invalid", "Predicate", "Where",
           "check", "needs_engagement", "predicate"]
