"""Configuration as msgspec Structs: every section, its defaults and bounds,
how layers merge, what ``TIDINGS_<SECTION>_<KEY>`` variables mean, and the
checks across sections. An unknown key or a bad value is a ``ConfigError``
naming it. Reading the files and the process environment is the engine's
(``engine.settings``); actors get the Config as MessagePack (``encode``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from policy.rules import PolicyConfig
from policy.types import Channel

# Environment variables that start with TIDINGS_ but are not settings.
# TIDINGS_CREDENTIALS_KEY: the keys of stored provider credentials (engine/credentials.py).
NOT_SETTINGS = ("TIDINGS_ENV", "TIDINGS_CONFIG", "TIDINGS_CONFIG_DIR", "TIDINGS_TEST_", "TIDINGS_CREDENTIALS_KEY",
                "TIDINGS_AUDIT_SIGNING_KEY",
                "TIDINGS_API_KEY", "TIDINGS_LOCUST_")

Positive = Annotated[int, Meta(ge=1)]
NonNegative = Annotated[float, Meta(ge=0)]
Days = Annotated[int, Meta(ge=0)]  # retention: 0 keeps rows forever


class ConfigError(ValueError):
    """A setting is unknown or has a bad value; the message names it."""


class _Section(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    pass


class EngineConfig(_Section):
    home: str = ".tidings"  # embedded services' data, pid files and logs
    user_shards: Positive = 2
    ingestors: Positive = 1
    ingest_batch: Positive = 500  # messages per JetStream fetch
    fetch_timeout_s: NonNegative = 0.05  # how long a fetch lingers for a fuller batch
    inflight_batches: Positive = 4  # batches between fetch and ack at once, per ingestor
    # Bulk lane: when the last fetch was small (no backlog) and a batch is still in flight,
    # the next fetch waits for one to finish, at most this long: what comes meanwhile goes
    # as one batch instead of one batch per message (docs/design.md, "Batches that
    # follow the load"). 0: fetch whenever a slot is free.
    coalesce_s: NonNegative = 0.02
    # While the priority lane has work, each bulk Ingestor keeps at most
    # priority_yield_inflight batches of at most priority_yield_batch messages in flight,
    # until priority_yield_s after the lane last fetched: on a machine a bulk backlog
    # saturates, a critical notification otherwise waits behind it for the CPU in every
    # process it passes (docs/design.md, "The bulk lane yields to the priority lane").
    # 0: the bulk lane never yields.
    priority_yield_s: NonNegative = 1.0
    priority_yield_inflight: Positive = 1
    priority_yield_batch: Positive = 50
    recent_ids: Positive = 200_000  # idempotency ids a UserShard remembers in memory
    # users a UserShard holds in memory (~270 bytes each: 2M is ~540 MiB); the least
    # recently used is dropped and read again from PostgreSQL when next needed
    max_cached_users: Positive = 2_000_000
    # A UserShard reads the users it owns (up to max_cached_users) in the background
    # once it starts, so the first request for each is not a PostgreSQL read; until
    # then, and for any user past the bound, users are read when first needed
    preload_users: bool = True
    # A delivery that failed for a reason that passes (every provider down or its
    # breaker open, rate limited, a network error) is held and tried again, with
    # growing waits (5 s up to 5 min), until this long after the notification was
    # accepted; then it fails. 0: fail at once. Requests with fallback channels
    # use those instead.
    retry_failed_for_s: NonNegative = 3600.0
    # The share of notifications whose time per pipeline stage is measured (by id,
    # policy/trace.py): tidings_stage_seconds on /metrics, and tidings bench e2e's breakdown
    trace_sample: Annotated[float, Meta(ge=0, le=1)] = 0.01
    # Each actor's garbage collector (actors/stalls.py): young collections every this
    # many new objects, and what an actor holds once set up frozen out of later
    # collections, so a batch's objects die young instead of filling full collections
    # that stop the actor for up to 420 ms. 0: Python's defaults (700, nothing frozen)
    gc_young: Annotated[int, Meta(ge=0)] = 50_000
    # The calls every notification makes between actors (Ingestor -> UserShard,
    # UserShard -> ChannelShard and -> Recorder) over a TCP connection between the
    # two actors instead of a Ray call (actors/link.py): 0.15–0.3 ms a round trip
    # instead of 1.7–3 ms. false: every call through Ray
    actor_links: bool = True


class NatsConfig(_Section):
    url: str = ""  # empty: start the embedded nats-server
    embedded_port: Annotated[int, Meta(ge=0, le=65535)] = 4250  # 0: any free port
    prefix: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")] = "tidings"
    stream: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+\Z")] = "TIDINGS"
    consumer: str = "tidings-engine"
    duplicate_window_s: NonNegative = 120.0
    ack_wait_s: NonNegative = 60.0
    max_ack_pending: Positive = 20_000
    max_age_s: NonNegative = 7 * 24 * 3600.0
    dead_letter_after: Positive = 20  # a message that failed this many deliveries goes to the DLQ
    # The work stream's size: once full, JetStream refuses new publishes (discard
    # "new"): the HTTP API answers 503 with Retry-After, NATS producers get the error.
    max_msgs: Positive = 5_000_000
    # 0: none. JetStream reserves a stream's max_bytes of the server's storage when
    # the stream is made (a server with less free refuses it): set it where the
    # NATS server's storage is sized for it; messages are bounded by max_msgs anyway
    max_bytes: Annotated[int, Meta(ge=0)] = 0
    dlq_max_msgs: Positive = 1_000_000  # the dead-letter stream; full: a message stays in the work stream
    dlq_max_bytes: Annotated[int, Meta(ge=0)] = 0
    # copies of each stream on a NATS cluster (3 in production: one server down loses nothing and
    # stops nothing); a single server takes 1 only. Changed on the streams at the next start
    replicas: Annotated[int, Meta(ge=1, le=5)] = 1


class DatabaseConfig(_Section):
    url: str = ""  # empty: start the embedded PostgreSQL (pgserver)
    schema: Annotated[str, Meta(pattern=r"^[a-z_][a-z0-9_]*\Z")] = "public"
    pool_min: Positive = 1
    pool_max: Positive = 8
    # Every connection's bounds (infra/db.py); 0: none. A statement or lock wait
    # past them fails with an error instead of holding a connection for ever.
    statement_timeout_s: NonNegative = 30.0
    lock_timeout_s: NonNegative = 5.0
    idle_in_transaction_timeout_s: NonNegative = 60.0  # a transaction left idle this long is ended by PostgreSQL
    # Statements that are long by nature: migrations (an index build on a big
    # table), a bulk import's set-based writes, the export's cursor
    long_statement_timeout_s: NonNegative = 3600.0


class RedisConfig(_Section):
    """The Redis that holds the HTTP API's rate limits and the providers' rates
    and daily counts, shared by every HTTP process and ChannelShard."""

    url: str = ""  # empty: start the embedded redis-server (Debian's, see install.sh) under engine.home
    embedded_port: Annotated[int, Meta(ge=0, le=65535)] = 0  # 0: any free port


class ProviderLimitsConfig(_Section):
    """How providers' ``rate_per_s``, ``burst`` and ``daily_limit`` hold for the
    whole deployment (actors/delivery/shared.py): counted in Redis by every
    ChannelShard, so the configured numbers are the provider's totals."""

    # false: no Redis for them; each ChannelShard applies its share (the numbers
    # divided by the channel's shards): still the total, but a quiet shard's share is unused
    shared: bool = True
    timeout_s: Annotated[float, Meta(gt=0)] = 0.2  # a Redis step slower than this counts as down
    retry_s: Annotated[float, Meta(gt=0)] = 5.0  # after Redis failed: the local share this long, then ask again


# bounded so the limiter's whole-µs arithmetic stays exact in Lua's doubles (engine/ratelimit.py)
Rate = Annotated[float, Meta(ge=0.001, le=1_000_000)]
Burst = Annotated[float, Meta(ge=1, le=1_000_000)]


class RateLimitConfig(_Section):
    """The HTTP API's rate limits (engine/ratelimit.py): GCRA in Redis, per API key
    and per end-user token."""

    enabled: bool = True
    key_per_s: Rate = 200.0  # per API key: sustained requests per second
    key_burst: Burst = 400.0  # per API key: requests allowed at once
    user_per_s: Rate = 5.0  # per end-user token
    user_burst: Burst = 20.0
    # when Redis cannot be reached: "local" = a per-process in-memory limiter with
    # the same rates, "open" = allow, "closed" = answer 503
    redis_down: Literal["local", "open", "closed"] = "local"
    timeout_s: Annotated[float, Meta(gt=0)] = 0.05  # a Redis call slower than this counts as down


class RayConfig(_Section):
    address: str = ""  # empty: local Ray; "auto" or "ray://…" joins a cluster
    namespace: str = "tidings"
    dashboard: bool = True
    dashboard_port: int = 8265
    num_cpus: int | None = None
    actor_cpus: NonNegative = 0.0  # CPUs each actor reserves; >0 spreads them on a cluster
    # "default": Ray's own placement (fills a node before the next); "spread": the
    # actors dealt over the nodes with room (a worker node lost takes fewer with it)
    placement: Literal["default", "spread"] = "default"
    # where a local Ray's metrics agent serves the actors' series (ray_tidings_*) for
    # Prometheus; 0: a port Ray picks (printed at start). A cluster keeps its own
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 0
    # how many steps nicer than the other actors run those a critical notification does not
    # pass before its provider call (the bulk Ingestors, the bulk ChannelShards of channels
    # with urgent shards, the Recorder, the EventSender): on a machine with no CPU to spare,
    # the priority lane's Ingestor and ChannelShards and the UserShards get the cores first
    # (0: all equal; bench/RESULTS.md). Ray starts workers at 15 and niceness stops at 19, so
    # more than 4 changes nothing unless RAY_worker_niceness is lower
    bulk_niceness: Annotated[int, Meta(ge=0, le=19)] = 4


class HttpConfig(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    # Connections the kernel may hold before the API accepts them (listen(2)'s backlog;
    # the kernel caps it at net.core.somaxconn). aiohttp's 128 overflowed under bursts of
    # new connections: each one dropped waited a second for its SYN to be sent again.
    backlog: Annotated[int, Meta(ge=1, le=65535)] = 2048
    max_body_bytes: Positive = 1_048_576
    max_batch: Positive = 1000
    # Authentication (engine/auth.py, docs/security.md). Off is refused unless
    # the API listens on a loopback address only.
    auth: bool = True
    auth_cache_s: NonNegative = 2.0  # a key's row is re-read after this long: how late a revocation may bite
    token_ttl_max_s: Annotated[float, Meta(gt=0, le=86400)] = 3600.0  # longest end-user token a key may mint
    # /readyz and /metrics: "loopback" answers only loopback clients; "scope" needs a key with ops:read
    ops_access: Literal["loopback", "scope"] = "loopback"
    # Origins a browser may open the inbox WebSocket from with an end-user token; empty: none
    allowed_origins: list[str] = []
    # Inbox WebSockets open at once in this process: per user (over: 429) and in all (over: 503)
    ws_per_user: Positive = 5
    ws_total: Positive = 10_000
    # A reader of /v1/preferences/export that takes nothing for this long is cut off
    # (its transaction and connection released)
    export_stall_s: Annotated[float, Meta(gt=0)] = 30.0


class RecorderConfig(_Section):
    flush_rows: Positive = 2000  # flush when this many rows wait
    linger_ms: NonNegative = 10.0  # or, while another flush runs, when the oldest row waited this long


class SchedulerConfig(_Section):
    interval_s: NonNegative = 1.0  # how often due deferred rows and digest buckets are claimed
    batch: Positive = 1000  # rows and buckets claimed per round
    lease_s: NonNegative = 120.0  # a claim not finished by then is claimed again


class RetentionConfig(_Section):
    """How long rows are kept (stores/retention.py); each ``*_days`` 0 keeps them forever."""

    interval_s: NonNegative = 3600.0  # how often the Scheduler runs it; 0: never (run `tidings retention`)
    batch: Positive = 5000  # rows per DELETE statement, so none holds its locks for long
    tracking_days: Days = 30  # tracking rows and engagement events, from creation: the idempotency window
    scheduled_done_days: Days = 7  # done scheduled rows (from their due time) and sent digest buckets
    change_feed_days: Days = 30  # published preference changes; unpublished ones are never deleted
    inbox_read_days: Days = 90  # in-app messages, from when they were read
    inbox_unread_days: Days = 0  # unread in-app messages, from when they arrived; 0: kept until read
    jobs_days: Days = 30  # finished bulk jobs
    event_dead_letter_days: Days = 30  # status events no subscriber took, from when they were dead-lettered


class AuditConfig(_Section):
    """The audit log's signed checkpoints (engine/audit.py)."""

    # how often the engine signs every chain's last row (when rows were added since);
    # rows after the newest checkpoint are covered by their chains alone. 0: never
    # (run `tidings audit checkpoint`, e.g. from cron)
    checkpoint_every_s: NonNegative = 3600.0


class ComplianceConfig(_Section):
    """CAN-SPAM: marketing email carries the sender's postal address and a way to
    opt out (policy/email.py ``with_footer``)."""

    # the sender's valid physical postal address, added to every email of the
    # marketing categories with its unsubscribe link; empty: no footer (CAN-SPAM
    # requires one for commercial email sent to the US)
    postal_address: Annotated[str, Meta(max_length=500, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*\Z")] = ""
    marketing_categories: list[str] = msgspec.field(default_factory=lambda: ["marketing"])
    # Double opt-in for SMS (a consent_required rule with double_opt_in): the text
    # that asks the person to confirm ({purpose}: what the grant is for), and the
    # answers to their replies through POST /v1/tracking/twilio/inbound
    sms_confirm_text: Annotated[str, Meta(min_length=1, max_length=320, pattern=r"^[^\x00]*\Z")] = (
        "Reply YES to get {purpose} texts from us. Msg&data rates may apply. Reply STOP to opt out, HELP for help.")
    sms_confirmed_text: Annotated[str, Meta(max_length=320, pattern=r"^[^\x00]*\Z")] = (
        "Thanks, you are subscribed. Reply STOP to opt out.")
    sms_stopped_text: Annotated[str, Meta(max_length=320, pattern=r"^[^\x00]*\Z")] = (
        "You are unsubscribed and will get no more texts from us.")
    sms_help_text: Annotated[str, Meta(max_length=320, pattern=r"^[^\x00]*\Z")] = (
        "Reply STOP to opt out of all texts. Manage your notifications in your account settings.")


class PrivacyConfig(_Section):
    """Personal data sealed at rest (infra/pii.py, docs/privacy.md)."""

    # The master keys that wrap every user's data key: "id:base64,…" (32 random
    # bytes each; `tidings keys gen-master`). The first wraps new keys, every one
    # unwraps: to rotate, put a new one first, run `tidings keys rotate-master`,
    # then drop the old one. Give them in TIDINGS_PRIVACY_MASTER_KEYS, never in a
    # file under version control. Empty: the engine uses (and the first time
    # makes) master.keys in engine.home, fine for a demo, not for production.
    master_keys: str = ""


class BouncesConfig(_Section):
    """The listener for delivery reports and complaints about SMTP mail (engine/bounces.py)."""

    listen: str = ""  # "host:port" for SMTP (":25": every interface); empty: off. The bounce_domain's MX points here
    # larger reports: 552. Reports are parsed on the HTTP API's process, so this bounds the work one costs
    max_bytes: Annotated[int, Meta(ge=1024, le=10 * 1048576)] = 262_144
    timeout_s: Annotated[float, Meta(gt=0)] = 60.0  # an idle SMTP client is cut off after this
    max_connections: Positive = 50  # SMTP sessions at once (421 beyond)
    session_s: Annotated[float, Meta(gt=0)] = 300.0  # a session is closed after this, busy or not


class EngagementConfig(_Section):
    """Our own open pixel and click redirect in HTML content (policy/links.py,
    engine/http/links.py), and the one-click unsubscribe links in email
    (policy/unsubscribe.py, engine/http/unsubscribe.py). Off while ``base_url`` is empty."""

    base_url: str = ""  # public URL of the HTTP API, e.g. "https://notify.example.com"; empty: off
    # the key of the link and unsubscribe tokens, required with base_url: set TIDINGS_ENGAGEMENT_SECRET
    secret: str = ""
    opens: bool = True  # add the 1x1 pixel
    clicks: bool = True  # point http(s) links at the redirect
    channels: list[Channel] = msgspec.field(default_factory=lambda: ["email"])  # HTML of these is rewritten

    @property
    def enabled(self) -> bool:
        return bool(self.base_url) and (self.opens or self.clicks) and bool(self.channels)


class EventsConfig(_Section):
    """Outbound status events (actors/event_sender.py, docs/design.md "Status
    events"): every status change published on NATS, and delivered to the
    webhook subscriptions of ``/v1/event-subscriptions``."""

    enabled: bool = True  # off: no event is written (the outbox's triggers are switched off at start) or sent
    accepted: bool = True  # the Ingestor publishes "accepted" for each request it takes (one JetStream ack each)
    max_age_s: NonNegative = 7 * 24 * 3600.0  # how long the events stream keeps an event
    max_msgs: Positive = 10_000_000  # the events stream's size; full, it drops its oldest (it is a log)
    relay_batch: Annotated[int, Meta(ge=1, le=10_000)] = 1000  # outbox rows published per round
    relay_idle_s: Annotated[float, Meta(gt=0)] = 1.0  # an idle relay looks again this often (NOTIFY wakes it sooner)
    # woken by a NOTIFY, the relay waits this long first, so the rows of the commits that follow go in
    # the same round: at low load a round per commit cost more CPU than the events (bench/RESULTS.md).
    # At most 5: idle + linger must stay well under /readyz's 30 s for a relay that has not gone round
    relay_linger_s: Annotated[float, Meta(ge=0, le=5)] = 0.05
    lanes: Annotated[int, Meta(ge=1, le=64)] = 4  # deliveries in flight per subscription (one per lane, in order)
    timeout_s: Annotated[float, Meta(gt=0, le=60)] = 10.0  # one POST to a subscriber
    # the waits before each retry of a delivery; after the last, the event is the subscription's dead letter
    retry_backoff_s: list[Annotated[float, Meta(ge=0)]] = msgspec.field(
        default_factory=lambda: [1.0, 5.0, 30.0, 120.0, 600.0, 1800.0])
    # CIDRs a subscription URL may point into although they are internal (["127.0.0.0/8"] for
    # loopback receivers in development and tests); production leaves it empty (providers/egress.py)
    egress_allow: list[str] = msgspec.field(default_factory=list)
    # subscriptions re-read this often (a change made elsewhere); also how often the delivering engine
    # checks its lock's connection, so at most 30 (the server frees a dead session's lock in about 60 s)
    refresh_s: Annotated[float, Meta(gt=0, le=30)] = 5.0
    # JetStream gives an event out again when it is not acked or said to be in progress for this long
    # (a heartbeat says so every quarter of it for each event a subscription holds); taken when a
    # subscription's consumer is made
    ack_wait_s: Annotated[float, Meta(ge=1, le=3600)] = 60.0


class TelemetryConfig(_Section):
    """OpenTelemetry traces (infra/telemetry.py, docs/design.md "Traces and logs"):
    one trace per sampled notification from HTTP accept to its tracking row."""

    enabled: bool = False  # off: no tracer is set up and nothing is done per notification
    # where spans go: an OTLP/HTTP receiver's base URL (a collector); /v1/traces is added
    otlp_endpoint: Annotated[str, Meta(pattern=r"^https?://[^\s]+\Z")] = "http://127.0.0.1:4318"
    # the share of new traces kept (by trace id); a caller's sampled traceparent is always followed
    sample_ratio: Annotated[float, Meta(ge=0, le=1)] = 0.01
    service_name: Annotated[str, Meta(min_length=1, max_length=100)] = "tidings"


class LoggingConfig(_Section):
    """The log lines of the engine's process and every actor's (infra/logs.py)."""

    format: Literal["text", "json"] = "text"  # json: one JSON object per line, with notification and trace ids
    level: Literal["debug", "info", "warning", "error"] = "warning"


class ProviderConfig(_Section):
    name: str
    type: str
    priority: int = 1
    enabled: bool = True
    rate_per_s: NonNegative = 0.0  # 0: unlimited
    burst: NonNegative = 0.0  # 0: one second's worth of rate
    daily_limit: Annotated[int, Meta(ge=0)] = 0
    concurrency: Positive = 100  # calls in flight at once (bulkhead)
    timeout_s: NonNegative = 10.0
    max_attempts: Positive = 3
    backoff_base_s: NonNegative = 0.1
    backoff_max_s: NonNegative = 5.0
    max_wait_s: NonNegative = 2.0  # longest wait for a rate-limit token before failing over
    breaker_failures: Positive = 5
    breaker_recovery_s: NonNegative = 30.0
    weight: Annotated[float, Meta(ge=0)] = 1.0  # routing = "weighted": share of first tries; 0: failover only
    settings: dict[str, Any] = {}


class ChannelConfig(_Section):
    enabled: bool = True
    shards: Positive = 1
    # ChannelShards that take only high and critical notifications, so these never
    # wait in the event loop of a shard busy with a bulk backlog (docs/design.md,
    # "Priority lanes"); never a broadcast's. Each has its own provider clients, limits
    # and breakers, like any shard; a provider's rate_per_s and daily_limit are shared
    # by all of the channel's shards ([provider_limits]). 0: they share the shards
    # above (the bulkhead still lets them pass)
    urgent_shards: Annotated[int, Meta(ge=0)] = 0
    providers: list[ProviderConfig] = []
    # The order a delivery tries the providers in (actors/delivery/routing/).
    routing: Literal["priority", "round_robin", "weighted", "health"] = "priority"
    health_window_s: NonNegative = 60.0  # routing = "health": how far back calls count
    health_max_error_rate: Annotated[float, Meta(ge=0, le=1)] = 0.5  # above it, a provider is tried last


class AnalyticsConfig(_Section):
    """Bounds of ``GET /v1/analytics/channels`` (stores/analytics.py): past them, a 422."""

    max_window_days: Positive = 93  # the longest window from ``from`` to ``to``
    max_buckets: Positive = 5000  # time buckets in one answer (per channel and provider)


class TopicsConfig(_Section):
    """Topics a user may join with their own end-user token (engine/http/topics.py):
    those whose id starts with one of these prefixes ("newsletter.", "public.").
    Empty (the default): joining is a product's call, with a key; a user may
    always leave."""

    self_service: Annotated[list[Annotated[str, Meta(min_length=1, max_length=100,
                                                     pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*\Z")]],
                            Meta(max_length=100)] = []


class Config(_Section):
    engine: EngineConfig = EngineConfig()
    nats: NatsConfig = NatsConfig()
    database: DatabaseConfig = DatabaseConfig()
    redis: RedisConfig = RedisConfig()
    ray: RayConfig = RayConfig()
    http: HttpConfig = HttpConfig()
    recorder: RecorderConfig = RecorderConfig()
    channels: dict[str, ChannelConfig] = {}
    preferences: PolicyConfig = PolicyConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    retention: RetentionConfig = RetentionConfig()
    audit: AuditConfig = AuditConfig()
    compliance: ComplianceConfig = ComplianceConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    engagement: EngagementConfig = EngagementConfig()
    bounces: BouncesConfig = BouncesConfig()
    ratelimit: RateLimitConfig = RateLimitConfig()
    provider_limits: ProviderLimitsConfig = ProviderLimitsConfig()
    analytics: AnalyticsConfig = AnalyticsConfig()
    topics: TopicsConfig = TopicsConfig()
    events: EventsConfig = EventsConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    logging: LoggingConfig = LoggingConfig()

    def enabled_channels(self) -> frozenset[str]:
        """Channels that are on and have at least one enabled provider."""
        return frozenset(
            name for name, ch in self.channels.items()
            if ch.enabled and any(p.enabled for p in ch.providers)
        )


def shares_provider_limits(cfg: Config) -> bool:
    """Whether the ChannelShards count providers' limits in Redis: shared, and an
    enabled provider of an enabled channel has a rate or a daily limit."""
    if not cfg.provider_limits.shared:
        return False
    enabled = cfg.enabled_channels()
    return any(p.enabled and (p.rate_per_s > 0 or p.daily_limit > 0)
               for name, ch in cfg.channels.items() if name in enabled for p in ch.providers)


def wants_redis(cfg: Config) -> bool:
    """Whether the engine needs a Redis: the HTTP API's rate limits or shared provider limits."""
    return cfg.ratelimit.enabled or shares_provider_limits(cfg)


# Settings that env variables may override: not the tables of lists (channels, preferences).
SECTIONS = {f.name: f.type for f in msgspec.structs.fields(Config) if f.name not in ("channels", "preferences")}


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base``; tables merge, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``TIDINGS_NATS_URL=…`` → ``{"nats": {"url": "…"}}``; unknown names are errors."""
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("TIDINGS_") or key.startswith(NOT_SETTINGS):
            continue
        rest = key[len("TIDINGS_"):].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(f"{key}: unknown setting (sections: {', '.join(SECTIONS)})")
        field = rest[len(section) + 1:]
        if field not in _field_names(section):
            raise ConfigError(f"{key}: unknown setting {section}.{field}")
        if _is_list(section, field):
            value = [v.strip() for v in value.split(",") if v.strip()]  # "email,sms" -> ["email", "sms"]
        out.setdefault(section, {})[field] = value
    if env.get("RAY_ADDRESS"):
        out.setdefault("ray", {})["address"] = env["RAY_ADDRESS"]
    return out


def _field_names(section: str) -> set[str]:
    return {f.name for f in msgspec.structs.fields(SECTIONS[section])}


def _is_list(section: str, name: str) -> bool:
    field = next(f for f in msgspec.structs.fields(SECTIONS[section]) if f.name == name)
    return getattr(field.type, "__origin__", None) is list


def convert(data: Mapping[str, Any]) -> Config:
    try:
        cfg = msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"config: {e}") from None
    check_retention(cfg)
    check_bounces(cfg)
    check_events(cfg)
    check_ports(cfg)
    return check_engagement(cfg)


def check_retention(cfg: Config) -> None:
    """Tracking rows and the change feed are what make a redelivered message
    idempotent (notifications; NATS preference changes by their stream sequence),
    and JetStream may redeliver a message until it is ``nats.max_age_s`` old: they
    must be kept at least that long."""
    age = cfg.nats.max_age_s
    for name in ("tracking_days", "change_feed_days"):
        days = getattr(cfg.retention, name)
        if days and not age:
            raise ConfigError(f"config: retention.{name} = {days}, but nats.max_age_s = 0 keeps messages (and their "
                              "redeliveries) forever; keep these rows forever too (0) or set nats.max_age_s")
        if days and age and days * 86400 < age:
            raise ConfigError(f"config: retention.{name} = {days} is shorter than nats.max_age_s "
                              f"({age:g} s, {age / 86400:g} days), how long a message may still be redelivered")


def check_ports(cfg: Config) -> None:
    """The ports the engine opens on one host differ (a clash would surface as
    a bind error deep in Ray's start, or as one service answering for another)."""
    ports = {"http.port": cfg.http.port, "ray.dashboard_port": cfg.ray.dashboard_port,
             "ray.metrics_port": cfg.ray.metrics_port}
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port and port in seen:
            raise ConfigError(f"config: {key} = {port} is also {seen[port]}")
        seen.setdefault(port, key)


def check_events(cfg: Config) -> None:
    """``events.egress_allow`` is a list of CIDRs, said at start rather than by
    the EventSender's constructor (an actor Ray would restart in vain)."""
    for item in cfg.events.egress_allow:
        try:
            ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"config: events.egress_allow entry {item!r} is not a CIDR (e.g. \"127.0.0.0/8\")"
                              ) from None


MIN_SECRET_CHARS = 16


def bounces_listen(listen: str) -> tuple[str | None, int]:
    """``bounces.listen`` as (host, port), an empty host meaning every interface;
    ConfigError unless it is ``host:port``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"config: bounces.listen = {listen!r} is not host:port")
    return (host.strip("[]") or None), int(port)


def check_bounces(cfg: Config) -> None:
    """``bounces.listen`` is empty or ``host:port``, said at start, not once the services run."""
    if cfg.bounces.listen:
        bounces_listen(cfg.bounces.listen)


def check_engagement(cfg: Config) -> Config:
    """With a ``base_url``, tokens are signed: a secret is required (a short or
    missing one would let anyone mint redirects and opens). Returns ``cfg`` with
    the base URL's trailing slash removed."""
    e = cfg.engagement
    if not e.base_url:
        return cfg
    if not e.base_url.startswith(("http://", "https://")) or any(c.isspace() for c in e.base_url):
        raise ConfigError(f"config: engagement.base_url = {e.base_url!r} is not an http(s) URL")
    if len(e.secret) < MIN_SECRET_CHARS:
        what = "is not set" if not e.secret else f"is shorter than {MIN_SECRET_CHARS} characters"
        raise ConfigError(f"config: engagement.secret {what}; it is required with engagement.base_url "
                          f"(set TIDINGS_ENGAGEMENT_SECRET)")
    if e.base_url.endswith("/"):
        cfg = msgspec.structs.replace(cfg, engagement=msgspec.structs.replace(e, base_url=e.base_url.rstrip("/")))
    return cfg


def encode(cfg: Config) -> bytes:
    """MessagePack form, how a Config crosses to actors."""
    return msgspec.msgpack.encode(cfg)


def decode(data: bytes) -> Config:
    return msgspec.msgpack.decode(data, type=Config)
