"""Notifications and broadcasts: submitted (validated, given ids, published to
JetStream; 202 only after JetStream acked, so "accepted" means durable),
looked up (per-channel outcomes, a broadcast's counts) and cancelled (the
channels still held)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable

import msgspec
import nats.errors
import orjson
from aiohttp import web
from prometheus_client import Counter, Histogram

from engine import audiences, dry_runs
from engine.auth import PRINCIPAL, Principal
from engine.http.access import Link, Param, Route, Scoped, forbidden, register
from engine.http.common import ENGINE, UUID_PATH, Problem, decode, not_accepted, path_uuid, query_bool, read_json, reply
from engine.runtime import Engine
from infra import streams, telemetry
from policy import cancel as cancelling, segments
from policy.api import (
    Accepted,
    AcceptedBatch,
    BroadcastStatus,
    Cancellation,
    ChannelOutcome,
    DryRun,
    NotificationStatus,
    OutcomeCount,
)
from policy.audience import Audience
from policy.email import content_problem
from policy.labels import OTHER
from policy.types import CHANNELS, BroadcastRequest, IdempotencyKey, NotificationRequest, derive_id, notification_id
from policy.validate import message_errors
from stores import engagement, schedules

ACCEPTED = Counter("tidings_notifications_accepted_total", "Notifications accepted (published)", ["category"])
CANCELLED = Counter("tidings_channels_cancelled_total", "Held channels (and fallback checks) cancelled through the API",
                    ["channel"])
PUBLISH_SECONDS = Histogram("tidings_publish_seconds", "Time to publish a submission to JetStream")

PUBLISH_TIMEOUT_S = 10.0  # no ack by then: 503; a retry with the same id or idempotency key is deduplicated

_one = msgspec.json.Decoder(NotificationRequest)
_broadcast = msgspec.json.Decoder(BroadcastRequest)
_many = msgspec.json.Decoder(list[NotificationRequest])
_json = msgspec.json.Encoder()


def decode_submission(body: bytes) -> tuple[list[NotificationRequest], bool]:
    """The requests in a body holding one object or an array; bool says which."""
    stripped = body.lstrip()
    if not stripped:
        raise Problem(400, "empty body", [{"field": "$", "reason": "expected a JSON object or array"}])
    many = stripped[:1] == b"["
    reqs = decode(_many, body, "notification") if many else [decode(_one, body, "notification")]
    return reqs, many


def check(reqs: list, available: frozenset[str], many: bool, max_batch: int) -> None:
    """Rules the schema cannot say: configured channels, content present. All
    violations are reported at once."""
    if many and not reqs:
        raise Problem(422, "invalid notification", [{"field": "$", "reason": "empty batch"}])
    if len(reqs) > max_batch:
        raise Problem(422, "batch too large", [{"field": "$", "reason": f"at most {max_batch} per request"}])
    errors = []
    for i, r in enumerate(reqs):
        at = f"$[{i}]" if many else "$"
        errors += [{"field": field, "reason": reason} for field, reason in message_errors(r, at)]
        fields = [(f"{at}.channels[{j}]", ch) for j, ch in enumerate(r.channels)]
        fields += [(f"{at}.fallback[{j}]", ch) for j, ch in enumerate(r.fallback)]
        for field, ch in fields:
            if ch not in available:
                errors.append({"field": field,
                               "reason": f"channel {ch!r} is not configured (available: {', '.join(sorted(available))})"})
                continue
            content = r.content_for(ch)
            if content is None and r.template is not None:
                continue  # checked against the stored templates by check_templates
            if content is None:
                errors.append({"field": f"{at}.content", "reason": f"no content or template for channel {ch!r}"})
            elif ch == "email" and (problem := content_problem(content)) is not None:
                errors.append({"field": f"{at}.content", "reason": problem})
    if errors:
        raise Problem(422, "invalid notification", errors)


async def check_templates(engine: Engine, reqs: list, many: bool) -> None:
    """A request that takes its content from a template: the template has a part
    for each channel that has no content of its own (any locale: the default
    locale is the recipient's last fallback). One query per batch."""
    wanted = {r.template.id for r in reqs if r.template is not None}
    if not wanted:
        return
    rows = await engine.pool.fetch("SELECT DISTINCT id, channel FROM message_templates WHERE id = ANY($1::text[])",
                                   list(wanted))
    have = {(r[0], r[1]) for r in rows}
    errors = []
    for i, r in enumerate(reqs):
        if r.template is None:
            continue
        for ch in dict.fromkeys([*r.channels, *r.fallback]):
            if r.content_for(ch) is None and (r.template.id, ch) not in have:
                errors.append({"field": (f"$[{i}]" if many else "$") + ".template.id",
                               "reason": f"no template {r.template.id!r} for channel {ch!r}"})
    if errors:
        raise Problem(422, "invalid notification", errors)


async def checked(engine: Engine, reqs: list[NotificationRequest], many: bool) -> None:
    """Every check a submission passes before it is sent or dry-run (422 naming
    each violation): its schema's rules, the deployment's channels and templates."""
    check(reqs, engine.enabled_channels, many, engine.cfg.http.max_batch)
    await check_templates(engine, reqs, many)


def key_id(p: Principal | None, key: str) -> uuid.UUID:
    """The notification id idempotency key ``key`` gives: the caller's own
    (``p``); without authentication (``http.auth`` off), the id a NATS producer's
    key gives (a POST without auth gets a new id for each request)."""
    return uuid.UUID(derive_id(f"{p.scope_id}:{key}" if p is not None else key))


def scoped_id(p: Principal | None, r: NotificationRequest | BroadcastRequest) -> uuid.UUID:
    """The notification id: the one given, else from the idempotency key *of
    this caller* ``p`` (so one caller cannot pre-claim another's keys), else new."""
    if r.id is not None:
        return r.id
    if r.idempotency_key is not None and p is not None:
        return key_id(p, r.idempotency_key)
    return uuid.UUID(notification_id(r, str(uuid.uuid4())))


async def submit(request: web.Request) -> web.Response:
    """Submit one notification, or a batch (a JSON array).

    Answered 202 once JetStream holds every one (accepted = durable). A
    notification without ``id`` gets one derived from ``idempotency_key`` (per
    calling key) or a new one; a resubmission with the same id within
    JetStream's duplicate window answers ``duplicate: true`` and is not sent
    again. Every violation in the batch is answered at once (422); one that
    NATS could not carry as a message is 413, and nothing of the batch is
    published.

    ``?dry_run=true``: each is decided by its user's shard as a send would
    decide it, nothing sent, held or recorded; answered 200 with the decisions
    counted by channel, action and reason."""
    reqs, many = decode_submission(await read_json(request))
    engine = request.app[ENGINE]
    if query_bool(request, "dry_run"):
        may_dry_run(request)
        await checked(engine, reqs, many)
        return reply(await dry_run(dry_runs.notifications(engine, reqs)))
    items = await accept(engine, request.get(PRINCIPAL), reqs, many)
    return reply(AcceptedBatch(notifications=items) if many else items[0], status=202)


async def accept(engine: Engine, principal: Principal | None, reqs: list[NotificationRequest],
                 many: bool) -> list[Accepted]:
    """Check decoded submissions (422 naming each violation), give them ids
    (``principal``'s idempotency keys) and publish them; answered once
    JetStream holds every one (503 otherwise). The REST route and the GraphQL
    ``send`` mutation both submit here."""
    cfg = engine.cfg
    await checked(engine, reqs, many)
    now = time.time()
    for r in reqs:
        r.id = scoped_id(principal, r)
        r.accepted_at = now
    started = time.perf_counter()
    # the request's trace goes with every message: the Ingestor continues it, or
    # (not sampled) knows not to start one (infra/telemetry.py)
    traceparent = telemetry.current_traceparent() if telemetry.tracer() is not None else None
    messages = [(streams.subject_for(cfg.nats, r.category, r.priority), _json.encode(r),
                 _headers(str(r.id), traceparent)) for r in reqs]
    too_large(messages, engine.nc.max_payload, many)  # before anything is published
    # every publish goes out at once; the answer waits for all of JetStream's acks
    try:
        duplicates = await engine.publisher.publish(messages, PUBLISH_TIMEOUT_S)
    except (TimeoutError, nats.errors.Error) as e:
        raise not_accepted(e) from None
    PUBLISH_SECONDS.observe(time.perf_counter() - started)
    known = engine.policy.categories  # label values from the config only (policy/labels.py)
    for r in reqs:
        ACCEPTED.labels(r.category if r.category in known else OTHER).inc()
    return [Accepted(id=str(r.id), duplicate=d) for r, d in zip(reqs, duplicates, strict=True)]


def too_large(messages: list[tuple[str, bytes, dict[str, str]]], max_payload: int, many: bool) -> None:
    """413 naming each submission whose message (with its headers) NATS would
    refuse: a retry could never succeed, so it is not a 503. The body limit
    (``http.max_body_bytes``) does not cover it: an id and the acceptance time
    are added, and a batch is split into one message per notification."""
    errors = []
    for i, (_, payload, headers) in enumerate(messages):
        size = len(payload) + len("NATS/1.0\r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in headers.items())
        if size > max_payload:
            errors.append({"field": f"$[{i}]" if many else "$",
                           "reason": f"the notification is {size} bytes as a message; NATS takes at most {max_payload}"})
    if errors:
        raise Problem(413, "notification too large", errors)


def _headers(nid: str, traceparent: str | None) -> dict[str, str]:
    headers = {"Nats-Msg-Id": nid}
    if traceparent is not None:
        headers["traceparent"] = traceparent
    return headers


async def resolved_audience(engine: Engine, audience: Audience) -> Audience:
    """``audiences.resolved``: a saved segment's filter taken in (it travels with
    the broadcast), a filter checked; 422 naming the field otherwise."""
    try:
        return await audiences.resolved(engine, audience, "$.audience", checked=False)
    except segments.Invalid as e:
        raise Problem(422, "invalid broadcast", [{"field": p, "reason": r} for p, r in e.errors]) from None
    except audiences.UnknownSegment:
        raise Problem(422, "invalid broadcast", [{"field": "$.audience.segment", "reason": "no such segment"}]) from None


async def submit_broadcast(request: web.Request) -> web.Response:
    """Submit one message to an audience (a broadcast).

    202 with its id once JetStream has it; each recipient is then decided as a
    single notification would be.

    ``?dry_run=true``: every user is decided as the broadcast would decide
    them, nothing sent, held or recorded; answered 200 with the decisions
    counted by channel, action and reason, a few users for each (for a large
    audience this takes about as long as the broadcast's decisions)."""
    engine = request.app[ENGINE]
    cfg = engine.cfg
    b = decode(_broadcast, await read_json(request), "broadcast")
    if isinstance(b.audience, Audience):  # first: a saved segment's filter is then checked with the rest
        b.audience = await resolved_audience(engine, b.audience)
    check([b], engine.enabled_channels, False, 1)
    await check_templates(engine, [b], False)
    if query_bool(request, "dry_run"):
        may_dry_run(request)
        try:
            return reply(await dry_run(dry_runs.broadcast(engine, b)))
        except dry_runs.Busy:
            raise Problem(429, "busy", [{"field": "dry_run", "reason": "a broadcast dry run is running on this "
                                         "engine: try again when it has answered"}]) from None
    b.id = scoped_id(request.get(PRINCIPAL), b)
    b.accepted_at = time.time()
    try:
        ack = await engine.js.publish(streams.broadcast_subject(cfg.nats, b.category), _json.encode(b),
                                      headers={"Nats-Msg-Id": str(b.id)}, timeout=PUBLISH_TIMEOUT_S)
    except (TimeoutError, nats.errors.Error) as e:
        raise not_accepted(e) from None
    return reply(Accepted(id=str(b.id), duplicate=bool(ack.duplicate)), status=202)


BROADCAST_SQL = """
SELECT channel, status, reason, count(*) AS n,
       extract(epoch FROM min(accepted_at)) AS accepted_at, extract(epoch FROM max(created_at)) AS last_at
FROM delivery_tracking WHERE parent_id = $1 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


async def broadcast_status(request: web.Request) -> web.Response:
    """A broadcast's recipient outcomes so far, counted by channel, status and reason."""
    bid = path_uuid(request)
    rows = await request.app[ENGINE].pool.fetch(BROADCAST_SQL, bid)
    if not rows:
        raise Problem(404, "not found", [{"field": "id", "reason": "no recipient recorded (unknown, or starting)"}])
    counts = [OutcomeCount(channel=r["channel"], status=r["status"], reason=r["reason"], count=r["n"]) for r in rows]
    first = min(float(r["accepted_at"]) for r in rows if r["accepted_at"] is not None)
    last = max(float(r["last_at"]) for r in rows)
    return reply(BroadcastStatus(id=str(bid), recorded=sum(r["n"] for r in rows), outcomes=counts,
                                 seconds_since_accepted=round(last - first, 3)))


STATUS_SQL = """
SELECT channel, status, reason, provider, provider_message_id, attempts, timeline, errors,
       extract(epoch FROM accepted_at) AS accepted_at, extract(epoch FROM completed_at) AS completed_at,
       parent_id::text AS parent_id, digest_id::text AS digest_id
FROM delivery_tracking WHERE notification_id = $1 ORDER BY channel
"""


async def status(request: web.Request) -> web.Response:
    """A notification's outcome on each channel, with its timeline.

    404 until the first outcome is recorded."""
    nid = path_uuid(request)
    found = await outcomes(request.app[ENGINE].pool, nid)
    if found is None:
        raise Problem(404, "not found", [{"field": "id", "reason": "no outcome recorded (unknown, or still in flight)"}])
    return reply(found)


async def outcomes(pool, nid: uuid.UUID) -> NotificationStatus | None:
    """A notification's outcome on each channel with its timeline; None until
    the first is recorded. The REST route, the GraphQL ``notification`` field
    and its ``notificationStatus`` subscription all read it here."""
    rows = await pool.fetch(STATUS_SQL, nid)
    if not rows:
        return None
    engaged = await engagement.timelines(pool, nid)  # opens and clicks, after the channel's own timeline
    channels = [ChannelOutcome(
        channel=r["channel"], status=r["status"], reason=r["reason"], provider=r["provider"],
        provider_message_id=r["provider_message_id"], attempts=r["attempts"],
        timeline=orjson.loads(r["timeline"]) + engaged.get(r["channel"], []),
        errors=orjson.loads(r["errors"]) if r["errors"] else None,
        accepted_at=float(r["accepted_at"]) if r["accepted_at"] is not None else None,
        completed_at=float(r["completed_at"]) if r["completed_at"] is not None else None,
        broadcast_id=r["parent_id"], digest_id=r["digest_id"],
    ) for r in rows]
    return NotificationStatus(id=str(nid), channels=channels)


async def cancel(request: web.Request) -> web.Response:
    """Cancel a notification's channels that are still held: deferred (quiet
    hours, a time window, a retry), collected into a digest not yet sent, or a
    fallback check still waiting. Channels already sent (or otherwise final)
    stay as they are. A channel the Scheduler is releasing at this moment ends
    as that release decides (``releasing``): never both sent and cancelled.

    200: every channel's result (repeating a cancellation answers 200 again,
    ``already_cancelled``). 404: nothing recorded under this id (unknown, or
    still in flight: try again). 409: nothing was or could be cancelled (each
    channel is named with why)."""
    return reply(await cancellation(request.app[ENGINE], path_uuid(request)))


async def cancel_by_key(request: web.Request) -> web.Response:
    """Cancel the notification this caller sent with ``idempotency_key``, as
    ``DELETE /v1/notifications/{id}`` does (the same answers). Keys are the
    caller's own: another caller's key names another notification (404)."""
    raw = request.query.get("idempotency_key")
    if raw is None:
        raise Problem(400, "bad query", [{"field": "idempotency_key", "reason": "required"}])
    try:
        key = msgspec.convert(raw, IdempotencyKey)
    except msgspec.ValidationError as e:
        raise Problem(400, "bad query", [{"field": "idempotency_key", "reason": str(e)}]) from None
    return reply(await cancellation(request.app[ENGINE], key_id(request.get(PRINCIPAL), key), "idempotency_key"))


async def cancellation(engine: Engine, nid: uuid.UUID, field: str = "id") -> Cancellation:
    """Cancel what of ``nid`` is held (``stores.schedules.cancel``): its
    answer, or 404 / 409 as ``cancel`` says. The REST routes and the GraphQL
    ``cancel`` mutation both cancel here. ``field``: what named ``nid`` (a 404 names it)."""
    async with engine.pool.acquire() as conn:
        found = await schedules.cancel(conn, nid)
    if not found.known:
        raise Problem(404, "not found", [{"field": field, "reason": "no outcome recorded (unknown, or still in flight)"}])
    for channel in found.cancelled:  # label values: the known channels only (policy/labels.py)
        CANCELLED.labels(channel if channel in CHANNELS or channel == cancelling.FALLBACK_CHANNEL else OTHER).inc()
    channels = cancelling.answers(found.statuses, found.cancelled, found.releasing, found.earlier)
    if not cancelling.anything_cancelled(channels):
        errors = [{"field": f"channels.{c.channel}", "reason": cancelling.why_not(c)} for c in channels]
        if found.rejected is not None:  # rejected before it had channels: the notification itself
            errors.append({"field": field, "reason": f"not held: {found.rejected}"})
        raise Problem(409, "nothing to cancel", errors)
    return Cancellation(id=str(nid), channels=channels)


def may_dry_run(request: web.Request) -> None:
    """A dry run shows how users' preferences, consent and suppressions decide:
    it needs ``decisions:read`` besides the send's scope."""
    p = request.get(PRINCIPAL)
    if p is not None and not p.allows(dry_runs.SCOPE):
        raise forbidden(f"a dry run needs the scope {dry_runs.SCOPE!r} too: its reasons show users' preferences, "
                        "consent and suppressions")


async def dry_run(answer: Awaitable[DryRun]) -> DryRun:
    try:
        return await answer
    except TimeoutError:
        raise Problem(504, "timeout", [{"field": "dry_run", "reason": f"not decided within "
                                        f"{dry_runs.DRY_RUN_S:.0f} s"}]) from None


DRY_RUN = Param("dry_run", bool, "Decide every recipient as a send would, and send, hold and record nothing: "
                "answered 200 with the decisions counted by channel, action and reason. Needs the scope "
                "decisions:read besides the send's")

ROUTES = [
    Route("POST", "/v1/notifications", submit, Scoped("notifications:send"),
          body=(NotificationRequest, list[NotificationRequest]), answers={202: (Accepted, AcceptedBatch), 200: DryRun},
          query=(DRY_RUN,), errors=(504,),
          example={"user_id": "u-1042", "category": "orders", "channels": ["email"],
                   "idempotency_key": "order-8812-shipped",
                   "content": {"subject": "Your order shipped", "text": "It arrives on Friday."}},
          links=(Link("status", "GET", "/v1/notifications/{id}", {"id": "$response.body#/id"}),
                 Link("event", "POST", "/v1/notifications/{id}/events", {"id": "$response.body#/id"}))),
    Route("GET", "/v1/notifications/{id}", status, Scoped("notifications:read"), params=UUID_PATH, errors=(404,),
          answers={200: NotificationStatus}),
    # its own scope: submitting does not imply undoing (and no owner is recorded: README, Known gaps)
    Route("DELETE", "/v1/notifications/{id}", cancel, Scoped("notifications:cancel"), params=UUID_PATH,
          errors=(404, 409), answers={200: Cancellation}),
    Route("DELETE", "/v1/notifications", cancel_by_key, Scoped("notifications:cancel"), errors=(404, 409),
          answers={200: Cancellation},
          query=(Param("idempotency_key", IdempotencyKey, "The idempotency key this caller sent the notification "
                       "with", required=True),)),
    Route("POST", "/v1/broadcasts", submit_broadcast, Scoped("broadcasts:send"), body=BroadcastRequest,
          answers={202: Accepted, 200: DryRun}, query=(DRY_RUN,), errors=(504,), example={"category": "product_updates", "channels": ["email"],
                                            "content": {"subject": "New: dark mode", "text": "Try it in settings."}},
          links=(Link("status", "GET", "/v1/broadcasts/{id}", {"id": "$response.body#/id"}),)),
    Route("GET", "/v1/broadcasts/{id}", broadcast_status, Scoped("notifications:read"), params=UUID_PATH, errors=(404,),
          answers={200: BroadcastStatus}),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
