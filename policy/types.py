"""The domain types every boundary speaks: requests, per-user state, decisions,
delivery tasks and outcomes.

All are msgspec Structs. Inbound types (what producers send) forbid unknown fields
so a typo is an error, not a silently ignored field; internal types are
``array_like`` where they cross an actor boundary in bulk (smaller, faster
MessagePack) and ``frozen`` where nobody should mutate them after creation.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta, Struct

from policy.audience import Audience
from policy.prefs import Preference

Channel = Literal["email", "sms", "push", "in_app", "web", "voice", "webhook"]
CHANNELS: tuple[str, ...] = ("email", "sms", "push", "in_app", "web", "voice", "webhook")

Priority = Literal["low", "normal", "high", "critical"]
# The priorities that go first: the priority lane (infra.streams), the urgent
# ChannelShards, a bulkhead's freed places, the push providers' high priority
URGENT: frozenset[str] = frozenset({"high", "critical"})

# Terminal statuses of a tracking row. ``sent`` means the provider accepted the
# message; ``delivered``/``bounced`` arrive later from provider callbacks.
Status = Literal["sent", "delivered", "bounced", "complained", "failed", "suppressed", "rejected", "deferred",
                 "digested", "cancelled"]

# Characters no one-line field may hold (a regex class): the C0 controls (NUL to
# US: tab, line feed, \x0b, \x0c, \x1c-\x1e among them), DEL, the C1 controls
# (NEL \x85 among them) and the Unicode line and paragraph separators. That is
# everything ``str.splitlines()`` splits on, and NUL, which PostgreSQL cannot store
# in text or jsonb: a field that holds one is refused at the door (HTTP 422 naming
# the field, a dead letter with the reason over NATS), not a failed batch later.
CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
ONE_LINE = rf"^[^{CONTROL_CHARS}]*\Z"
# Free text (a body): any character but NUL.
NO_NUL = r"^[^\x00]*\Z"
OneLine = Annotated[str, Meta(pattern=ONE_LINE)]
SUBJECT_MAX_LENGTH = 998  # an email header line (RFC 5322)

# No control characters: PostgreSQL refuses NUL in text, and a user id or address
# that cannot be stored must be refused at the door, not fail a whole batch later.
UserId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+\Z")]
# Dot-separated tokens: a category becomes the last tokens of a NATS subject, where
# an empty token ("a..b", "a.") cannot be routed.
Category = Annotated[str, Meta(max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9_-]+)*\Z")]
IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=200, pattern=ONE_LINE)]
# A notification's life: FCM keeps a message at most 28 days, so no longer is accepted
TTL_MAX_S = 28 * 86400
TtlSeconds = Annotated[int, Meta(ge=1, le=TTL_MAX_S)]
# apns-collapse-id is at most 64 bytes and travels in a header: ASCII only, so bytes are characters
CollapseKey = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:~-]+\Z")]

# Notification ids derived from an idempotency key (or from a JetStream sequence
# when a producer sent neither id nor key) are uuid5 in this namespace, so the
# same key always maps to the same id, in every process.
ID_NAMESPACE = uuid.UUID("6f1d2c1e-8a53-4d0c-9a55-3f0c3c1f7d11")
_NAMESPACE_BYTES = ID_NAMESPACE.bytes


class Content(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Ready content for one channel. Which fields a channel needs is checked by
    its provider (email wants a subject and text or html)."""

    subject: Annotated[str, Meta(max_length=SUBJECT_MAX_LENGTH, pattern=ONE_LINE)] | None = None
    text: Annotated[str, Meta(pattern=NO_NUL)] | None = None
    html: Annotated[str, Meta(pattern=NO_NUL)] | None = None
    data: dict[str, Any] = {}  # strings with NUL: policy.validate.message_errors


class TemplateRef(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Content from a stored template: its id, the data it renders with, and a
    version to pin (the newest when left out)."""

    id: Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+\Z")]
    data: dict[str, Any] = {}
    version: Annotated[int, Meta(ge=1, le=2**31 - 1)] | None = None  # the column is int4


class PushAction(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A button on a push: its id (sent back when tapped) and title."""

    id: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+\Z")]
    title: Annotated[str, Meta(min_length=1, max_length=64, pattern=ONE_LINE)]


class PushOptions(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """Rich push fields: an image (https URL), the app icon's badge count, a
    sound, a thread (grouping), actions (up to 3 buttons; APNs takes their
    category, the app defines the buttons). Each provider maps what its platform
    has (providers/push, providers/webpush)."""

    image: Annotated[str, Meta(max_length=2000, pattern=r"^https://[^\s\x00-\x1f\x7f]+\Z")] | None = None
    badge: Annotated[int, Meta(ge=0, le=99_999)] | None = None
    sound: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+\Z")] | None = None
    thread: Annotated[str, Meta(min_length=1, max_length=64, pattern=ONE_LINE)] | None = None
    category: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+\Z")] | None = None
    actions: Annotated[list[PushAction], Meta(max_length=3)] = []


class Message(Struct, kw_only=True, forbid_unknown_fields=True):
    """What a notification and a broadcast have in common. Content per channel:
    ``channel_content[channel]``, else ``content``, else ``template`` rendered for
    the channel in the user's locale."""

    category: Category
    channels: Annotated[list[Channel], Meta(min_length=1, max_length=7)]
    content: Content | None = None
    channel_content: dict[Channel, Content] = {}
    template: TemplateRef | None = None
    # channels to try in order when none of ``channels`` was sent or held; with
    # ``fallback_after_s``, also when one was sent but none reached "delivered" by then
    fallback: Annotated[list[Channel], Meta(max_length=6)] = []
    fallback_after_s: Annotated[float, Meta(gt=0, le=7 * 86400)] | None = None
    # what spares the fallback at ``fallback_after_s``: a channel "delivered" (the
    # default; an open counts, it implies delivery) or only "opened" (an opened or
    # clicked engagement event, stores/engagement.py); needs ``fallback_after_s``
    fallback_unless: Literal["delivered", "opened"] | None = None
    id: uuid.UUID | None = None
    idempotency_key: IdempotencyKey | None = None
    priority: Priority = "normal"
    content_type: Annotated[str, Meta(min_length=1, max_length=100, pattern=ONE_LINE)] = "*"
    # device / location / activity the request is sent in; contextual preferences match on it
    context: dict[Annotated[str, Meta(pattern=r"^(device|location|activity)\Z")], Annotated[str, Meta(max_length=100, pattern=ONE_LINE)]] = {}
    metadata: dict[OneLine, OneLine] = {}
    # Seconds since the epoch when the front door accepted it; set by the engine
    # when absent. End-to-end latency is measured from here.
    accepted_at: Annotated[float, Meta(ge=0, le=4e9)] | None = None
    # worthless this many seconds after ``accepted_at``: not sent after it (``ttl.expired``),
    # and push services told to drop it then; else an ``expiry`` rule's (policy.rules)
    ttl_s: TtlSeconds | None = None
    # when to send (policy/schedule.py): an instant, seconds since the epoch; or a wall-clock
    # time in each recipient's zone, "09:00" (the first at or after acceptance) or
    # "2027-03-28T09:00". Until then held like quiet hours (reason ``scheduled``)
    send_at: Annotated[float, Meta(ge=0, le=4e9)] | None = None
    send_at_local: Annotated[str, Meta(max_length=16)] | None = None
    # "optimal": each recipient gets it in their own best hour (policy/timing.py), at the
    # latest by ``deliver_by`` (seconds since the epoch); held until then, reason timing.optimized
    deliver: Literal["now", "optimal"] = "now"
    deliver_by: Annotated[float, Meta(ge=0, le=4e9)] | None = None
    # "best": one of ``channels`` per recipient, the one they are likeliest to engage with
    # (policy/choice.py); the others are suppressed, reason channel.not_chosen
    channel_strategy: Literal["all", "best"] = "all"
    # a newer push with the same key replaces an undelivered older one (apns-collapse-id,
    # FCM collapse_key, the web push Topic); else an ``expiry`` rule's
    collapse_key: CollapseKey | None = None
    # rich push fields, mapped per platform by the push and web push providers
    push: PushOptions | None = None

    def content_for(self, channel: str) -> Content | None:
        return self.channel_content.get(channel, self.content)  # type: ignore[call-overload]


class NotificationRequest(Message, kw_only=True, forbid_unknown_fields=True):
    """One user's notification, over NATS ``<prefix>.notify.<category>`` or HTTP."""

    user_id: UserId


class BroadcastRequest(Message, kw_only=True, forbid_unknown_fields=True):
    """One message for a whole audience, over ``<prefix>.broadcast.<category>`` or
    HTTP. Every recipient is decided by the UserShard that owns them, exactly as a
    single notification would be; recipient ids are ``uuid5(<broadcast id>:<user>)``."""

    # "all", or a topic's subscribers and/or a segment (policy.audience)
    audience: Literal["all"] | Audience = "all"


Service = Literal["apns", "fcm", "webpush"]
Platform = Literal["ios", "android", "web", "macos", "other"]
DeviceId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*\Z")]
CHANNEL_OF: dict[str, str] = {"apns": "push", "fcm": "push", "webpush": "web"}


class Device(Struct, kw_only=True, omit_defaults=True):
    """A registered device (policy/devices.py): its id (the app's own, stable
    per install), service and token (APNs hex token, FCM registration token, or
    the browser's PushSubscription JSON), the app it belongs to, its kind (the
    ``device`` context its preferences match: ``mobile``, ``tablet``,
    ``desktop``, …) and when it was last seen (registered or refreshed)."""

    device_id: str
    service: Service
    token: str
    platform: Platform = "other"
    app: str = ""
    kind: str = "mobile"
    last_seen: float = 0.0

    @property
    def channel(self) -> str:
        return CHANNEL_OF[self.service]


class Target(Struct, array_like=True):
    """One device a push goes to (``DeliveryTask.targets``)."""

    device_id: str
    service: str
    token: str


class UserState(Struct, kw_only=True, omit_defaults=True):
    """The per-user state ``decide()`` reads. Kept compact: most users have no
    preference rows, no template and no suppressed address, and store nothing
    for them.

    ``prefs`` are the user's own preference rows, most specific first
    (``policy.prefs.ordered``). ``templates`` is the chain of the template the
    user follows, child first, as (template id, ordered rows); the shard fills it
    in from its template cache (it is not stored per user). ``consent`` holds the
    consent keys granted (``"sms"``: every purpose on the channel,
    ``"sms:marketing"``: one purpose); ``consent_until`` the expiry of those that
    expire; ``consent_state`` the keys recorded with another status (pending,
    withdrawn, expired). ``suppressed`` maps a channel to why
    its address may not be used (``bounce``, ``complaint``, ``manual``).
    ``version`` counts committed preference changes (the ETag).
    """

    user_id: str
    addresses: dict[str, str] = {}
    prefs: tuple[Preference, ...] = ()
    templates: tuple[tuple[str, tuple[Preference, ...]], ...] = ()
    template: str | None = None
    consent: frozenset[str] = frozenset()
    suppressed: dict[str, str] = {}
    timezone: str = "UTC"
    locale: str = "en"
    version: int = 0
    consent_until: dict[str, float] = {}
    consent_state: dict[str, str] = {}
    devices: tuple[Device, ...] = ()  # several per channel (push, web): policy/devices.py


OptOut = Annotated[str, Meta(max_length=80, pattern=r"^(\*|email|sms|push|in_app|web|voice|webhook):(\*|[a-z0-9][a-z0-9_-]*(\.[a-z0-9_-]+)*)\Z")]
Address = Annotated[str, Meta(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f\x7f]+\Z")]


class UserProfile(Struct, kw_only=True, forbid_unknown_fields=True):
    """A user as a product registers it: where to reach them and what they turned off."""

    user_id: UserId
    addresses: dict[Channel, Address] = {}
    # Shorthand for preference rows with enabled=false; when given, it replaces
    # the user's preference rows (``/preferences`` is the full model).
    opt_outs: list[OptOut] | None = None
    timezone: Annotated[str, Meta(min_length=1, max_length=64, pattern=ONE_LINE)] = "UTC"
    locale: Annotated[str, Meta(min_length=2, max_length=35, pattern=ONE_LINE)] = "en"


class DigestKey(Struct, frozen=True, array_like=True):
    """The bucket a digest item collects in: one per (user, channel, category,
    frequency, period). Stored as ``text()`` (``digest_buckets.key``)."""

    user_id: str
    channel: str
    category: str
    frequency: str
    period_end: int  # seconds since the epoch; the bucket is due then

    def text(self) -> str:
        return f"{self.user_id}|{self.channel}|{self.category}|{self.frequency}|{self.period_end}"

    @classmethod
    def parse(cls, text: str) -> DigestKey:
        """The key ``text()`` wrote. From the right: only the user id may hold a ``|``."""
        user_id, channel, category, frequency, end = text.rsplit("|", 4)
        return cls(user_id, channel, category, frequency, int(end))


class Send(Struct, tag="send", frozen=True, array_like=True):
    """Deliver on ``channel`` now."""

    action: ClassVar[str] = "send"
    channel: str

    @property
    def reason(self) -> str:
        return "ok"


class Suppress(Struct, tag="suppress", frozen=True, array_like=True):
    """Do not deliver on ``channel``; ``reason`` says why (``pref.category_off``, …)."""

    action: ClassVar[str] = "suppress"
    channel: str
    reason: str


class Defer(Struct, tag="defer", frozen=True, array_like=True):
    """Hold until ``until`` (quiet hours, a time window, a ``send_window`` rule
    such as the TCPA's), then decide again."""

    action: ClassVar[str] = "defer"
    channel: str
    reason: str  # quiet_hours | time_window | a send_window rule's reason (tcpa.window)
    until: float


class Digest(Struct, tag="digest", frozen=True, array_like=True):
    """Collect into the digest bucket ``key``, sent when its period ends."""

    action: ClassVar[str] = "digest"
    channel: str
    key: DigestKey

    @property
    def reason(self) -> str:
        return f"digest.{self.key.frequency}"

    @property
    def until(self) -> float:
        return float(self.key.period_end)


# What to do with one (request, channel), and why.
Decision = Send | Suppress | Defer | Digest


class DeliveryTask(Struct, array_like=True):
    """One (notification, channel) handed from a UserShard to a ChannelShard."""

    notification_id: str
    user_id: str
    channel: str
    category: str
    address: str
    content: Content
    priority: str = "normal"
    accepted_at: float = 0.0
    metadata: dict[str, str] = {}
    locale: str = "en"
    stages: dict[str, float] | None = None  # a traced one's stamps (policy.trace)
    # email: the one-click unsubscribe URL for this person and category (policy.unsubscribe);
    # a provider puts it in List-Unsubscribe unless the category is transactional
    unsubscribe_url: str | None = None
    # when it stops being worth sending (epoch seconds; push providers pass what is left
    # of it to the push service) and its collapse key: policy.plan.task_for
    expires_at: float | None = None
    collapse_key: str | None = None
    traceparent: str | None = None  # W3C, when its OpenTelemetry trace is sampled (actors/spans.py)
    # the user's devices on this channel (policy/devices.py): the ChannelShard sends to each
    # (``address`` is then the first's token); none: the one ``address``
    targets: list[Target] | None = None
    push: PushOptions | None = None  # the request's rich push fields, for push and web


class Attempt(Struct, array_like=True):
    """One call to one provider."""

    provider: str
    ok: bool
    at: float
    duration_ms: float
    error: str | None = None
    error_kind: str | None = None


class Outcome(Struct, array_like=True):
    """The terminal result for one (notification, channel); becomes one tracking row.

    ``channel`` is ``"*"`` for a request rejected before it had channels.
    """

    notification_id: str
    user_id: str
    channel: str
    category: str
    status: Status
    reason: str
    accepted_at: float
    completed_at: float
    provider: str | None = None
    provider_message_id: str | None = None
    attempts: list[Attempt] = []
    priority: str = "normal"
    detail: str | None = None  # e.g. the validation message of a rejected payload
    parent_id: str | None = None  # the broadcast this notification belongs to
    stages: dict[str, float] | None = None  # a traced one's stamps (policy.trace); never stored
    traceparent: str | None = None  # W3C, when its OpenTelemetry trace is sampled (actors/spans.py); never stored
    gone: list[str] | None = None  # devices whose token the push service says is gone (policy/devices.py)


def derive_id(key: str) -> str:
    """The notification id for an idempotency key (or any stable string):
    ``str(uuid.uuid5(ID_NAMESPACE, key))``, made without the UUID object (a third
    of the time; a broadcast makes one per recipient)."""
    h = bytearray(hashlib.sha1(_NAMESPACE_BYTES + key.encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def recipient_id(broadcast_id: str, user_id: str) -> str:
    """The id of one recipient's notification within a broadcast."""
    return derive_id(f"{broadcast_id}:{user_id}")


def notification_id(request: Message, fallback_key: str) -> str:
    """Resolve a request's id: explicit id, else from its idempotency key, else
    from ``fallback_key`` (e.g. the JetStream stream sequence), so redelivery of
    the same message always yields the same id."""
    if request.id is not None:
        return str(request.id)
    if request.idempotency_key is not None:
        return derive_id(request.idempotency_key)
    return derive_id(fallback_key)


__all__ = [
    "Attempt",
    "BroadcastRequest",
    "Message",
    "CHANNELS",
    "CONTROL_CHARS",
    "NO_NUL",
    "ONE_LINE",
    "OneLine",
    "SUBJECT_MAX_LENGTH",
    "Channel",
    "Content",
    "Decision",
    "Defer",
    "Digest",
    "DigestKey",
    "DeliveryTask",
    "ID_NAMESPACE",
    "NotificationRequest",
    "Outcome",
    "Priority",
    "Send",
    "Status",
    "Suppress",
    "UserProfile",
    "UserState",
    "derive_id",
    "recipient_id",
    "notification_id",
]
