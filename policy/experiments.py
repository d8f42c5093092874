"""A/B experiments: variants of a category's content, template, timing or channels.

An experiment names a category, a kind, and two to ten variants with weights; the
first variant is the control (it may change nothing: the request as submitted).
While it runs, each notification of the category (a single one or a broadcast's
recipient; never a critical one) is routed by ``route``: the person's variant is
chosen by a stable hash of (experiment, user), so a person always gets the same
variant, and the split follows the weights. The variant's fields replace the
request's before it is decided, and the shard records who got which variant
(``Exposure``). Once stopped, everyone gets the winner and nothing more is
recorded.

``analyse`` compares each variant with the control on the experiment's metric,
per person (a person counts once, whether one or several of their notifications
were delivered, opened, clicked or converted): Wilson intervals for each rate,
a two-proportion z-test against the control with a Bonferroni correction for the
number of comparisons, and no winner named before every variant has
``min_sample`` people.

Pure: no I/O, no clock (``now`` is an argument).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from statistics import NormalDist
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from policy.email import content_problem
from policy.types import ONE_LINE, Category, Channel, Content, Message, TemplateRef
from policy.validate import data_errors, message_errors

Kind = Literal["content", "template", "timing", "channel"]
Metric = Literal["delivered", "opened", "clicked", "converted"]
Name = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+\Z")]
METRICS: tuple[str, ...] = ("delivered", "opened", "clicked", "converted")
# the fields each kind's variants may set
FIELDS: dict[str, tuple[str, ...]] = {
    "content": ("content", "channel_content"),
    "template": ("template",),
    "timing": ("deliver", "deliver_within_s"),
    "channel": ("channels",),
}


class VariantTemplate(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A template variant: the template (and version) used instead of the request's;
    the request's template data is kept."""

    id: Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+\Z")]
    version: Annotated[int, Meta(ge=1, le=2**31 - 1)] | None = None


class Variant(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """One arm: its name, its share of the traffic (``weight`` over the sum of the
    weights) and what it changes, by the experiment's kind."""

    name: Name
    weight: Annotated[int, Meta(ge=1, le=10_000)] = 1
    content: Content | None = None
    channel_content: dict[Channel, Content] = {}
    template: VariantTemplate | None = None
    deliver: Literal["now", "optimal"] | None = None
    deliver_within_s: Annotated[float, Meta(ge=3600, le=7 * 86_400)] | None = None  # optimal: the latest, from accepted
    channels: Annotated[list[Channel], Meta(min_length=1, max_length=7)] | None = None

    def changes(self) -> tuple[str, ...]:
        """The fields this variant sets."""
        return tuple(f for fields in FIELDS.values() for f in fields if getattr(self, f) not in (None, {}))


class ExperimentBody(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/experiments``."""

    id: Name
    category: Category
    kind: Kind
    variants: Annotated[list[Variant], Meta(min_length=2, max_length=10)]
    metric: Metric = "opened"
    min_sample: Annotated[int, Meta(ge=10, le=100_000_000)] = 100  # people per variant before a winner is named
    confidence: Annotated[float, Meta(ge=0.8, le=0.999)] = 0.95
    description: Annotated[str, Meta(max_length=500, pattern=ONE_LINE)] = ""


def errors(body: ExperimentBody) -> list[tuple[str, str]]:
    """What is wrong with an experiment beyond its schema, as (field, reason)."""
    out: list[tuple[str, str]] = []
    names = [v.name for v in body.variants]
    if len(set(names)) != len(names):
        out.append(("$.variants", "variant names must differ"))
    allowed = FIELDS[body.kind]
    for i, v in enumerate(body.variants):
        at = f"$.variants[{i}]"
        for f in v.changes():
            if f not in allowed:
                out.append((f"{at}.{f}", f"a {body.kind} experiment's variants set {' or '.join(allowed)} only"))
        if i > 0 and not any(f in allowed for f in v.changes()):
            out.append((at, f"sets none of {', '.join(allowed)}: only the control (the first) may change nothing"))
        if v.channel_content and v.content is None:
            out.append((f"{at}.content", "needed with channel_content: the content of the other channels"))
        datas = [(f"{at}.content.data", v.content.data if v.content else None)]
        datas += [(f"{at}.channel_content.{ch}.data", c.data) for ch, c in v.channel_content.items()]
        for path, data in datas:
            out.extend(data_errors(data, path))
        if v.deliver == "optimal" and v.deliver_within_s is None:
            out.append((f"{at}.deliver_within_s", "needed with deliver optimal: how long after acceptance at most"))
        if v.deliver_within_s is not None and v.deliver != "optimal":
            out.append((f"{at}.deliver_within_s", "only with deliver optimal"))
        if v.channels is not None and len(set(v.channels)) != len(v.channels):
            out.append((f"{at}.channels", "a channel named twice"))
    return out


class Live(Struct, frozen=True, array_like=True):
    """What a UserShard routes a category's notifications with."""

    experiment_id: str
    category: str
    variants: tuple[Variant, ...]
    status: str  # running | stopped
    winner: str | None = None

    def variant(self, name: str | None) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


class Exposure(Struct, frozen=True, array_like=True):
    """A notification an experiment routed: who got which variant; ``counted`` in the
    results (a running experiment's, for a known user) or not (a stopped one's winner)."""

    experiment_id: str
    notification_id: str
    user_id: str
    variant: str
    counted: bool = True


def assign(experiment_id: str, variants: Sequence[Variant], user_id: str) -> Variant:
    """The person's variant: the same for every call, spread by the weights. The hash
    is keyed by the experiment too, so one person's variants in two experiments are
    independent."""
    digest = blake2b(f"{experiment_id}\x00{user_id}".encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") % sum(v.weight for v in variants)
    for v in variants:
        if point < v.weight:
            return v
        point -= v.weight
    raise AssertionError("weights are positive")


def apply(req: Message, v: Variant, now: float) -> Message | None:
    """``req`` with the variant's fields in place of its own, or None when the variant
    does not fit it (the request goes as submitted, and is not in the experiment): a
    template variant for a request without a template (it has no data for one), a
    timing variant for a request with a time of its own (``send_at``), or a result
    that could not be sent where it goes (a channel without content, email content
    without a subject)."""
    changes: dict = {}
    if v.content is not None:
        changes.update(content=v.content, channel_content=dict(v.channel_content), template=None)
    if v.template is not None:
        if req.template is None:
            return None
        # the template's parts are what goes: a request's own content would win over them
        changes.update(template=TemplateRef(id=v.template.id, version=v.template.version, data=req.template.data),
                       content=None, channel_content={})
    if v.deliver is not None:
        if req.send_at is not None or req.send_at_local is not None:
            return None
        if v.deliver == "optimal":
            assert v.deliver_within_s is not None
            changes.update(deliver="optimal",
                           deliver_by=(req.accepted_at if req.accepted_at is not None else now) + v.deliver_within_s)
        else:
            changes.update(deliver="now", deliver_by=None)
    if v.channels is not None:
        changes.update(channels=list(v.channels), fallback=[c for c in req.fallback if c not in v.channels])
    if not changes:
        return req
    routed = msgspec.structs.replace(req, **changes)
    if routed.template is None:
        for ch in (*routed.channels, *routed.fallback):
            content = routed.content_for(ch)
            if content is None or (ch == "email" and content_problem(content) is not None):
                return None
    if message_errors(routed):
        return None
    return routed


def fits(req: Message, parts: Mapping[str, object] | None) -> bool:
    """Whether a request with a template has a part of it (``parts``: the template's,
    by channel) for each channel it may go on."""
    return req.template is None or (parts is not None and all(ch in parts for ch in (*req.channels, *req.fallback)))


def route(category: str, priority: str, user_id: str, live: Mapping[str, Live]) -> tuple[Live, Variant] | None:
    """The experiment and variant a new notification gets, if any: none for a critical
    one; the winner's once the experiment is stopped."""
    e = live.get(category)
    if e is None or priority == "critical":
        return None
    if e.status == "stopped":
        w = e.variant(e.winner)
        return None if w is None else (e, w)
    return e, assign(e.experiment_id, e.variants, user_id)


# -- results ---------------------------------------------------------------------


class Arm(Struct, kw_only=True):
    """A variant's people and how many of them had each outcome."""

    name: str
    users: int = 0
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    converted: int = 0


class Comparison(Struct, kw_only=True):
    """A variant against the control on the metric: the difference of the rates, its
    interval (at the confidence asked, corrected for the number of comparisons as the
    test is), and the two-sided p-value of the two-proportion z-test."""

    difference: float
    interval: tuple[float, float]
    p_value: float
    significant: bool  # p_value below (1 − confidence) / comparisons


class ArmResult(Struct, kw_only=True):
    name: str
    control: bool
    users: int
    counts: dict[str, int]
    rates: dict[str, float | None]
    interval: tuple[float, float] | None  # the metric's rate, Wilson, at the confidence asked
    vs_control: Comparison | None


class Analysis(Struct, kw_only=True):
    metric: str
    confidence: float
    min_sample: int
    variants: list[ArmResult]
    winner: str | None
    why: str


def wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of the proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportions(k1: int, n1: int, k0: int, n0: int, z: float) -> tuple[float, tuple[float, float], float]:
    """Arm 1 against arm 0: (p1 − p0, its normal interval at ``z``, the two-sided
    p-value of the pooled z-test). No people on a side: difference 0, p-value 1."""
    if n1 == 0 or n0 == 0:
        return 0.0, (-1.0, 1.0), 1.0
    p1, p0 = k1 / n1, k0 / n0
    diff = p1 - p0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    pooled = (k1 + k0) / (n1 + n0)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    p_value = 1.0 if se0 == 0 else math.erfc(abs(diff) / se0 / math.sqrt(2))
    return diff, (max(-1.0, diff - z * se), min(1.0, diff + z * se)), p_value


def analyse(arms: Sequence[Arm], metric: str, confidence: float, min_sample: int) -> Analysis:
    """Rates, intervals and tests per variant (the first is the control), and the
    winner if there is one: the best of the variants significantly better than the
    control, or the control if every other is significantly worse; none while a
    variant has fewer than ``min_sample`` people."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    alpha = (1 - confidence) / max(1, len(arms) - 1)
    z_each = NormalDist().inv_cdf(1 - alpha / 2)  # a difference's interval agrees with its test
    control = arms[0]
    out: list[ArmResult] = []
    for i, a in enumerate(arms):
        counts = {m: getattr(a, m) for m in METRICS}
        rates = {m: (c / a.users if a.users else None) for m, c in counts.items()}
        vs = None
        if i > 0:
            diff, interval, p = two_proportions(getattr(a, metric), a.users, getattr(control, metric), control.users,
                                                z_each)
            vs = Comparison(difference=diff, interval=interval, p_value=p, significant=p < alpha)
        out.append(ArmResult(name=a.name, control=i == 0, users=a.users, counts=counts, rates=rates,
                             interval=wilson(getattr(a, metric), a.users, z) if a.users else None, vs_control=vs))
    short = [a for a in arms if a.users < min_sample]
    if short:
        need = ", ".join(f"{a.name} ({min_sample - a.users} more)" for a in short)
        return Analysis(metric=metric, confidence=confidence, min_sample=min_sample, variants=out, winner=None,
                        why=f"too few people yet: {need}")
    better = [r for r in out[1:] if r.vs_control is not None and r.vs_control.significant
              and r.vs_control.difference > 0]
    if better:
        best = max(better, key=lambda r: r.rates[metric] or 0.0)
        why = f"{best.name} beats the control on {metric} (p = {best.vs_control.p_value:.3g})"  # type: ignore[union-attr]
        return Analysis(metric=metric, confidence=confidence, min_sample=min_sample, variants=out,
                        winner=best.name, why=why)
    if all(r.vs_control is not None and r.vs_control.significant and r.vs_control.difference < 0 for r in out[1:]):
        return Analysis(metric=metric, confidence=confidence, min_sample=min_sample, variants=out,
                        winner=out[0].name, why=f"the control beats every variant on {metric}")
    return Analysis(metric=metric, confidence=confidence, min_sample=min_sample, variants=out, winner=None,
                    why=f"no variant differs from the control on {metric} at {confidence:.0%} confidence")


__all__ = ["FIELDS", "METRICS", "Analysis", "Arm", "ArmResult", "Comparison", "ExperimentBody", "Exposure", "Kind",
           "Live", "Metric", "Name", "Variant", "VariantTemplate", "analyse", "apply", "assign", "errors", "route",
           "two_proportions", "wilson", "fits"]
