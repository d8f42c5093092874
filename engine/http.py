"""The HTTP front door (aiohttp). Submissions are validated, given ids and
published to JetStream; the answer (202) comes only after JetStream acked the
publish, so "accepted" means durable."""

from __future__ import annotations

import asyncio
import time
import uuid
import zoneinfo
from typing import Annotated

import msgspec
import nats.errors
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from engine import engagement, streams
from engine.errors import field_error
from engine.runtime import Engine
from policy import wire
from policy.sharding import shard_of
from policy.types import (Address, BroadcastRequest, Channel, NotificationRequest, UserProfile, UserState,
                          notification_id)
from policy.validate import message_errors

ENGINE = web.AppKey("engine", Engine)

HTTP_REQUESTS = Counter("tidings_http_requests_total", "HTTP requests", ["route", "status"])
ACCEPTED = Counter("tidings_notifications_accepted_total", "Notifications accepted (published)", ["category"])
PUBLISH_SECONDS = Histogram("tidings_publish_seconds", "Time to publish a submission to JetStream")

PUBLISH_TIMEOUT_S = 10.0  # no ack by then: 503; a retry with the same id or idempotency key is deduplicated

_one = msgspec.json.Decoder(NotificationRequest)
_broadcast = msgspec.json.Decoder(BroadcastRequest)
_many = msgspec.json.Decoder(list[NotificationRequest])
_json = msgspec.json.Encoder()


class Problem(web.HTTPException):
    """An error answer with a JSON body: ``{"error": …, "errors": [{"field", "reason"}]}``."""

    def __init__(self, status: int, error: str, errors: list[dict] | None = None):
        self.status_code = status
        super().__init__(body=orjson.dumps({"error": error, "errors": errors or []}),
                         content_type="application/json")


def reply(data, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(data), status=status, content_type="application/json")


async def read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[ENGINE].cfg.http.max_body_bytes
        raise Problem(413, "body too large", [{"field": "$", "reason": f"body exceeds {limit} bytes"}])


def decode(decoder: msgspec.json.Decoder, body: bytes, what: str):
    """``body`` decoded, or the answer: 422 naming the field when it breaks the
    schema, 400 when it is not JSON at all."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        raise Problem(422, f"invalid {what}", [field_error(e)])
    except msgspec.DecodeError as e:
        raise Problem(400, "malformed JSON", [{"field": "$", "reason": str(e)}])


def not_accepted(e: BaseException) -> Problem:
    """JetStream did not ack a publish in time: 503, the client retries."""
    return Problem(503, "not accepted", [{"field": "$", "reason": f"JetStream did not ack: {e!r}; retry"}])


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
            elif ch == "email" and (not content.subject or not (content.text or content.html)):
                errors.append({"field": f"{at}.content", "reason": "email needs a subject and text or html"})
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
                errors.append({"field": f"{'$[%d]' % i if many else '$'}.template.id",
                               "reason": f"no template {r.template.id!r} for channel {ch!r}"})
    if errors:
        raise Problem(422, "invalid notification", errors)


async def submit(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    cfg = engine.cfg
    reqs, many = decode_submission(await read_body(request))
    check(reqs, cfg.enabled_channels(), many, cfg.http.max_batch)
    await check_templates(engine, reqs, many)
    now = time.time()
    for r in reqs:
        r.id = uuid.UUID(notification_id(r, str(uuid.uuid4())))
        r.accepted_at = now
    started = time.perf_counter()
    # publish_async: every publish goes out at once over one reply subscription;
    # the answer waits for all of JetStream's acks.
    pending = [await engine.js.publish_async(streams.subject_for(cfg.nats, r.category, r.priority), _json.encode(r),
                                             headers={"Nats-Msg-Id": str(r.id)})
               for r in reqs]
    try:
        acks = await asyncio.wait_for(asyncio.gather(*pending), PUBLISH_TIMEOUT_S)
    except (TimeoutError, nats.errors.Error) as e:
        raise not_accepted(e)
    PUBLISH_SECONDS.observe(time.perf_counter() - started)
    for r in reqs:
        ACCEPTED.labels(r.category).inc()
    items = [{"id": str(r.id), "duplicate": bool(a.duplicate)} for r, a in zip(reqs, acks)]
    return reply({"notifications": items} if many else items[0], status=202)


async def submit_broadcast(request: web.Request) -> web.Response:
    """One message to an audience; 202 with its id once JetStream has it."""
    engine = request.app[ENGINE]
    cfg = engine.cfg
    b = decode(_broadcast, await read_body(request), "broadcast")
    check([b], cfg.enabled_channels(), False, 1)
    await check_templates(engine, [b], False)
    b.id = uuid.UUID(notification_id(b, str(uuid.uuid4())))
    b.accepted_at = time.time()
    try:
        ack = await engine.js.publish(streams.broadcast_subject(cfg.nats, b.category), _json.encode(b),
                                      headers={"Nats-Msg-Id": str(b.id)}, timeout=PUBLISH_TIMEOUT_S)
    except (TimeoutError, nats.errors.Error) as e:
        raise not_accepted(e)
    return reply({"id": str(b.id), "duplicate": bool(ack.duplicate)}, status=202)


BROADCAST_SQL = """
SELECT channel, status, reason, count(*) AS n,
       extract(epoch FROM min(accepted_at)) AS accepted_at, extract(epoch FROM max(created_at)) AS last_at
FROM delivery_tracking WHERE parent_id = $1 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


def path_uuid(request: web.Request) -> uuid.UUID:
    """The ``{id}`` of the path as a UUID, or a 400 naming it."""
    raw = request.match_info["id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise Problem(400, "bad id", [{"field": "id", "reason": f"{raw!r} is not a UUID"}])


async def broadcast_status(request: web.Request) -> web.Response:
    """Recipient outcomes of a broadcast so far, counted by channel, status and reason."""
    bid = path_uuid(request)
    rows = await request.app[ENGINE].pool.fetch(BROADCAST_SQL, bid)
    if not rows:
        raise Problem(404, "not found", [{"field": "id", "reason": "no recipient recorded (unknown, or starting)"}])
    counts = [{"channel": r["channel"], "status": r["status"], "reason": r["reason"], "count": r["n"]} for r in rows]
    first = min(float(r["accepted_at"]) for r in rows if r["accepted_at"] is not None)
    last = max(float(r["last_at"]) for r in rows)
    return reply({"id": str(bid), "recorded": sum(r["n"] for r in rows), "outcomes": counts,
                  "seconds_since_accepted": round(last - first, 3)})


STATUS_SQL = """
SELECT channel, status, reason, provider, provider_message_id, attempts, timeline, errors,
       extract(epoch FROM accepted_at) AS accepted_at, extract(epoch FROM completed_at) AS completed_at,
       parent_id::text AS parent_id, digest_id::text AS digest_id
FROM delivery_tracking WHERE notification_id = $1 ORDER BY channel
"""


async def status(request: web.Request) -> web.Response:
    nid = path_uuid(request)
    pool = request.app[ENGINE].pool
    rows = await pool.fetch(STATUS_SQL, nid)
    if not rows:
        raise Problem(404, "not found", [{"field": "id", "reason": "no outcome recorded (unknown, or still in flight)"}])
    engaged = await engagement.timelines(pool, nid)  # opens and clicks, after the channel's own timeline
    channels = [{
        "channel": r["channel"], "status": r["status"], "reason": r["reason"], "provider": r["provider"],
        "provider_message_id": r["provider_message_id"], "attempts": r["attempts"],
        "timeline": orjson.loads(r["timeline"]) + engaged.get(r["channel"], []),
        "errors": orjson.loads(r["errors"]) if r["errors"] else None,
        "accepted_at": float(r["accepted_at"]) if r["accepted_at"] is not None else None,
        "completed_at": float(r["completed_at"]) if r["completed_at"] is not None else None,
        "broadcast_id": r["parent_id"], "digest_id": r["digest_id"],
    } for r in rows]
    return reply({"id": str(nid), "channels": channels})


def profile_from(data, user_id: str | None, at: str) -> UserProfile:
    if not isinstance(data, dict):
        raise Problem(422, "invalid user", [{"field": at, "reason": "expected an object"}])
    if user_id is not None:
        if data.setdefault("user_id", user_id) != user_id:
            raise Problem(422, "invalid user", [{"field": f"{at}.user_id", "reason": "differs from the path"}])
    try:
        profile = msgspec.convert(data, UserProfile)
    except msgspec.ValidationError as e:
        raise Problem(422, "invalid user", [field_error(e, at)])
    try:
        zoneinfo.ZoneInfo(profile.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise Problem(422, "invalid user", [{"field": f"{at}.timezone", "reason": f"unknown time zone {profile.timezone!r}"}])
    email = profile.addresses.get("email")
    if email is not None and ("@" not in email or email.startswith("@") or email.endswith("@")):
        raise Problem(422, "invalid user", [{"field": f"{at}.addresses.email", "reason": "not an email address"}])
    return profile


def json_body(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise Problem(400, "malformed JSON", [{"field": "$", "reason": str(e)}])


async def save_profiles(engine: Engine, profiles: list[UserProfile], actor: str | None) -> None:
    """Group by owning shard; one call per shard; each commits before it answers.
    A rule violation (opt-outs that switch off a mandatory category) is a 422
    and that shard writes nothing."""
    n = len(engine.actors.user_shards)
    groups: dict[int, list[UserProfile]] = {}
    for p in profiles:
        groups.setdefault(shard_of(p.user_id, n), []).append(p)
    replies = await asyncio.gather(*(engine.actors.user_shards[s].upsert_users.remote(wire.encode(g), actor)
                                     for s, g in groups.items()))
    errors = [{"field": f"{uid}.{field}", "reason": why} for reply_ in replies for uid, field, why in reply_]
    if errors:
        raise Problem(422, "invalid user", errors)


async def put_user(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    user_id = request.match_info["user_id"]
    profile = profile_from(json_body(await read_body(request)), user_id, "$")
    await save_profiles(engine, [profile], request.headers.get("X-Actor"))
    return await get_user(request)


async def put_users(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    data = json_body(await read_body(request))
    if not isinstance(data, list) or not data:
        raise Problem(422, "invalid users", [{"field": "$", "reason": "expected a non-empty array"}])
    if len(data) > engine.cfg.http.max_batch:
        raise Problem(422, "batch too large", [{"field": "$", "reason": f"at most {engine.cfg.http.max_batch}"}])
    profiles = [profile_from(d, None, f"$[{i}]") for i, d in enumerate(data)]
    await save_profiles(engine, profiles, request.headers.get("X-Actor"))
    return reply({"saved": len(profiles)})


async def get_user(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    user_id = request.match_info["user_id"]
    found = await engine.shard_for(user_id).get_user.remote(user_id)
    if found is None:
        raise Problem(404, "not found", [{"field": "user_id", "reason": f"no user {user_id!r}"}])
    state = wire.decode(found, UserState)
    opt_outs = sorted(f"{p.channel}:{p.category}" for p in state.prefs
                      if p.enabled is False and p.content_type == "*" and not p.context)
    return reply({"user_id": state.user_id, "addresses": state.addresses, "opt_outs": opt_outs,
                  "preferences_version": state.version, "template": state.template,
                  "suppressed": state.suppressed, "timezone": state.timezone, "locale": state.locale})


class Suppression(msgspec.Struct, forbid_unknown_fields=True):
    channel: Channel
    address: Address
    reason: Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,32}$")] = "manual"


_suppression = msgspec.json.Decoder(Suppression)


async def add_suppression(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    s = decode(_suppression, await read_body(request), "suppression")
    async with engine.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO suppressions (channel, address, reason, source) VALUES ($1, $2, $3, 'api') "
            "ON CONFLICT (channel, address) DO UPDATE SET reason = EXCLUDED.reason", s.channel, s.address, s.reason)
        users = [r[0] for r in await conn.fetch(
            "SELECT user_id FROM user_addresses WHERE channel = $1 AND address = $2", s.channel, s.address)]
    n = len(engine.actors.user_shards)
    await asyncio.gather(*(engine.actors.user_shards[shard_of(u, n)].reload.remote([u]) for u in users))
    return reply({"channel": s.channel, "address": s.address, "reason": s.reason, "users": users}, status=201)


async def healthz(request: web.Request) -> web.Response:
    return reply({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    checks = {}
    checks["nats"] = engine.nc is not None and engine.nc.is_connected
    try:
        await asyncio.wait_for(engine.pool.fetchval("SELECT 1"), 2)
        checks["postgres"] = True
    except Exception:
        checks["postgres"] = False
    try:
        await asyncio.wait_for(asyncio.gather(*(a.info.remote() for a in engine.actors.user_shards)), 5)
        checks["ray"] = True
    except Exception:
        checks["ray"] = False
    ok = all(checks.values())
    return reply({"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def count_requests(request: web.Request, handler):
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        response = await handler(request)
    except web.HTTPException as e:
        HTTP_REQUESTS.labels(route, str(e.status)).inc()
        raise
    HTTP_REQUESTS.labels(route, str(response.status)).inc()
    return response


def make_app(engine: Engine) -> web.Application:
    app = web.Application(client_max_size=engine.cfg.http.max_body_bytes, middlewares=[count_requests])
    app[ENGINE] = engine
    app.router.add_post("/v1/notifications", submit)
    app.router.add_get("/v1/notifications/{id}", status)
    app.router.add_post("/v1/broadcasts", submit_broadcast)
    app.router.add_get("/v1/broadcasts/{id}", broadcast_status)
    app.router.add_put("/v1/users/{user_id}", put_user)
    app.router.add_get("/v1/users/{user_id}", get_user)
    app.router.add_post("/v1/users", put_users)
    app.router.add_post("/v1/suppressions", add_suppression)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    from engine import (  # built on these helpers
        http_analytics, http_bulk, http_events, http_inbox, http_links, http_prefs, http_templates, http_tracking)
    http_prefs.add_routes(app)
    http_bulk.add_routes(app)
    http_templates.add_routes(app)
    http_tracking.add_routes(app)
    http_inbox.add_routes(app)
    http_events.add_routes(app)
    http_links.add_routes(app)
    http_analytics.add_routes(app)
    return app


async def serve(engine: Engine, host: str | None = None, port: int | None = None) -> web.AppRunner:
    runner = web.AppRunner(make_app(engine), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or engine.cfg.http.host, engine.cfg.http.port if port is None else port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    return runner.addresses[0][1]
