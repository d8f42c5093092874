"""HTTP routes for provider tracking webhooks: ``POST /v1/tracking/sendgrid``,
``/v1/tracking/mailgun`` and ``/v1/tracking/twilio`` (Vonage's and MessageBird's are in
``engine/http/vonage.py`` and ``engine/http/messagebird.py``).

Each route verifies the provider's signature with the settings of the providers
of that type configured in ``engine.cfg.channels`` (enabled or not: events of
past sends still arrive), parses the events (``providers.tracking``), and applies
them in one transaction:

- the tracking row is found by notification id (among the channels the
  provider serves), else by ``provider_message_id`` (when exactly one row has
  it); the event is appended to its ``timeline`` as ``{"event", "at",
  "provider", "detail"}`` and its ``status`` moves forward: sent (or any
  non-final status) -> delivered/failed -> bounced/complained, never back, and
  the first of bounced/complained is kept;
- an open or a click (SendGrid ``open``/``click``, Mailgun ``opened``/
  ``clicked``) is also stored as an engagement event with the provider type
  as its source (``stores.engagement``: the first of each kept, a ``sent``
  row moves to ``delivered``), as a client's report would be; not on a row
  whose status says nothing was sent (the client would get 409);
- a hard bounce or a complaint suppresses the address (``suppressions``, reason
  ``bounce``/``complaint``, source = the provider type), and the users with that
  address are reloaded by their UserShards after the commit.

Answers: 200 ``{"events", "updated", "suppressed", "users"}``; 401 for a missing
or bad signature (and, Mailgun, a stale timestamp or a replayed token); 400 for
a body that does not parse; 404 when no provider of that type (with its
verification setting) is configured; 503 when the configured key is unusable.

Settings read (in the provider's ``settings``):

- sendgrid: ``event_public_key`` (base64 DER or PEM), ``event_max_age_s`` (0:
  no timestamp age check; SendGrid does not document re-signing its retries).
- mailgun: ``webhook_signing_key``.
- twilio (any type named ``twilio`` or ``twilio_*``): ``webhook_auth_token`` or
  else ``auth_token`` (Twilio signs callbacks with the account's auth token,
  also when sending with an API key); ``status_callback``, the URL Twilio was
  given, is tried besides the URL the request arrived at (behind a proxy the
  two differ); ``inbound_url`` likewise for the messages people send to our
  numbers (``/v1/tracking/twilio/inbound``: YES, STOP, START, HELP; docs/privacy.md).
"""

from __future__ import annotations

import asyncio
import functools
import html
import logging
import os
import time
import uuid
from collections import Counter, defaultdict

import msgspec
from aiohttp import web
from prometheus_client import Counter as PromCounter

from engine.http.access import Media, Param, Public, Route, register
from engine.http.common import ENGINE, Problem, decode, read_body, reply
from engine.http.replays import SharedTokens, guarded, namespace
from policy.sharding import shard_of
from policy.text import printable
from providers.tracking import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    TWILIO_SIGNATURE_HEADER,
    PayloadError,
    SignatureError,
    TrackingEvent,
    load_sendgrid_key,
    mailgun_event,
    parse_form,
    parse_sendgrid,
    read_mailgun,
    reason_of,
    twilio_event,
    verify_mailgun,
    verify_sendgrid,
    verify_twilio,
)
from providers.tracking.common import MAILGUN_TOLERANCE_S, first_values
from stores import engagement, users as user_store

log = logging.getLogger(__name__)

MAILGUN_TOKENS = web.AppKey("mailgun_tokens", SharedTokens)
# what providers report after the send (delivered, bounced, complained, opened, …), counted where the
# tracking row takes it; the actors' tidings_deliveries_total counts up to "sent"
PROVIDER_EVENTS = PromCounter("tidings_provider_events_total", "Tracking rows whose status a provider's report changed",
                              ["channel", "status"])

FAMILIES = ("sendgrid", "mailgun", "twilio", "vonage", "messagebird", "ses", "sns")
# Status order: a tracking event moves a row only to a higher rank.
RANK = {"delivered": 1, "failed": 1, "bounced": 2, "complained": 2}
# Events that change nothing (opens, clicks, deferrals) stop being appended
# once a timeline is this long; status changes always are.
MAX_TIMELINE = 200

_json = msgspec.json.Encoder()

FIND_BY_NOTIFICATION = """
SELECT notification_id, user_id, channel, status FROM delivery_tracking
WHERE notification_id = $1 AND channel = ANY($2::text[])
ORDER BY (provider_message_id IS NOT DISTINCT FROM $3) DESC, channel
LIMIT 1 FOR UPDATE
"""
FIND_BY_MESSAGE_ID = """
SELECT notification_id, user_id, channel, status FROM delivery_tracking
WHERE provider_message_id = $1 AND channel = ANY($2::text[])
LIMIT 2 FOR UPDATE
"""
UPDATE_ROW = """
UPDATE delivery_tracking SET
    timeline = CASE WHEN $5 OR jsonb_array_length(timeline) < $6 THEN timeline || $2::jsonb ELSE timeline END,
    status = $3, reason = COALESCE($4, reason), updated_at = now()
WHERE notification_id = $1 AND channel = $7
"""


_FLAT = msgspec.json.Decoder(dict[str, str | int | float | bool | None])


def flat_params(body: bytes) -> dict[str, str]:
    """A JSON webhook body of flat fields (Vonage's, MessageBird's) as the text
    parameters its signature covers: 400/422 for anything else (nested values too)."""
    return {k: v if isinstance(v, str) else msgspec.json.encode(v).decode()
            for k, v in decode(_FLAT, body, "webhook").items() if v is not None}


def webhook_params(request: web.Request, body: bytes) -> dict[str, str]:
    """The parameters of a webhook that sends them as a query, a form or flat
    JSON (Vonage, MessageBird): the query's, then the body's over them."""
    params = first_values(request.query.items())
    if body:
        if request.content_type == "application/json":
            params.update(flat_params(body))
        else:
            try:
                params.update(first_values(parse_form(body)))
            except PayloadError as exc:
                raise bad_payload(exc) from None
    return params


def webhook_routes(path: str, handler, why: str, fields: dict[str, str], answer) -> list[Route]:
    """A webhook that ``webhook_params`` reads (Vonage, MessageBird): the same
    handler for GET (its parameters in the query) and POST (in the query, a form
    or flat JSON), ``fields`` naming the parameters (name: what it is)."""
    query = tuple(Param(name, str, doc) for name, doc in fields.items())
    return [Route("GET", path, handler, Public(why), query=query, answers={200: answer},
                  errors=(400, 401, 404, 503)),
            Route("POST", path, handler, Public(why), query=query, body=webhook_body(fields), answers={200: answer},
                  errors=(400, 401, 404, 413, 422, 503))]


def webhook_body(fields: dict[str, str]) -> tuple[Media, Media]:
    """The body of such a webhook (name: what it is): a form, or a JSON object of
    flat values (``flat_params``: a nested one is a 422). Others may come too."""
    flat = ["string", "number", "boolean", "null"]  # flat_params takes any of these and reads it as text
    form = {name: {"type": "string", "description": doc} for name, doc in fields.items()}
    json = {name: {"type": flat, "description": doc} for name, doc in fields.items()}
    return (Media("application/x-www-form-urlencoded", {"type": "object", "properties": form,
                                                         "additionalProperties": {"type": "string"}}),
            Media("application/json", {"type": "object", "properties": json, "additionalProperties": {"type": flat}}))


def family(type_name: str) -> str | None:
    """``sendgrid``, ``mailgun``, ``twilio``, ``vonage`` or ``messagebird`` for a provider type of that
    provider (``twilio_sms``, ``twilio-voice`` count as twilio); else None."""
    t = type_name.lower()
    for name in FAMILIES:
        if t == name or t.startswith((name + "_", name + "-")):
            return name
    return None


class TrackingApplied(msgspec.Struct):
    """What a tracking webhook's events did: how many came, rows updated, addresses newly suppressed, users reloaded."""

    events: int
    updated: int
    suppressed: int
    users: list[str]


class InboundText(msgspec.Struct):
    """What a text a person sent did: how many users have the sender's number, and the answer texted back."""

    users: int
    # the outcome's status of the answer texted back (sent, failed, ...), ``duplicate``
    # (answered before) or ``nothing`` (no answer, or no one to text it to)
    answer: str


class Hook(msgspec.Struct):
    channels: list[str]  # config channels with a provider of the family
    settings: list[dict]  # settings of those providers that have the verification setting


def resolved(settings: dict, secrets: dict[str, str], environ=None) -> dict:
    """``settings`` with ``env:NAME`` and ``secret:NAME`` filled from the
    environment and the engine's stored credentials; a reference that cannot be
    filled is left out, so its text is never taken for a verification key."""
    environ = os.environ if environ is None else environ
    out = {}
    for key, value in settings.items():
        if isinstance(value, str) and value.startswith(("env:", "secret:")):
            kind, _, ref = value.partition(":")
            value = (environ if kind == "env" else secrets).get(ref)
            if value is None:
                continue
        out[key] = value
    return out


def configured(request: web.Request, name: str, *settings_keys: str) -> Hook:
    """The channels and settings (references filled) of the ``name`` providers;
    404 when none is configured, or none has any of ``settings_keys``."""
    engine = request.app[ENGINE]
    cfg = engine.cfg
    channels: list[str] = []
    found: list[dict] = []
    any_provider = False
    for channel, ch in cfg.channels.items():
        for p in ch.providers:
            if family(p.type) != name:
                continue
            any_provider = True
            if channel not in channels:
                channels.append(channel)
            settings = resolved(p.settings, engine.secrets)
            if any(settings.get(k) for k in settings_keys):
                found.append(settings)
    if not any_provider:
        raise Problem(404, "not found", [{"field": "provider", "reason": f"no {name} provider is configured"}])
    if not found:
        raise Problem(404, "not found", [{"field": "provider", "reason": f"no {name} provider has "
                                          f"{' or '.join(settings_keys)} set"}])
    return Hook(channels, found)


def bad_signature(exc: SignatureError, field: str) -> Problem:
    return Problem(401, "bad signature", [{"field": field, "reason": str(exc)}])


def bad_payload(exc: PayloadError) -> Problem:
    return Problem(400, "malformed payload", [{"field": "$", "reason": str(exc)}])


@functools.lru_cache(maxsize=64)
def _public_key(text: str):
    return load_sendgrid_key(text)


async def sendgrid(request: web.Request) -> web.Response:
    """SendGrid's Event Webhook: delivery, bounce, complaint, open and click events.

    The body (a JSON array of events) must carry SendGrid's ECDSA signature
    (``X-Twilio-Email-Event-Webhook-Signature`` over ``X-Twilio-Email-Event-Webhook-Timestamp``
    and the body) by a provider's ``event_public_key``: 401 otherwise. 404 when no SendGrid
    provider has one; 503 when none of the keys is usable."""
    hook = configured(request, "sendgrid", "event_public_key")
    body = await read_body(request)
    keys = []
    for s in hook.settings:
        try:
            keys.append(_public_key(str(s["event_public_key"])))
        except ValueError as exc:
            log.warning("sendgrid event_public_key is unusable: %s", exc)
    if not keys:
        raise Problem(503, "tracking misconfigured", [{"field": "event_public_key", "reason": "no usable key"}])
    try:
        max_age = max(float(s.get("event_max_age_s") or 0) for s in hook.settings)
    except (TypeError, ValueError):
        raise Problem(503, "tracking misconfigured", [{"field": "event_max_age_s", "reason": "not a number"}]) from None
    try:
        verify_sendgrid(keys, request.headers.get(SENDGRID_SIGNATURE_HEADER),
                        request.headers.get(SENDGRID_TIMESTAMP_HEADER), body, tolerance_s=max_age)
    except SignatureError as exc:
        raise bad_signature(exc, SENDGRID_SIGNATURE_HEADER) from None
    try:
        events = parse_sendgrid(body)
    except PayloadError as exc:
        raise bad_payload(exc) from None
    return await apply(request, events, hook.channels)


async def mailgun(request: web.Request) -> web.Response:
    """Mailgun's webhook: one event (delivered, failed, complained, opened, clicked, ...).

    Its ``signature`` (HMAC by a provider's ``webhook_signing_key``) must match, its
    timestamp be within 5 minutes and its token be new: 401 otherwise (a token
    whose request failed may be sent again). 404 when no Mailgun provider has a key."""
    hook = configured(request, "mailgun", "webhook_signing_key")
    body = await read_body(request)
    try:
        data = read_mailgun(body)
    except PayloadError as exc:
        raise bad_payload(exc) from None
    except SignatureError as exc:
        raise bad_signature(exc, "signature") from None
    tokens = request.app[MAILGUN_TOKENS]
    try:
        verify_mailgun([str(s["webhook_signing_key"]) for s in hook.settings], data.timestamp, data.token,
                       data.signature)
    except SignatureError as exc:
        raise bad_signature(exc, "signature") from None
    state, claim = await tokens.claim(data.token)
    if state != "new":
        raise bad_signature(SignatureError("token already used (a replayed request)"), "signature")

    async def work() -> web.Response:
        try:
            event = mailgun_event(data.event_data)
        except PayloadError as exc:
            raise bad_payload(exc) from None
        return await apply(request, [event], hook.channels)
    return await guarded(tokens, claim, work())  # not processed: Mailgun's retry (same token) gets in


def _urls(request: web.Request, settings: list[dict], setting: str = "status_callback") -> list[str]:
    """The URLs Twilio may have signed: the one the request arrived at, the same
    as a proxy's ``X-Forwarded-Proto``/``X-Forwarded-Host`` say it was called,
    and each configured ``status_callback`` (``inbound_url`` for the inbound
    route: a status callback's signature does not pass there). Trying several is safe: each is
    checked against an HMAC only Twilio (with the auth token) can make."""
    seen = [str(request.url)]
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    if proto in ("http", "https") or host:
        try:
            url = request.url.with_scheme(proto) if proto in ("http", "https") else request.url
            if host:
                name, colon, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
                url = url.with_host(name if colon else host).with_port(int(port) if port.isdigit() else None)
            seen.append(str(url))
        except ValueError:
            pass
    for s in settings:
        callback = s.get(setting)
        if isinstance(callback, str) and callback:
            seen.append(callback)
    return list(dict.fromkeys(seen))


async def _twilio_params(request: web.Request, url_setting: str = "status_callback"):
    """(the hook, the form) of a Twilio webhook whose signature verifies, else 400/401."""
    hook = configured(request, "twilio", "webhook_auth_token", "auth_token")
    body = await read_body(request)
    try:
        params = parse_form(body)
    except PayloadError as exc:
        raise bad_payload(exc) from None
    urls = _urls(request, hook.settings, url_setting)
    signature = request.headers.get(TWILIO_SIGNATURE_HEADER)
    last: SignatureError | None = None
    for s in hook.settings:
        try:
            verify_twilio(str(s.get("webhook_auth_token") or s.get("auth_token")), signature, urls, params)
            break
        except SignatureError as exc:
            last = exc
    else:
        raise bad_signature(last or SignatureError("no auth token"), TWILIO_SIGNATURE_HEADER)
    return hook, params


async def twilio(request: web.Request) -> web.Response:
    """Twilio's status callback (SMS: ``MessageSid``/``MessageStatus``; voice: ``CallSid``/``CallStatus``).

    ``X-Twilio-Signature`` must be Twilio's signature (the account's auth token) of
    the URL called (as it arrived, as a proxy's ``X-Forwarded-*`` say, or the
    configured ``status_callback``) and the form: 401 otherwise. 404 when no Twilio
    provider has an auth token."""
    hook, params = await _twilio_params(request)
    try:
        event = twilio_event(params)
    except PayloadError as exc:
        raise bad_payload(exc) from None
    return await apply(request, [event], hook.channels)


# CTIA's keywords (and Twilio's): a reply that is one of them, in any case, alone
STOP_WORDS = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout"})
YES_WORDS = frozenset({"yes", "y"})
START_WORDS = frozenset({"start", "unstop"})  # after a STOP: every SMS consent it withdrew, back
HELP_WORDS = frozenset({"help", "info"})


def keyword(body: str) -> str | None:
    word = body.strip().strip(".!").lower()
    for name, words in (("stop", STOP_WORDS), ("yes", YES_WORDS), ("start", START_WORDS), ("help", HELP_WORDS)):
        if word in words:
            return name
    return None


def twiml(text: str) -> web.Response:
    """Twilio's answer to an inbound message: the reply it sends back (none if empty)."""
    inner = f"<Message>{html.escape(text)}</Message>" if text else ""
    return web.Response(text=f'<?xml version="1.0" encoding="UTF-8"?><Response>{inner}</Response>',
                        content_type="application/xml")


async def twilio_inbound(request: web.Request) -> web.Response:
    """An SMS a person sent to one of our numbers (Twilio's inbound webhook), answered in TwiML.

    YES, STOP, START and HELP are done (``inbound_keyword``) and the answer is the
    TwiML ``<Message>`` (an empty ``<Response>`` for anything else). Signed as
    the status callback is, with the configured ``inbound_url``; 503 when a change
    could not be applied (Twilio's retry does the rest)."""
    _, params = await _twilio_params(request, "inbound_url")
    form = dict(params)
    answer, _ = await inbound_keyword(request.app[ENGINE], form.get("From", ""), form.get("Body", ""))
    return twiml(answer)


async def inbound_keyword(engine, number: str, body: str) -> tuple[str, list[str]]:
    """What an SMS a person sent to one of our numbers asks, done: YES confirms
    a double opt-in, STOP withdraws every SMS consent of everyone with that
    number, START (UNSTOP) grants again what was withdrawn, HELP is answered;
    anything else is left alone. Users are found by the number's blind index;
    each change goes through their shard, audited. Returns the text to answer
    with ('' for none) and the users with that number."""
    word = keyword(body) if len(body) <= 40 else None
    c = engine.cfg.compliance
    if word is None or not number:
        return "", []
    async with engine.pool.acquire() as conn:
        users = await user_store.users_with(conn, engine.ring, "sms", printable(number, 64))
    if word == "help":
        return c.sms_help_text, users
    done = await asyncio.gather(*(engine.shard_for(u).consent_reply.remote(u, word) for u in users),
                                return_exceptions=True)
    failed = [r for r in done if isinstance(r, BaseException) or r == "failed"]
    if failed:
        # the others' changes stand; a 503 has the provider deliver the text again, which
        # does the rest (each change is idempotent, and the answer is sent once per message)
        log.warning("an SMS reply could not be applied to %d of %d users: %s", len(failed), len(done),
                    ", ".join(sorted({type(r).__name__ if isinstance(r, BaseException) else r for r in failed})))
        raise Problem(503, "unavailable", [{"field": "$", "reason": "the reply could not be applied; send it again"}])
    if "stopped" in done:
        return c.sms_stopped_text, users
    return (c.sms_confirmed_text if "confirmed" in done or "started" in done else ""), users


async def answer_by_text(engine, number: str, text: str, ref: str) -> InboundText:
    """``inbound_keyword`` for a provider that cannot answer in the webhook's
    response (Vonage, MessageBird): the answer is texted back by the owning
    UserShard, once per ``ref`` (the provider's id of the inbound message).
    A number nobody has gets no answer: there is no user to record it under."""
    answer, users = await inbound_keyword(engine, number, text)
    sent = "nothing"
    if answer and users:
        owner = min(users)  # the same user, so the same shard, for every copy of one message: one answer
        try:
            sent = await engine.shard_for(owner).text_back.remote(owner, answer, ref)
        except Exception as exc:  # noqa: BLE001 - the consent change stands; a 503 has it sent again
            log.warning("the answer to an inbound SMS was not sent: %s", type(exc).__name__)
            raise Problem(503, "unavailable", [{"field": "$", "reason": "the answer could not be sent; "
                                                                     "send the message again"}]) from None
    return InboundText(users=len(users), answer=sent)


def next_status(current: str, new: str | None) -> str:
    """The row's status after an event: only ever forward (see the module doc)."""
    if new is not None and RANK.get(new, 0) > RANK.get(current, 0):
        return new
    return current


def _uuid(text: str | None) -> uuid.UUID | None:
    if not text:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def engaged(ev: TrackingEvent, row) -> engagement.Engagement:
    """The engagement event of a provider's open or click on ``row``. A time
    further ahead than a client may report is taken as now."""
    now = time.time()
    at = ev.at if 0 <= ev.at <= now + engagement.MAX_CLOCK_AHEAD_S else now
    return engagement.Engagement(row["notification_id"], row["user_id"], row["channel"], ev.engagement, at,
                                 ev.provider)


async def apply(request: web.Request, events: list[TrackingEvent], channels: list[str]) -> web.Response:
    """``apply_events``, answered: the answer of every route."""
    return reply(await apply_events(request.app[ENGINE], events, channels))


async def apply_events(engine, events: list[TrackingEvent], channels: list[str]) -> TrackingApplied:
    """Apply ``events`` in one transaction, then reload the users whose address
    was suppressed; what was done (``events``, ``updated``, ``suppressed``, ``users``)."""
    # what a provider relays (remote MTA answers, user agents) is stored as text:
    # one NUL or lone surrogate would fail the whole transaction, and the batch
    events = [msgspec.structs.replace(ev, detail=printable(ev.detail), address=printable(ev.address, 512),
                                      provider_message_id=printable(ev.provider_message_id, 200),
                                      event=printable(ev.event, 64) or "")
              for ev in events]
    updated = suppressed = 0
    users: set[str] = set()
    changes: Counter[tuple[str, str]] = Counter()
    recorded: list[tuple[list, dict]] = []  # engagement events stored: passed on once committed
    async with engine.pool.acquire() as conn, conn.transaction():
        for ev in events:
            chans = [ev.channel] if ev.channel in channels else channels
            row = None
            nid = _uuid(ev.notification_id)
            if nid is not None:
                row = await conn.fetchrow(FIND_BY_NOTIFICATION, nid, chans, ev.provider_message_id)
            if row is None and ev.provider_message_id:
                rows = await conn.fetch(FIND_BY_MESSAGE_ID, ev.provider_message_id, chans)
                row = rows[0] if len(rows) == 1 else None  # a batch shares one id: ambiguous
            if row is not None:
                status = next_status(row["status"], ev.status)
                changed = status != row["status"]
                entry = _json.encode([{"event": ev.event, "at": ev.at, "provider": ev.provider,
                                       "detail": ev.detail}]).decode()
                reason = reason_of(ev) if changed else None
                await conn.execute(UPDATE_ROW, row["notification_id"], entry, status, reason, changed, MAX_TIMELINE,
                                   row["channel"])
                updated += 1
                if changed:
                    changes[(row["channel"], status)] += 1
                if ev.engagement is not None and row["status"] in engagement.OPENABLE:
                    event = engaged(ev, row)
                    recorded.append(([event], await engagement.record(conn, [event])))
            if ev.hard and ev.status in ("bounced", "complained") and ev.address:
                channel = row["channel"] if row is not None else chans[0]
                why = "bounce" if ev.status == "bounced" else "complaint"
                # found by the blind index, which matches email case-insensitively (infra/pii.normalized)
                new, owners = await user_store.suppress(conn, engine.ring, channel, ev.address, why, ev.provider)
                suppressed += new
                users.update(owners)
    for stored, new in recorded:  # committed: a batch rolled back and sent again is not fed twice
        engine.feed.add(stored, new)
    for (channel, status), n in changes.items():  # committed: counted (channels and statuses are the rows' own)
        PROVIDER_EVENTS.labels(channel=channel, status=status).inc(n)
    await reload(engine, sorted(users))
    return TrackingApplied(events=len(events), updated=updated, suppressed=suppressed, users=sorted(users))


async def reload(engine, users: list[str]) -> None:
    """Ask the owning UserShards to re-read ``users`` (one call per shard). A
    failure is logged, not answered: the rows are committed, and a retry of the
    webhook would only append its events again."""
    shards = engine.actors.user_shards
    if not users or not shards:
        return
    by_shard: dict[int, list[str]] = defaultdict(list)
    for u in users:
        by_shard[shard_of(u, len(shards))].append(u)
    results = await asyncio.gather(*(shards[i].reload.remote(us) for i, us in by_shard.items()),
                                   return_exceptions=True)
    for (i, us), result in zip(by_shard.items(), results, strict=True):
        if isinstance(result, BaseException):
            log.warning("tracking: UserShard %d did not reload %s: %r", i, us, result)


# The providers' own formats: only the fields read here are named; every
# provider sends more, and may add fields at any time.
S = {"type": "string"}
SENDGRID_BODY = Media("application/json", {
    "type": "array", "description": "SendGrid's Event Webhook: the events of one or more messages",
    "items": {"type": "object", "required": ["event"], "additionalProperties": True, "properties": {
        "event": {"type": "string", "minLength": 1, "description": "delivered, bounce, dropped, spamreport, "
                  "deferred, open, click, processed, unsubscribe, ..."},
        "email": {**S, "description": "the recipient (suppressed on a hard bounce or a complaint)"},
        "timestamp": {"type": "number", "description": "epoch seconds"},
        "sg_message_id": {**S, "description": "<X-Message-Id of the send>.<filter>..."},
        "notification_id": {**S, "description": "the custom argument Tidings sends with each message"},
        "type": {**S, "description": "bounce: bounce or blocked"},
        "status": S, "reason": S, "response": S, "attempt": S, "url": S, "useragent": S}}})
MAILGUN_BODY = Media("application/json", {
    "type": "object", "required": ["signature", "event-data"], "additionalProperties": True, "properties": {
        "signature": {"type": "object", "required": ["timestamp", "token", "signature"], "properties": {
            "timestamp": {"type": ["string", "integer"], "description": "epoch seconds"},
            "token": {"type": "string", "minLength": 1}, "signature": {"type": "string", "minLength": 1}}},
        "event-data": {"type": "object", "required": ["event"], "additionalProperties": True, "properties": {
            "event": {"type": "string", "minLength": 1, "description": "delivered, failed, complained, "
                      "rejected, opened, clicked, accepted, ..."},
            "recipient": S, "timestamp": {"type": "number"}, "severity": S, "reason": S, "url": S,
            "delivery-status": {"type": "object"}, "reject": {"type": "object"},
            "user-variables": {"type": "object", "properties": {"notification_id": S}},
            "message": {"type": "object", "properties": {"headers": {
                "type": "object", "properties": {"message-id": S}}}}}}}})
TWILIO_STATUS = Media("application/x-www-form-urlencoded", {
    "type": "object", "additionalProperties": S, "properties": {
        "MessageSid": S, "SmsSid": S, "MessageStatus": S, "SmsStatus": S, "CallSid": S, "CallStatus": S,
        "ErrorCode": S, "ErrorMessage": S, "To": S, "Timestamp": {**S, "description": "RFC 2822 (voice)"},
        "CallDuration": S},
    "examples": [{"MessageSid": "SM0123456789abcdef0123456789abcdef", "MessageStatus": "delivered",
                  "To": "+15550001234"}]})
TWILIO_INBOUND = Media("application/x-www-form-urlencoded", {
    "type": "object", "additionalProperties": S, "properties": {
        "From": {**S, "description": "the sender's number"}, "Body": {**S, "description": "the text"},
        "To": S, "MessageSid": S},
    "examples": [{"From": "+15550001234", "To": "+15550009876", "Body": "STOP",
                  "MessageSid": "SM0123456789abcdef0123456789abcdef"}]})
TWIML = Media("application/xml", {"type": "string", "description": "TwiML: a <Response>, with the answer "
                                  "as its <Message> (none when there is nothing to answer)"})

ROUTES = [
    Route("POST", "/v1/tracking/sendgrid", sendgrid, Public("SendGrid's ECDSA signature is verified"),
          body=SENDGRID_BODY, answers={200: TrackingApplied}, errors=(400, 401, 404, 413, 503),
          example=[{"email": "ann@example.com", "event": "delivered", "timestamp": 1700000000,
                    "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
                    "notification_id": "3f0b2c1e-8d1a-4f7e-9a55-1f2d3c4b5a69", "response": "250 OK"}]),
    Route("POST", "/v1/tracking/mailgun", mailgun, Public("Mailgun's HMAC signature is verified"),
          body=MAILGUN_BODY, answers={200: TrackingApplied}, errors=(400, 401, 404, 413),
          example={"signature": {"timestamp": "1700000000", "token": "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f",
                                 "signature": "d2271d12299f6592d9d44cd9d250f0704e4674c30d79d07c47a66f95ce71cf55"},
                   "event-data": {"event": "delivered", "recipient": "ann@example.com", "timestamp": 1700000000.5,
                                  "user-variables": {"notification_id": "3f0b2c1e-8d1a-4f7e-9a55-1f2d3c4b5a69"}}}),
    Route("POST", "/v1/tracking/twilio", twilio, Public("Twilio's signature is verified"),
          body=TWILIO_STATUS, answers={200: TrackingApplied}, errors=(400, 401, 404, 413)),
    Route("POST", "/v1/tracking/twilio/inbound", twilio_inbound, Public("Twilio's signature is verified"),
          body=TWILIO_INBOUND, answers={200: TWIML}, errors=(400, 401, 404, 413, 503)),
]


def add_routes(app: web.Application) -> None:
    app[MAILGUN_TOKENS] = SharedTokens("mailgun", app[ENGINE].redis, MAILGUN_TOLERANCE_S,
                                       namespace(app[ENGINE]))
    register(app, ROUTES)
