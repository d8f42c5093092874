"""``/v1/event-subscriptions``: webhook subscriptions to status events.

A subscription is a URL, filters (channels, statuses, categories; empty lists
take everything) and a signing secret. Every status change its filters take is
POSTed there as a ``StatusEvent``, signed like the webhook channel
(``Tidings-Signature: t=…,v1=…``, HMAC-SHA256 over ``"<t>." + body``), with
``Tidings-Delivery-Id`` the event's id (the same on every retry), retried with
``events.retry_backoff_s``, and dead-lettered after the last try
(actors/event_sender.py). The secret is shown once, when it is made (at
creation, or ``POST …/{id}/secret`` to rotate); it is stored sealed.

URLs go through the SSRF guard (providers/egress.py): http(s) only, no user
info, never an internal address unless ``events.egress_allow`` lets it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Annotated

import msgspec
from aiohttp import web
from msgspec import Meta

from engine.http.access import Link, Param, Route, Scoped, actor, register
from engine.http.common import ENGINE, UUID_PATH, Problem, decode, path_uuid, query_int, read_json, reply
from policy import events
from policy.events import EventChannel, EventStatus, StatusEvent
from policy.types import ONE_LINE
from providers.egress import EgressPolicy, check_url, parse_allow
from providers.errors import DeliveryError
from stores import events as store

log = logging.getLogger(__name__)

Url = Annotated[str, Meta(min_length=1, max_length=2000, examples=["https://example.com/hooks/tidings"])]
Description = Annotated[str, Meta(max_length=500, pattern=ONE_LINE)]
Category = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+\Z")]
Secret = Annotated[str, Meta(min_length=24, max_length=200, pattern=r"^[\x21-\x7e]+\Z")]
Channels = Annotated[list[EventChannel], Meta(max_length=8)]
Statuses = Annotated[list[EventStatus], Meta(max_length=len(events.STATUSES))]  # each status once at most
Categories = Annotated[list[Category], Meta(max_length=100)]


class NewSubscription(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A subscription to make: where to POST, what to send there. ``secret``:
    the signing secret (made for you when left out: ``whsec_`` and 43 random
    characters)."""

    url: Url
    description: Description = ""
    channels: Channels = []
    statuses: Statuses = []
    categories: Categories = []
    enabled: bool = True
    secret: Secret | None = None


class SubscriptionPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What to change; a field left out stays as it is. A disabled
    subscription keeps its place: its events wait and are sent once it is
    enabled again."""

    url: Url | None = None
    description: Description | None = None
    channels: Channels | None = None
    statuses: Statuses | None = None
    categories: Categories | None = None
    enabled: bool | None = None


class Subscription(msgspec.Struct, kw_only=True):
    """A subscription (its secret is never shown again)."""

    id: str
    url: str
    description: str
    channels: list[str]
    statuses: list[str]
    categories: list[str]
    enabled: bool
    created_by: str
    created_at: float
    updated_at: float
    # events the events stream dropped (events.max_age_s / max_msgs) before this
    # subscription read them: a subscriber that lagged that far behind
    lost_events: int = 0


class SubscriptionCreated(Subscription, kw_only=True):
    """A subscription just made, with its signing secret: shown this once."""

    secret: str


class SubscriptionSecret(msgspec.Struct):
    """A new signing secret, in use from now on: shown this once."""

    id: str
    secret: str


class SubscriptionPage(msgspec.Struct):
    """Subscriptions in id order; ``next``: the ``after`` of the next page (null on the last)."""

    subscriptions: list[Subscription]
    next: str | None


class DeadLetter(msgspec.Struct, kw_only=True):
    """An event the subscription's URL did not take, after every try."""

    event: StatusEvent
    attempts: int
    last_error: str  # the status or kind of failure (never the answer's body)
    dead_lettered_at: float


class DeadLetterPage(msgspec.Struct):
    """Dead letters, newest first; ``next_before``: the ``before`` of the next page (null on the last)."""

    dead_letters: list[DeadLetter]
    next_before: str | None


class Replaying(msgspec.Struct):
    """Dead letters being delivered again (each leaves the list once its URL takes it)."""

    taken: int


_new = msgspec.json.Decoder(NewSubscription)
_patch = msgspec.json.Decoder(SubscriptionPatch)


def _egress(request: web.Request) -> EgressPolicy:
    return EgressPolicy(parse_allow(request.app[ENGINE].cfg.events.egress_allow, "events.egress_allow"))


def _checked_url(request: web.Request, url: str) -> str:
    """``url`` if the SSRF guard lets it be a destination, else 422 naming it."""
    try:
        check_url(url, _egress(request), "url")
    except DeliveryError as e:
        raise Problem(422, "invalid subscription", [{"field": "url", "reason": str(e)}]) from None
    return url


def _view(s: store.Subscription) -> Subscription:
    f = s.filters
    return Subscription(id=s.id, url=s.url, description=s.description, channels=list(f.channels),
                        statuses=list(f.statuses), categories=list(f.categories), enabled=s.enabled,
                        created_by=s.created_by, created_at=s.created_at, updated_at=s.updated_at,
                        lost_events=s.lost_events)


# How long an answer waits for the EventSender to apply a change. Its refresh can take
# seconds on a busy machine (each removed hook gives its messages back, each consumer
# is one JetStream call); the change is committed already and the sender's own refresh
# every ``events.refresh_s`` applies it, so the caller is not held past this.
REFRESH_WAIT_S = 5.0


async def _refresh(request: web.Request) -> None:
    """Tell the EventSender now (else it sees the change within ``events.refresh_s``)."""
    sender = request.app[ENGINE].actors.events
    if sender is None:
        return
    try:
        told = asyncio.ensure_future(sender.refresh.remote())
    except Exception as e:  # noqa: BLE001 - committed; the sender's own refresh picks it up
        log.warning("event subscriptions: the sender was not told of a change (%s)", type(e).__name__)
        return
    _telling.add(told)
    told.add_done_callback(_settled)
    # asyncio.wait neither raises nor cancels: a refresh that failed quickly with a
    # TimeoutError of its own is reported as failed (by _settled), not as slow
    await asyncio.wait({told}, timeout=REFRESH_WAIT_S)
    if not told.done():
        log.info("event subscriptions: the sender is still applying a change; answering now")


# the refreshes nobody waits for any more, held until they end
_telling: set[asyncio.Future] = set()


def _settled(told: asyncio.Future[int]) -> None:
    """Report a refresh that failed, whether the answer waited for it or not."""
    _telling.discard(told)
    if not told.cancelled() and told.exception() is not None:
        log.warning("event subscriptions: the sender was not told of a change (%s)",
                    type(told.exception()).__name__)


async def _found(request: web.Request) -> store.Subscription:
    sid = str(path_uuid(request))
    async with request.app[ENGINE].pool.acquire() as conn:
        sub = await store.get(conn, sid)
    if sub is None:
        raise Problem(404, "not found", [{"field": "id", "reason": "no such subscription"}])
    return sub


async def create(request: web.Request) -> web.Response:
    """Subscribe a URL to status events.

    201 with the subscription and its signing secret (shown this once)."""
    engine = request.app[ENGINE]
    body = decode(_new, await read_json(request), "subscription")
    url = _checked_url(request, body.url)
    secret = body.secret or store.new_secret()
    filters = events.Filters(channels=tuple(body.channels), statuses=tuple(body.statuses),
                             categories=tuple(body.categories))
    async with engine.pool.acquire() as conn:
        sub = await store.create(conn, engine.ring, url, body.description, filters, body.enabled, secret,
                                 actor(request))
    await _refresh(request)
    return reply(SubscriptionCreated(**msgspec.structs.asdict(_view(sub)), secret=secret), 201)


async def listing(request: web.Request) -> web.Response:
    """Every subscription, a page at a time, in id order."""
    limit = query_int(request, "limit", 100, 1, 1000)
    after = request.query.get("after")
    if after is not None:
        try:
            after = str(uuid.UUID(after))
        except ValueError:
            raise Problem(400, "bad query", [{"field": "after", "reason": "expected a subscription id"}]) from None
    async with request.app[ENGINE].pool.acquire() as conn:
        subs = await store.every(conn, after, limit + 1)
    page = subs[:limit]
    return reply(SubscriptionPage([_view(s) for s in page], page[-1].id if len(subs) > limit else None))


async def get(request: web.Request) -> web.Response:
    """One subscription."""
    return reply(_view(await _found(request)))


async def change(request: web.Request) -> web.Response:
    """Change a subscription's URL, description, filters or whether it is enabled."""
    engine = request.app[ENGINE]
    sid = str(path_uuid(request))
    p = decode(_patch, await read_json(request), "subscription")
    if p.url is not None:
        _checked_url(request, p.url)
    filters = None
    if p.channels is not None or p.statuses is not None or p.categories is not None:
        async with engine.pool.acquire() as conn:
            old = await store.get(conn, sid)
        if old is None:
            raise Problem(404, "not found", [{"field": "id", "reason": "no such subscription"}])
        f = old.filters
        filters = events.Filters(
            channels=tuple(p.channels) if p.channels is not None else f.channels,
            statuses=tuple(p.statuses) if p.statuses is not None else f.statuses,
            categories=tuple(p.categories) if p.categories is not None else f.categories)
    async with engine.pool.acquire() as conn:
        sub = await store.update(conn, engine.ring, sid, url=p.url, description=p.description, filters=filters,
                                 enabled=p.enabled)
    if sub is None:
        raise Problem(404, "not found", [{"field": "id", "reason": "no such subscription"}])
    await _refresh(request)
    return reply(_view(sub))


async def rotate(request: web.Request) -> web.Response:
    """Give a subscription a new signing secret; the old one is no longer used.

    200 with the new secret (shown this once)."""
    engine = request.app[ENGINE]
    sid = str(path_uuid(request))
    secret = store.new_secret()
    async with engine.pool.acquire() as conn:
        sub = await store.update(conn, engine.ring, sid, secret=secret)
    if sub is None:
        raise Problem(404, "not found", [{"field": "id", "reason": "no such subscription"}])
    await _refresh(request)
    return reply(SubscriptionSecret(id=sid, secret=secret))


async def remove(request: web.Request) -> web.Response:
    """Delete a subscription, its dead letters and its place in the events stream."""
    engine = request.app[ENGINE]
    sid = str(path_uuid(request))
    async with engine.pool.acquire() as conn:
        gone = await store.delete(conn, sid)
    if not gone:
        raise Problem(404, "not found", [{"field": "id", "reason": "no such subscription"}])
    await _refresh(request)
    return web.Response(status=204)


async def dead_letters(request: web.Request) -> web.Response:
    """A subscription's dead letters, newest first, a page at a time."""
    sub = await _found(request)
    limit = query_int(request, "limit", 100, 1, 1000)
    before = request.query.get("before")
    if before is not None and not re.match(store.CURSOR, before):
        raise Problem(400, "bad query", [{"field": "before", "reason": "expected the next_before of a page"}])
    async with request.app[ENGINE].pool.acquire() as conn:
        letters = await store.dead_letters(conn, sub.id, limit + 1, before)
    page = letters[:limit]
    return reply(DeadLetterPage([DeadLetter(event=d.event, attempts=d.attempts, last_error=d.last_error,
                                            dead_lettered_at=d.dead_lettered_at) for d in page],
                                page[-1].cursor if len(letters) > limit else None))


async def replay(request: web.Request) -> web.Response:
    """Deliver a subscription's dead letters again (up to 1,000, oldest first).

    202 with how many were taken; 409 when the subscription is disabled,
    status events are off (nothing would deliver them), a replay of its
    dead letters is still running or its secret cannot be opened."""
    engine = request.app[ENGINE]
    sub = await _found(request)
    if not sub.enabled or engine.actors.events is None:
        raise Problem(409, "not delivering", [{"field": "id", "reason": "the subscription is disabled or status "
                                                                       "events are off (events.enabled)"}])
    await _refresh(request)
    taken = await engine.actors.events.replay.remote(sub.id)
    if isinstance(taken, str):
        raise Problem(409, "not replayed", [{"field": "id", "reason": taken}])
    return reply(Replaying(taken), 202)


TAGS = ("Event subscriptions",)
PATH, ONE = "/v1/event-subscriptions", "/v1/event-subscriptions/{id}"
ROUTES = [
    Route("POST", PATH, create, Scoped("subscriptions:write"), body=NewSubscription, tags=TAGS,
          answers={201: SubscriptionCreated},
          example={"url": "https://example.com/hooks/tidings", "statuses": ["sent", "delivered", "bounced"],
                   "channels": ["email"], "description": "order e-mails"},
          links=(Link("subscription", "GET", ONE, {"id": "$response.body#/id"}),
                 Link("dead_letters", "GET", ONE + "/dead-letters", {"id": "$response.body#/id"}))),
    Route("GET", PATH, listing, Scoped("subscriptions:read"), answers={200: SubscriptionPage}, tags=TAGS,
          query=(Param("limit", Annotated[int, Meta(ge=1, le=1000)], "Subscriptions per page (default 100)"),
                 Param("after", uuid.UUID, "The `next` of the page before"))),
    Route("GET", ONE, get, Scoped("subscriptions:read"), params=UUID_PATH, errors=(404,), tags=TAGS,
          answers={200: Subscription}),
    Route("PATCH", ONE, change, Scoped("subscriptions:write"), params=UUID_PATH, body=SubscriptionPatch,
          errors=(404,), tags=TAGS, answers={200: Subscription}, example={"enabled": False}),
    Route("DELETE", ONE, remove, Scoped("subscriptions:write"), params=UUID_PATH, errors=(404,), tags=TAGS,
          answers={204: None}),
    Route("POST", ONE + "/secret", rotate, Scoped("subscriptions:write"), params=UUID_PATH, errors=(404,),
          tags=TAGS, answers={200: SubscriptionSecret}),
    Route("GET", ONE + "/dead-letters", dead_letters, Scoped("subscriptions:read"), params=UUID_PATH,
          errors=(404,), tags=TAGS, answers={200: DeadLetterPage},
          query=(Param("limit", Annotated[int, Meta(ge=1, le=1000)], "Dead letters per page (default 100)"),
                 Param("before", Annotated[str, Meta(pattern=store.CURSOR)], "The `next_before` of the page before"))),
    Route("POST", ONE + "/dead-letters/replay", replay, Scoped("subscriptions:write"), params=UUID_PATH,
          errors=(404, 409), tags=TAGS, answers={202: Replaying}),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
