"""The HTTP API's answers that more than one side reads: the error shape every
route answers with, and a submission's and a notification's answers (the
engine encodes them, ``engine.client`` decodes them, the OpenAPI document
describes them). Answers only one route gives are declared beside it."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class FieldError(msgspec.Struct, frozen=True):
    """One violation: where (``$`` for the whole request, ``$.a[0].b`` inside the
    body, or the name of a path or query parameter or header) and why."""

    field: str
    reason: str


class ErrorAnswer(msgspec.Struct, frozen=True):
    """Every error answer (4xx and 5xx) that is not a page for people."""

    error: str
    errors: list[FieldError] = []


class Accepted(msgspec.Struct, frozen=True):
    """A submission JetStream has (202): its id, and whether that id was there before."""

    id: str
    duplicate: bool


class AcceptedBatch(msgspec.Struct, frozen=True):
    """A batch JetStream has (202), in the order sent."""

    notifications: list[Accepted]


class ChannelOutcome(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """What happened on one channel: the status and its reason code, the provider
    and its id, the attempts and the timeline (accepted, decided, each attempt,
    then what the provider and the recipient did)."""

    channel: str
    status: str
    reason: str
    provider: str | None = None
    provider_message_id: str | None = None
    attempts: int = 0
    timeline: list[dict[str, Any]] = []
    errors: Any = None
    accepted_at: float | None = None
    completed_at: float | None = None
    broadcast_id: str | None = None
    digest_id: str | None = None


class NotificationStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    id: str
    channels: list[ChannelOutcome]


class OutcomeCount(msgspec.Struct, frozen=True):
    channel: str
    status: str
    reason: str
    count: int


class BroadcastStatus(msgspec.Struct, frozen=True):
    """A broadcast's recipients recorded so far, counted by channel, status and reason."""

    id: str
    recorded: int
    outcomes: list[OutcomeCount]
    seconds_since_accepted: float


# a dry run's decision (policy/dryrun.py)
DecisionAction = Literal["send", "defer", "digest", "suppress", "reject"]


class DecisionCount(msgspec.Struct, frozen=True):
    """How many (recipient, channel) a dry run decided this way, and a few of their users."""

    channel: str
    action: DecisionAction
    reason: str
    count: int
    sample: list[str]


class DryRun(msgspec.Struct, frozen=True):
    """What sending would do (``?dry_run=true``), decided as a send decides, with nothing
    sent, held or recorded. ``recipients``: the users (a broadcast) or notifications
    decided; ``decisions``: counted by channel, action and reason. Fallback channels
    are not tried: they follow a delivery's answer."""

    dry_run: bool
    recipients: int
    decisions: list[DecisionCount]
    seconds: float


class ChannelCancel(msgspec.Struct, frozen=True):
    """One channel's answer to a cancellation (``policy.cancel``): ``cancelled``
    (it was held, and now will not be sent), ``already_cancelled`` (an earlier
    cancellation did it), ``final`` (it was not held: ``status`` says what became
    of it, e.g. ``sent``), or ``releasing`` (the Scheduler has taken it, it is
    due: it ends as that release decides; read the notification for its
    outcome). Channel ``fallback`` is a fallback check still waiting: cancelled,
    the request's fallback channels are never tried."""

    channel: str
    result: Literal["cancelled", "already_cancelled", "final", "releasing"]
    status: str | None = None  # its tracking status now (none for a fallback check)


class Cancellation(msgspec.Struct, frozen=True):
    """What ``DELETE /v1/notifications/{id}`` did, channel by channel."""

    id: str
    channels: list[ChannelCancel]
