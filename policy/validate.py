"""Preference documents as users send them, and their validation: every
violation is reported as (field path, reason), none is fixed up silently, and a
document with any violation changes nothing. Also the rules of a notification
or broadcast request that its schema cannot say (``message_errors``), shared by
the HTTP API and the Ingestor.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from policy import schedule, segments
from policy.audience import Audience
from policy.prefs import CONTEXT_KEYS, USER_CHANNELS, Preference, PrefKey, ordered
from policy.rules import NOT_MANDATORY_CHANNELS, Policy
from policy.types import Message
from policy.windows import window_errors

Basis = Literal["consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests"]
_TEXT = r"^[^\x00-\x1f\x7f]*\Z"


class Evidence(Struct, kw_only=True, forbid_unknown_fields=True):
    """How a consent was given: the method, the wording shown, when, and from
    where (an IP address; stored sealed under the person's key)."""

    method: Annotated[str, Meta(max_length=64, pattern=r"^[a-z][a-z0-9_]*\Z")] | None = None  # web_form, sms_reply…
    text: Annotated[str, Meta(max_length=2000, pattern=r"^[^\x00]*\Z")] | None = None
    at: Annotated[float, Meta(ge=0, le=4e9)] | None = None
    ip: Annotated[str, Meta(max_length=64, pattern=_TEXT)] | None = None


class ConsentRecord(Struct, kw_only=True, forbid_unknown_fields=True):
    """A consent change with what the law asks to keep about it."""

    status: Literal["granted", "withdrawn"]
    basis: Basis = "consent"
    source: Annotated[str, Meta(max_length=100, pattern=_TEXT)] | None = None
    text_version: Annotated[str, Meta(max_length=64, pattern=_TEXT)] | None = None
    expires_at: Annotated[float, Meta(gt=0, le=4e9)] | None = None
    evidence: Evidence | None = None


# "granted" / "withdrawn", or the whole record; keyed "channel" (every purpose) or "channel:purpose"
Consent = Literal["granted", "withdrawn"] | ConsentRecord
CONSENT_KEY = re.compile(r"^([a-z_]+)(?::([a-z][a-z0-9_]{0,31}))?\Z")


def consent_status_of(value: Consent) -> str:
    return value if isinstance(value, str) else value.status
TimeZone = Annotated[str, Meta(min_length=1, max_length=64)]
TemplateId = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+\Z")]


class PreferencesDoc(Struct, kw_only=True, forbid_unknown_fields=True):
    """PUT /v1/users/{id}/preferences: the user's whole preference set.
    ``template`` is the template the user follows (``""`` for none); left out,
    it stays as it is, as does ``timezone``."""

    preferences: list[Preference] = []
    consent: dict[str, Consent] = {}
    timezone: TimeZone | None = None
    # a template id, or "" for none (no control characters: it is looked up in PostgreSQL)
    template: Annotated[str, Meta(max_length=100, pattern=r"^([A-Za-z0-9_.-]+)?\Z")] | None = None


class PreferencesPatch(Struct, kw_only=True, forbid_unknown_fields=True):
    """PATCH: rows to add or replace (by key), rows to remove, consent to change."""

    set: list[Preference] = []
    remove: list[PrefKey] = []
    consent: dict[str, Consent] = {}
    timezone: TimeZone | None = None
    # a template id, or "" for none (no control characters: it is looked up in PostgreSQL)
    template: Annotated[str, Meta(max_length=100, pattern=r"^([A-Za-z0-9_.-]+)?\Z")] | None = None


Errors = list[tuple[str, str]]


def message_errors(message: Message, at: str = "$") -> Errors:
    """What is wrong with a request (``at``: its path) beyond its schema, that
    needs no configuration to see."""
    errors: Errors = []
    if message.fallback_unless is not None and message.fallback_after_s is None:
        errors.append((f"{at}.fallback_unless", "needs fallback_after_s (the time to wait)"))
    if message.send_at is not None or message.send_at_local is not None:
        errors.extend(schedule.errors(message.send_at, message.send_at_local, at))
        if message.deliver == "optimal":
            errors.append((f"{at}.deliver", "give send_at (or send_at_local) or deliver optimal, not both"))
    if message.deliver == "optimal" and message.priority == "critical":
        errors.append((f"{at}.deliver", "a critical notification goes now: not with deliver optimal"))
    if message.deliver == "optimal" and message.deliver_by is None:
        errors.append((f"{at}.deliver_by", "needed with deliver optimal: the latest time to send"))
    if message.deliver_by is not None and message.deliver != "optimal":
        errors.append((f"{at}.deliver_by", "only with deliver optimal"))
    audience = getattr(message, "audience", None)  # a broadcast's
    if isinstance(audience, Audience):
        errors.extend(segments.audience_errors(audience, f"{at}.audience"))
    datas = [(f"{at}.content.data", message.content.data if message.content else None),
             (f"{at}.template.data", message.template.data if message.template else None)]
    datas += [(f"{at}.channel_content.{ch}.data", c.data) for ch, c in message.channel_content.items()]
    for path, data in datas:
        errors.extend(data_errors(data, path))
    return errors


MAX_DATA_ERRORS = 10
MAX_DATA_DEPTH = 64  # nesting of free-form data; far past any real use, far below the decoders' recursion limits
INT_RANGE = (-(2**63), 2**64 - 1)  # what MessagePack (Ray calls) and our JSON encoders carry


def data_errors(data: object, at: str) -> Errors:
    """What free-form JSON ``data`` (``content.data``, a preference's ``custom``)
    may not hold, as (path, reason), at most ``MAX_DATA_ERRORS``: a string or key
    with a NUL (PostgreSQL cannot store it in jsonb), an integer beyond 64 bits
    (no encoder between our processes can carry it), nesting deeper than
    ``MAX_DATA_DEPTH``. Cheap for the usual case: two C-speed encodes (MessagePack
    refuses the integers, JSON shows a NUL and bounds the depth), a walk only when
    they show a problem."""
    if not data:
        return []
    try:
        msgspec.msgpack.encode(data)
        encoded = msgspec.json.encode(data)
    except (TypeError, ValueError, OverflowError, RecursionError):  # EncodeError is a ValueError
        pass
    else:
        if b"\\u0000" not in encoded and encoded.count(b"[") + encoded.count(b"{") <= MAX_DATA_DEPTH:
            return []
    found: Errors = []
    stack: list[tuple[object, str, int]] = [(data, at, 0)]
    while stack and len(found) < MAX_DATA_ERRORS:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                found.append((path, "contains a NUL character"))
        elif isinstance(value, int) and not isinstance(value, bool):
            if not INT_RANGE[0] <= value <= INT_RANGE[1]:
                found.append((path, "an integer beyond 64 bits"))
        elif isinstance(value, dict | list | tuple) and depth >= MAX_DATA_DEPTH:
            found.append((path, f"nested deeper than {MAX_DATA_DEPTH} levels"))
        elif isinstance(value, dict):
            for k, v in reversed(value.items()):
                key = str(k).replace("\x00", "\\u0000")
                if "\x00" in str(k):
                    found.append((f"{path}.{key}", "contains a NUL character"))
                stack.append((v, f"{path}.{key}", depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in reversed(list(enumerate(value))))
    return found[:MAX_DATA_ERRORS]


def timezone_error(name: str | None, path: str = "timezone") -> Errors:
    if name is None:
        return []
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return [(path, f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin)")]
    return []


def row_errors(rows: list[Preference], policy: Policy, path: str = "preferences") -> Errors:
    """What is wrong with each row on its own, and duplicate keys."""
    errors: Errors = []
    if len(rows) > policy.cfg.max_rows:
        errors.append((path, f"at most {policy.cfg.max_rows} rows per user"))
    seen: dict[tuple, int] = {}
    for i, p in enumerate(rows):
        at = f"{path}[{i}]"
        errors.extend(key_errors(p, policy, at))
        if p.quiet_hours is not None:
            errors.extend(window_errors(p.quiet_hours, "quiet", f"{at}.quiet_hours"))
        if p.time_windows is not None:
            errors.extend(window_errors(p.time_windows, "allowed", f"{at}.time_windows"))
        if not p.value():
            errors.append((at, "sets no value (enabled, frequency, quiet_hours, time_windows or custom)"))
        if p.custom is not None:
            errors.extend(data_errors(p.custom, f"{at}.custom"))
        first = seen.setdefault(p.key(), i)
        if first != i:
            errors.append((at, f"same channel, category, content_type and context as {path}[{first}]"))
    return errors


def key_errors(p: Preference | PrefKey, policy: Policy, at: str) -> Errors:
    errors: Errors = []
    if p.channel != "*" and p.channel not in USER_CHANNELS:
        errors.append((f"{at}.channel", f"unknown channel {p.channel!r} (one of *, {', '.join(USER_CHANNELS)})"))
    if p.category != "*" and policy.categories and p.category not in policy.categories:
        errors.append((f"{at}.category", f"unknown category {p.category!r}"))
    if p.content_type != "*" and policy.content_types and p.content_type not in policy.content_types:
        errors.append((f"{at}.content_type", f"unknown content type {p.content_type!r}"))
    for k in p.context:
        if k not in CONTEXT_KEYS:
            errors.append((f"{at}.context.{k}", f"unknown context key (one of {', '.join(CONTEXT_KEYS)})"))
    return errors


def consent_errors(consent: Mapping[str, Consent], path: str = "consent") -> Errors:
    errors: Errors = []
    for key, value in consent.items():
        m = CONSENT_KEY.match(key)
        if m is None or m.group(1) not in USER_CHANNELS:
            errors.append((f"{path}.{key}", "unknown channel (a channel, or channel:purpose)"))
        elif isinstance(value, ConsentRecord) and value.evidence is not None and value.evidence.ip is not None:
            try:
                ipaddress.ip_address(value.evidence.ip)
            except ValueError:
                errors.append((f"{path}.{key}.evidence.ip", "not an IP address"))
    return errors


URGENCIES = ("low", "normal", "high", "critical")
FOREVER = 4.1e9  # after every row's expires_at (capped at 4e9)


def rule_errors(rows: list[Preference], templates: tuple, policy: Policy, now: float,
                path: str = "preferences", consent: frozenset[str] = frozenset()) -> Errors:
    """Business rules over the resulting set. A mandatory category must stay
    deliverable on at least one channel the way ``decide`` would see it: enabled,
    not ``never``, at every urgency, now and after every row with an expiry has
    expired, on a channel that needs no consent the user has not given and that no
    channel rule keeps normal notifications off."""
    errors: Errors = []
    mine = ordered(rows)
    for rule in policy.mandatory():
        if rule.category == "*":
            continue
        cat = rule.category
        channels = [c for c in (rule.channels or USER_CHANNELS)
                    if c not in NOT_MANDATORY_CHANNELS
                    and not (policy.needs_consent(c, cat) and c not in consent)
                    and policy.channel_blocked(c, "normal", cat) is None]
        if not any(always_on(policy, mine, templates, c, cat, now) for c in channels):
            errors.append((path, f"rule {rule.name}: category {cat!r} must stay enabled on at least one of "
                                 f"{', '.join(channels) or 'the channels the user can receive'}"))
    return errors


def always_on(policy: Policy, rows, templates, channel: str, category: str, now: float) -> bool:
    """Whether ``category`` reaches the person on ``channel`` whatever the urgency, now and
    after every row with an expiry has expired: enabled and not ``never``."""
    for when in (now, FOREVER):
        for urgency in URGENCIES:
            r = policy.resolve(rows, templates, channel, category, context={"urgency": urgency}, now=when)
            if not r.enabled or r.frequency == "never":
                return False
    return True


def apply_patch(rows: list[Preference], patch: PreferencesPatch) -> list[Preference]:
    """The rows after a patch: removals first, then ``set`` replaces by key."""
    gone = {k.key() for k in patch.remove} | {p.key() for p in patch.set}
    return [p for p in rows if p.key() not in gone] + list(patch.set)


def patch_errors(patch: PreferencesPatch, policy: Policy) -> Errors:
    errors = row_errors(patch.set, policy, "set")
    for i, k in enumerate(patch.remove):
        errors.extend(key_errors(k, policy, f"remove[{i}]"))
    return errors + consent_errors(patch.consent) + timezone_error(patch.timezone)


def doc_errors(doc: PreferencesDoc, policy: Policy) -> Errors:
    return row_errors(doc.preferences, policy) + consent_errors(doc.consent) + timezone_error(doc.timezone)
