"""The GraphQL schema: queries, mutations and subscriptions over the same code
the REST routes run (one path to PostgreSQL and to the UserShards: every
resolver calls the function its REST twin calls, and checks the policy that
twin declares, engine/http/graphql/auth.py). Inputs that REST takes as JSON
bodies (a preference patch, a notification) come as the ``JSON`` scalar and are
decoded by the same msgspec decoders, so their errors name the same fields.

Subscriptions:

- ``notificationStatus(id)``: the notification's outcome each time a channel's
  status, reason or attempts change, read by the same store read as
  ``GET /v1/notifications/{id}`` whenever a status event of the notification
  arrives on NATS (engine/http/status_watch.py) and at least every ``POLL_S``
  (events off, or one missed), until no channel waits (none is ``deferred``
  or ``digested``) or ``WATCH_S`` has passed. A provider's later receipt
  (delivered, bounced) is read with the ``notification`` query.
- ``inbox(userId, after)``: the user's inbox messages after ``after`` then each
  new one, from the same feed as the inbox WebSocket (``InboxStream``: the
  backlog from PostgreSQL, live events from NATS, each seq once, in order),
  with one ``synced`` event when the backlog is through."""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator
from enum import Enum
from typing import Annotated, Any

import msgspec
import orjson
import strawberry
from strawberry.types import Info

from actors.user_prefs import PrefCommand
from engine.http import analytics, notifications, prefs, templates, users
from engine.http.common import Problem, unprintable
from engine.http.errors import all_violations
from engine.http.graphql.auth import allow, engine_of, principal_of
from engine.http.graphql.types import JSON, object_type
from engine.http.inbox import InboxStream, end_feed, start_feed
from engine.http.status_watch import status_watch
from policy.api import Accepted, Cancellation, NotificationStatus
from policy.types import NotificationRequest, UserId
from policy.validate import PreferencesDoc, PreferencesPatch
from providers.inapp.messages import InboxMessage

POLL_S = 5.0  # notificationStatus reads the outcome at least this often (status events wake it sooner)
WATCH_S = 3600.0  # a notificationStatus subscription ends after this long, settled or not
WAITING = frozenset({"deferred", "digested"})  # statuses that will change again without a provider's word
INBOX_BUFFER = 100  # inbox frames waiting for one subscription; the feed waits beyond (back-pressure)


@strawberry.type(description="Where one value of an effective preference came from: its field and the level "
                             "(contextual, content, category, channel, global, a template, or builtin).")
class ValueSource:
    field: str
    level: str


def _why(root: strawberry.Parent[Any]) -> list[ValueSource]:
    return [ValueSource(field=f, level=level) for f, level in root.why.items()]


class InboxItem(InboxMessage, kw_only=True):
    """One inbox message: its seq, notification, category, title, body, data, priority, and when it was
    created, seen and read (epoch seconds)."""

    data: Any


User = object_type(users.UserAnswer, "User")
Preferences = object_type(prefs.PreferencesAnswer, "Preferences")
EffectiveRow = object_type(prefs.EffectiveRow, why=strawberry.field(
    resolver=_why, description="The level each value came from"))
Effective = object_type(prefs.EffectivePreferences)
Notification = object_type(NotificationStatus, "Notification",
                           "A notification's outcome on each channel, with its timeline")
TemplatePart = object_type(templates.MessageTemplate, "TemplatePart")
Template = object_type(templates.TemplateDetail, "Template")
ChannelReport = object_type(analytics.ChannelReport)
AcceptedType = object_type(Accepted)
CancellationType = object_type(Cancellation)
InboxMessageType = object_type(InboxItem, "InboxMessage")


@strawberry.type(description="An inbox subscription's event: a message, or (once, after the backlog) synced with "
                             "the last seq sent so far.")
class InboxEvent:
    type: str
    message: InboxMessageType | None = None
    next: int | None = None


@strawberry.input(description="The context contextual preference rows may match.")
class PreferenceContext:
    device: str | None = None
    location: str | None = None
    activity: str | None = None
    urgency: str | None = None


@strawberry.enum(description="A consent's status.")
class ConsentStatus(Enum):
    GRANTED = "granted"
    WITHDRAWN = "withdrawn"


def user_of(text: str, field: str = "userId") -> str:
    """A user id argument, or the 422 REST answers for a bad ``{user_id}``."""
    try:
        return msgspec.convert(text, UserId)
    except msgspec.ValidationError as e:
        raise Problem(422, "invalid user id", [{"field": field, "reason": str(e)}]) from None


def uuid_of(text: str, field: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise Problem(400, "bad id", [{"field": field, "reason": f"{text[:64]!r} is not a UUID"}]) from None


def decoded(value: Any, typ: type, what: str, field: str) -> Any:
    """A JSON argument decoded as REST decodes the body (the same Struct, the
    same violations, their paths under the argument's name)."""
    try:
        body = orjson.dumps(value)
    except orjson.JSONEncodeError as e:  # an integer past 64 bits, say
        raise Problem(422, f"invalid {what}", [{"field": field, "reason": str(e)}]) from None
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as e:
        errors = [{**v, "field": field + v["field"][1:]} for v in all_violations(body, typ, e)]
        raise Problem(422, f"invalid {what}", errors) from None


def actor_of(info: Info) -> str:
    """Who the audit log names, as access.actor says for REST."""
    p = principal_of(info)
    return p.label if p is not None else "anonymous(auth off)"


async def _change(info: Info, user_id: str, cmd: PrefCommand) -> Any:
    doc, conflict = await prefs.change(engine_of(info), cmd)
    if conflict:
        raise Problem(409, "version conflict", [{"field": "ifMatch",
                                                  "reason": f"the preferences are at version {doc.version}"}])
    return doc


@strawberry.type
class Query:
    @strawberry.field(description="A user's profile as its shard holds it (GET /v1/users/{user_id}); null if none.")
    async def user(self, info: Info, id: str) -> User | None:
        user_id = user_of(id, "id")
        allow(info, "GET", "/v1/users/{user_id}", user_id)
        return await users.user_answer(engine_of(info), user_id)

    @strawberry.field(description="A user's preference document (GET /v1/users/{user_id}/preferences).")
    async def preferences(self, info: Info, user_id: str) -> Preferences:
        user_id = user_of(user_id)
        allow(info, "GET", "/v1/users/{user_id}/preferences", user_id)
        return await prefs.get_doc(engine_of(info), user_id)

    @strawberry.field(description="Every (channel, category) of a user resolved for the context, with the level "
                                  "each value came from (GET /v1/users/{user_id}/preferences/effective).")
    async def effective_preferences(self, info: Info, user_id: str,
                                    context: PreferenceContext | None = None) -> Effective:
        user_id = user_of(user_id)
        allow(info, "GET", "/v1/users/{user_id}/preferences/effective", user_id)
        ctx = {k: v for k, v in vars(context).items() if v is not None} if context is not None else {}
        bad = [k for k, v in ctx.items() if unprintable(v)]
        if bad:
            raise Problem(400, "bad query", [{"field": f"context.{bad[0]}", "reason": "control characters or too long"}])
        return await prefs.effective_of(engine_of(info), user_id, ctx)

    @strawberry.field(description="A notification's outcome on each channel with its timeline "
                                  "(GET /v1/notifications/{id}); null until the first is recorded.")
    async def notification(self, info: Info, id: strawberry.ID) -> Notification | None:
        nid = uuid_of(str(id))
        allow(info, "GET", "/v1/notifications/{id}")
        return await notifications.outcomes(engine_of(info).pool, nid)

    @strawberry.field(description="A message template's newest parts and its saves (GET /v1/templates/{id}); "
                                  "null if none.")
    async def template(self, info: Info, id: str) -> Template | None:
        if unprintable(id):
            raise Problem(400, "bad id", [{"field": "id", "reason": "control characters or too long"}])
        allow(info, "GET", "/v1/templates/{id}")
        return await templates.detail(engine_of(info), id)

    @strawberry.field(description="Channel performance over [from, to) (GET /v1/analytics/channels): times are "
                                  "epoch seconds or ISO 8601; bucket minute, hour or day.")
    async def channel_analytics(self, info: Info, from_: Annotated[str | None, strawberry.argument(name="from")] = None,
                                to: str | None = None, bucket: str | None = None,
                                channel: str | None = None) -> ChannelReport:
        allow(info, "GET", "/v1/analytics/channels")
        return await analytics.report(engine_of(info), from_, to, bucket, channel)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Change a user's preferences: a patch as PATCH /v1/users/{user_id}/preferences "
                                     "takes (set, remove, consent, timezone, template); with ifMatch, only if the "
                                     "document is still at that version (a 409 error otherwise).")
    async def update_preferences(self, info: Info, user_id: str, patch: JSON,
                                 if_match: int | None = None) -> Preferences:
        user_id = user_of(user_id)
        allow(info, "PATCH", "/v1/users/{user_id}/preferences", user_id)
        cmd = PrefCommand(user_id=user_id, if_match=if_match, actor=actor_of(info),
                          patch=decoded(patch, PreferencesPatch, "preferences patch", "patch"))
        return await _change(info, user_id, cmd)

    @strawberry.mutation(description="Replace a user's preferences with a document as PUT "
                                     "/v1/users/{user_id}/preferences takes.")
    async def replace_preferences(self, info: Info, user_id: str, document: JSON,
                                  if_match: int | None = None) -> Preferences:
        user_id = user_of(user_id)
        allow(info, "PUT", "/v1/users/{user_id}/preferences", user_id)
        cmd = PrefCommand(user_id=user_id, if_match=if_match, actor=actor_of(info),
                          put=decoded(document, PreferencesDoc, "preferences", "document"))
        return await _change(info, user_id, cmd)

    @strawberry.mutation(description="Grant or withdraw a consent (key \"sms\" for every purpose, or "
                                     "\"sms:marketing\"), as a preferences patch of its consent.")
    async def set_consent(self, info: Info, user_id: str, key: str,
                          status: ConsentStatus) -> Preferences:
        user_id = user_of(user_id)
        allow(info, "PATCH", "/v1/users/{user_id}/preferences", user_id)
        patch = decoded({"consent": {key: status.value}}, PreferencesPatch, "consent", "$")
        return await _change(info, user_id, PrefCommand(user_id=user_id, patch=patch, actor=actor_of(info)))

    @strawberry.mutation(description="Submit a notification as POST /v1/notifications takes it; answered once "
                                     "JetStream holds it.")
    async def send(self, info: Info, notification: JSON) -> AcceptedType:
        allow(info, "POST", "/v1/notifications")
        req = decoded(notification, NotificationRequest, "notification", "notification")
        (accepted,) = await notifications.accept(engine_of(info), principal_of(info), [req], False)
        return accepted

    @strawberry.mutation(description="Cancel a notification's channels still held, as DELETE "
                                     "/v1/notifications/{id} does (its 404 and 409 as errors).")
    async def cancel(self, info: Info, id: strawberry.ID) -> CancellationType:
        nid = uuid_of(str(id))
        allow(info, "DELETE", "/v1/notifications/{id}")
        return await notifications.cancellation(engine_of(info), nid)


def _seen(status: NotificationStatus) -> tuple:
    return tuple((c.channel, c.status, c.reason, c.attempts) for c in status.channels)


@strawberry.type
class Subscription:
    @strawberry.subscription(description="A notification's outcome each time a channel's status changes, until no "
                                         "channel waits (deferred, digested) or an hour has passed.")
    async def notification_status(self, info: Info, id: strawberry.ID) -> AsyncGenerator[Notification, None]:
        nid = uuid_of(str(id))
        allow(info, "GET", "/v1/notifications/{id}")
        engine = engine_of(info)
        last: tuple | None = None
        deadline = time.monotonic() + WATCH_S
        async with status_watch(engine).watching(str(nid)) as woke:
            while True:
                woke.clear()  # before the read: an event during it wakes the next wait at once
                found = await notifications.outcomes(engine.pool, nid)
                if found is not None and _seen(found) != last:
                    last = _seen(found)
                    yield found
                if found is not None and not any(c.status in WAITING for c in found.channels):
                    return
                if time.monotonic() > deadline:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woke.wait(), POLL_S)

    @strawberry.subscription(description="A user's inbox: the messages after `after`, one synced event, then each new "
                                         "message as it comes (as the inbox WebSocket).")
    async def inbox(self, info: Info, user_id: str, after: int = 0) -> AsyncGenerator[InboxEvent, None]:
        user_id = user_of(user_id)
        if after < 0:
            raise Problem(400, "bad query", [{"field": "after", "reason": "expected a seq of 0 or more"}])
        allow(info, "GET", "/v1/users/{user_id}/inbox/ws", user_id)
        engine = engine_of(info)
        frames: asyncio.Queue[bytes | None] = asyncio.Queue(INBOX_BUFFER)

        async def stop() -> None:
            await frames.put(None)

        stream = InboxStream(frames.put, stop, engine.pool, user_id, after)
        try:
            sub, forwarder = await start_feed(engine, stream)
        except Exception:  # noqa: BLE001 - NATS unavailable: the client subscribes again
            raise Problem(503, "inbox unavailable", [{"field": "$", "reason": "live updates unavailable; "
                                                      "subscribe again"}]) from None
        try:
            while (frame := await frames.get()) is not None:
                event = orjson.loads(frame)
                if event["type"] == "message":
                    yield InboxEvent(type="message", message=msgspec.convert(event["message"], InboxItem))
                else:
                    yield InboxEvent(type=event["type"], next=event.get("next"))
            raise Problem(503, "inbox unavailable", [{"field": "$", "reason": "the inbox could not be read; "
                                                      "subscribe again with after=<the last seq>"}])
        finally:
            await end_feed(sub, forwarder)


__all__ = ["POLL_S", "WATCH_S", "Mutation", "Query", "Subscription"]
