"""Topics: who follows what. A product subscribes users (a key with
``topics:write``, one or many at once); a user may unsubscribe themselves and
read what they follow with their own end-user token; a broadcast with
``"audience": {"topic": …}`` reaches the subscribers (``policy.audience``).

A topic exists while it has subscribers; there is nothing to create first. Each
subscribe and unsubscribe is in the user's audit chain (``topic.subscribe``,
``topic.unsubscribe``) and in their export; erasing a user removes theirs."""

from __future__ import annotations

from typing import Annotated

import asyncpg
import msgspec
from aiohttp import web

from engine.auth import PRINCIPAL
from engine.http.access import Param, Route, Scoped, actor, forbidden, register
from engine.http.common import (
    DB_BUSY,
    ENGINE,
    Problem,
    busy,
    decode,
    path_param,
    path_user,
    query_after,
    query_int,
    read_json,
    reply,
)
from policy.audience import Name
from policy.types import UserId
from stores import topics as store

BULK = 10_000  # user ids per bulk call (add and remove together)
UNKNOWN_SHOWN = 100
TOPIC_PATH = {"topic_id": Name}
SUBSCRIBER_PATH = {"topic_id": Name, "user_id": UserId}


def path_topic(request: web.Request) -> str:
    return path_param(request, "topic_id", Name, "topic id")


class Subscription(msgspec.Struct):
    """One user's subscription to one topic, after the call: ``changed`` says whether the call changed it."""

    topic_id: str
    user_id: str
    subscribed: bool
    changed: bool


class Changes(msgspec.Struct, forbid_unknown_fields=True):
    """Users to subscribe (``add``) and unsubscribe (``remove``), at most 10,000 in all."""

    add: list[UserId] = []
    remove: list[UserId] = []


class Changed(msgspec.Struct):
    """How many were subscribed and unsubscribed (those already so are not
    counted), and the users ``add`` named that are not registered (the first
    100, and how many)."""

    topic_id: str
    added: int
    removed: int
    unknown: list[str]
    unknown_count: int


class Topic(msgspec.Struct):
    topic_id: str
    subscribers: int


class Subscriber(msgspec.Struct):
    user_id: str
    subscribed_at: float


class Subscribers(msgspec.Struct):
    """A page of subscribers in user id order; ``next``: the ``after`` of the next page (none: the last)."""

    topic_id: str
    subscribers: list[Subscriber]
    next: str | None


class FollowedTopic(msgspec.Struct):
    topic_id: str
    subscribed_at: float


class UserTopics(msgspec.Struct):
    user_id: str
    topics: list[FollowedTopic]


_changes = msgspec.json.Decoder(Changes)


async def changed(request: web.Request, topic: str, add: list[str],
                  remove: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``stores.topics.change`` in a transaction of its own; a lock wait or a
    deadlock past the database's timeouts is a 503 to retry."""
    engine = request.app[ENGINE]
    try:
        async with engine.pool.acquire() as conn, conn.transaction():
            return await store.change(conn, engine.ring, topic, add, remove, actor(request))
    except asyncpg.exceptions.DeadlockDetectedError:
        raise busy() from None
    except DB_BUSY:
        raise busy() from None


def may_join(request: web.Request, topic: str) -> None:
    """A user's own token joins only the topics ``topics.self_service`` opens
    to them: a topic is an audience a product addresses, and joining one brings
    messages meant for its members (403 naming the topic otherwise)."""
    p = request.get(PRINCIPAL)
    if p is not None and p.kind == "user":
        if not any(topic.startswith(prefix) for prefix in request.app[ENGINE].cfg.topics.self_service):
            raise forbidden(f"a user joins {topic!r} through the product (a key with topics:write); "
                            "topics.self_service lists those they may join themselves")


async def subscribe_one(request: web.Request) -> web.Response:
    """Subscribe a user to a topic (doing it again changes nothing). A user's
    own token may join the topics ``topics.self_service`` opens to them."""
    topic, user_id = path_topic(request), path_user(request)
    may_join(request, topic)
    added, _, unknown = await changed(request, topic, [user_id], [])
    if unknown:
        raise Problem(404, "not found", [{"field": "user_id", "reason": "no such user"}])
    return reply(Subscription(topic_id=topic, user_id=user_id, subscribed=True, changed=bool(added)))


async def unsubscribe_one(request: web.Request) -> web.Response:
    """Unsubscribe a user from a topic (one not subscribed stays so)."""
    topic, user_id = path_topic(request), path_user(request)
    _, removed, _ = await changed(request, topic, [], [user_id])
    return reply(Subscription(topic_id=topic, user_id=user_id, subscribed=False, changed=bool(removed)))


async def change_many(request: web.Request) -> web.Response:
    """Subscribe and unsubscribe many users in one transaction (unknown users are
    listed, not an error: the others are still subscribed)."""
    topic = path_topic(request)
    body = decode(_changes, await read_json(request), "subscriber changes")
    if not body.add and not body.remove:
        raise Problem(422, "invalid subscriber changes", [{"field": "$", "reason": "give add or remove"}])
    if len(body.add) + len(body.remove) > BULK:
        raise Problem(422, "batch too large", [{"field": "$", "reason": f"at most {BULK} users in add and remove"}])
    both = sorted(set(body.add) & set(body.remove))
    if both:
        raise Problem(422, "invalid subscriber changes", [{"field": "remove", "reason": f"{both[0]!r} is in add too"}])
    added, removed, unknown = await changed(request, topic, body.add, body.remove)
    return reply(Changed(topic_id=topic, added=len(added), removed=len(removed), unknown=unknown[:UNKNOWN_SHOWN],
                         unknown_count=len(unknown)))


async def get_topic(request: web.Request) -> web.Response:
    """A topic's subscriber count (0 for a topic nobody follows)."""
    topic = path_topic(request)
    async with request.app[ENGINE].pool.acquire() as conn:
        return reply(Topic(topic_id=topic, subscribers=await store.count(conn, topic)))


Limit = Annotated[int, msgspec.Meta(ge=1, le=1000)]


async def list_subscribers(request: web.Request) -> web.Response:
    """A topic's subscribers, a page at a time in user id order."""
    topic = path_topic(request)
    after = query_after(request, UserId)
    limit = query_int(request, "limit", 100, 1, 1000)
    async with request.app[ENGINE].pool.acquire() as conn:
        rows = await store.page(conn, topic, after, limit)
    return reply(Subscribers(topic_id=topic, subscribers=[Subscriber(u, t) for u, t in rows],
                             next=rows[-1][0] if len(rows) == limit else None))


async def user_topics(request: web.Request) -> web.Response:
    """The topics a user follows."""
    user_id = path_user(request)
    async with request.app[ENGINE].pool.acquire() as conn:
        rows = await store.of_user(conn, user_id)
    return reply(UserTopics(user_id=user_id, topics=[FollowedTopic(t, at) for t, at in rows]))


PAGE = (Param("after", UserId, "Subscribers after this user id (the previous page's next)"),
        Param("limit", Limit, "At most this many (default 100)"))
ROUTES = [
    # joining puts a user in an audience meant for someone: the product decides (a key), or
    # the topics.self_service prefixes; leaving one is the user's own choice (their token may)
    Route("PUT", "/v1/topics/{topic_id}/subscribers/{user_id}", subscribe_one, Scoped("topics:write", user=True),
          params=SUBSCRIBER_PATH, answers={200: Subscription}, errors=(404,)),
    Route("DELETE", "/v1/topics/{topic_id}/subscribers/{user_id}", unsubscribe_one,
          Scoped("topics:write", user=True), params=SUBSCRIBER_PATH, answers={200: Subscription}),
    Route("POST", "/v1/topics/{topic_id}/subscribers", change_many, Scoped("topics:write"), params=TOPIC_PATH,
          body=Changes, answers={200: Changed}, example={"add": ["u-1042", "u-1043"], "remove": ["u-977"]}),
    Route("GET", "/v1/topics/{topic_id}", get_topic, Scoped("topics:read"), params=TOPIC_PATH,
          answers={200: Topic}),
    Route("GET", "/v1/topics/{topic_id}/subscribers", list_subscribers, Scoped("topics:read"), params=TOPIC_PATH,
          query=PAGE, answers={200: Subscribers}),
    Route("GET", "/v1/users/{user_id}/topics", user_topics, Scoped("topics:read", user=True), params={
        "user_id": UserId}, answers={200: UserTopics}),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
