"""Metric label values, bounded: every value a label can take is known from the
code or the configuration, so no request, provider answer or user can make a
new time series (a label value that is a user id, a rule's free name or a
provider's error text would make one series per value, for ever).

A channel, provider or category outside the configured ones is ``other``; a
missing provider is ``none``; a reason code is reduced to its family: the code
itself for the fixed codes (``ok``, ``rate_limited``, ``circuit_open``, …), the
part before the first dot for the dotted ones (``pref.category_off`` ->
``pref``, ``consent.missing_sms`` -> ``consent``, ``retry.network_error`` ->
``retry``, a send-window rule's ``tcpa.window`` -> ``tcpa`` when a configured
rule says that reason), and ``other`` for anything else. Pure: the known
values are given (``actors.metrics.bounds`` builds them from the Config).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import get_args

from policy.types import Outcome, Status

OTHER = "other"
NONE = "none"
REJECTED_CHANNEL = "*"  # a request rejected before it had channels (policy.types.Outcome)

STATUSES: frozenset[str] = frozenset(get_args(Status))

# Reason codes without a dot (README "Reason codes", actors/delivery/deliver.py)
CODES: frozenset[str] = frozenset({
    "ok", "quiet_hours", "time_window", "scheduled", "provider_error", "network_error", "rate_limited", "circuit_open",
    "daily_limit", "address_gone", "invalid_message", "auth_error", "config_error", "system_error", "no_provider",
    "destination_error", "destination_refused", "destination_circuit_open",
})
# The first part of the dotted codes: ``pref.<level>_off``, ``consent.<state>_<channel>``,
# ``rule.<name>``, ``retry.<reason>``, ``digest.<frequency>``, ``address.missing_<channel>``,
# ``suppression.<reason>``, ``user.unknown``, ``channel.unavailable``, ``content.missing``,
# ``template.missing|error``, ``payload.invalid|malformed``, ``processing.failed``, ``ttl.expired``,
# ``fatigue.<window>``, ``timing.optimized``
FAMILIES: frozenset[str] = frozenset({
    "pref", "consent", "rule", "retry", "digest", "address", "suppression", "user", "channel", "content",
    "template", "payload", "processing", "ttl", "fatigue", "timing",
})

# What a provider call ended as (``ok``, else the error's ``kind``, providers/errors.py)
CALL_RESULTS: frozenset[str] = frozenset({
    "ok", "system", "provider", "network", "rate_limit", "authentication", "validation", "address_gone",
    "configuration", "destination_refused", "destination", "destination_circuit_open",
})


def family(reason: str, extra: frozenset[str] = frozenset()) -> str:
    """A reason code's bounded family (see the module's docstring); ``extra``:
    the families (or undotted codes) of reasons the configuration names (send-window rules)."""
    head, dot, _ = reason.partition(".")
    if not dot:
        return reason if reason in CODES or reason in extra else OTHER
    return head if head in FAMILIES or head in extra else OTHER


class Bounds:
    """The label values a deployment may produce, from its configuration."""

    __slots__ = ("categories", "channels", "extra_families", "providers")

    def __init__(self, channels: Iterable[str] = (), providers: Iterable[str] = (), categories: Iterable[str] = (),
                 rule_reasons: Iterable[str] = ()):
        self.channels = frozenset(channels) | {REJECTED_CHANNEL}
        self.providers = frozenset(providers)
        self.categories = frozenset(categories)
        self.extra_families = frozenset(r.partition(".")[0] for r in rule_reasons)

    def channel(self, value: str) -> str:
        return value if value in self.channels else OTHER

    def provider(self, value: str | None) -> str:
        if not value:
            return NONE
        return value if value in self.providers else OTHER

    def category(self, value: str) -> str:
        return value if value in self.categories else OTHER

    def reason(self, value: str) -> str:
        return family(value, self.extra_families)

    @staticmethod
    def status(value: str) -> str:
        return value if value in STATUSES else OTHER

    @staticmethod
    def call_result(ok: bool, kind: str | None) -> str:
        if ok:
            return "ok"
        return kind if kind in CALL_RESULTS else OTHER

    def outcome(self, o: Outcome) -> tuple[str, str, str, str]:
        """(channel, provider, status, reason) of a recorded outcome. A failed
        outcome names no provider: the last one it tried stands for it."""
        provider = o.provider or (o.attempts[-1].provider if o.attempts else None)
        return self.channel(o.channel), self.provider(provider), self.status(o.status), self.reason(o.reason)


__all__ = ["CALL_RESULTS", "CODES", "FAMILIES", "NONE", "OTHER", "STATUSES", "Bounds", "family"]
