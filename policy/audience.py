"""Who a broadcast reaches (``BroadcastRequest.audience``): everyone, a topic's
subscribers, a segment, or a topic's subscribers in a segment. The filter
language and its evaluation are ``policy.segments``."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct, field

# topic and segment ids: a product's own names ("company-42", "eu.beta-testers")
Name = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*\Z",
                           examples=["company-42"])]


class Where(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One node of a segment filter (``policy.segments``): a combination
    (``all``, ``any``, ``not``) or a condition (``field``, ``op``, ``value``);
    exactly one of the four kinds."""

    all: list[Where] | None = None
    any: list[Where] | None = None
    not_: Where | None = field(default=None, name="not")
    field: str | None = None
    op: str | None = None
    value: str | int | bool | list[str] | None = None


class Audience(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A topic's subscribers (``topic``), the users a segment takes (``segment``,
    a saved one, or ``where``, a filter given here), or both: the subscribers the
    segment takes. At least one. A saved segment is read when the broadcast is
    submitted (its filter travels with it)."""

    topic: Name | None = None
    segment: Name | None = None
    where: Where | None = None


__all__ = ["Audience", "Name", "Where"]
