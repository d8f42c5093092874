"""Users: profiles written through their owning UserShard (PostgreSQL first,
then its memory), read back as the shard holds them; suppressions."""

from __future__ import annotations

import asyncio
import zoneinfo
from typing import Annotated

import asyncpg
import msgspec
from aiohttp import web

from engine.http.access import Link, Route, Scoped, actor, register
from engine.http.common import DB_BUSY, ENGINE, USER_PATH, Problem, busy, decode, json_body, read_json, reply
from engine.http.errors import field_error
from engine.runtime import Engine, Refused
from policy import wire
from policy.email import is_address
from policy.sharding import shard_of
from policy.types import Address, Channel, UserId, UserProfile, UserState
from stores import users as user_store


def profile_from(data, user_id: str | None, at: str) -> UserProfile:
    if not isinstance(data, dict):
        raise Problem(422, "invalid user", [{"field": at, "reason": "expected an object"}])
    if user_id is not None:
        if data.setdefault("user_id", user_id) != user_id:
            raise Problem(422, "invalid user", [{"field": f"{at}.user_id", "reason": "differs from the path"}])
    try:
        profile = msgspec.convert(data, UserProfile)
    except msgspec.ValidationError as e:
        raise Problem(422, "invalid user", [field_error(e, at)]) from None
    try:
        zoneinfo.ZoneInfo(profile.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise Problem(422, "invalid user", [{"field": f"{at}.timezone", "reason": f"unknown time zone {profile.timezone!r}"}]) from None
    email = profile.addresses.get("email")
    if email is not None and not is_address(email):
        raise Problem(422, "invalid user", [{"field": f"{at}.addresses.email", "reason": "not an email address"}])
    return profile


async def save_profiles(engine: Engine, profiles: list[UserProfile], actor: str | None) -> None:
    """``Engine.save_profiles``, a rule violation answered 422."""
    try:
        await engine.save_profiles(profiles, actor)
    except Refused as e:
        raise Problem(422, "invalid user", [{"field": f"{uid}.{field}", "reason": why}
                                            for uid, field, why in e.violations]) from None


class ProfileAtPath(UserProfile, kw_only=True, forbid_unknown_fields=True):
    """A user as a product registers it; ``user_id`` may be left out (it is the path's), and given must be the path's."""

    user_id: UserId | msgspec.UnsetType = msgspec.UNSET  # type: ignore[assignment]


class UserAnswer(msgspec.Struct):
    """A user as its shard holds it: addresses, opt-outs, preferences version, template, suppressions, zone, locale."""

    user_id: str
    addresses: dict[str, str]
    opt_outs: list[str]
    preferences_version: int
    template: str | None
    suppressed: dict[str, str]
    timezone: str
    locale: str


class Saved(msgspec.Struct):
    """How many profiles were saved."""

    saved: int


async def put_user(request: web.Request) -> web.Response:
    """Create or replace a user's profile.

    The body's ``user_id`` may be left out (the path's is taken); given, it must
    be the path's. Answers the user as now held."""
    engine = request.app[ENGINE]
    user_id = request.match_info["user_id"]
    profile = profile_from(json_body(await read_json(request)), user_id, "$")
    await save_profiles(engine, [profile], actor(request))
    return await get_user(request)


async def put_users(request: web.Request) -> web.Response:
    """Create or replace several users' profiles (at most ``http.max_batch``)."""
    engine = request.app[ENGINE]
    data = json_body(await read_json(request))
    if not isinstance(data, list) or not data:
        raise Problem(422, "invalid users", [{"field": "$", "reason": "expected a non-empty array"}])
    if len(data) > engine.cfg.http.max_batch:
        raise Problem(422, "batch too large", [{"field": "$", "reason": f"at most {engine.cfg.http.max_batch}"}])
    profiles = [profile_from(d, None, f"$[{i}]") for i, d in enumerate(data)]
    await save_profiles(engine, profiles, actor(request))
    return reply(Saved(saved=len(profiles)))


async def user_answer(engine: Engine, user_id: str) -> UserAnswer | None:
    """A user's profile as its owning shard holds it; None for no such user
    (the REST route and the GraphQL ``user`` field both read it here)."""
    found = await engine.shard_for(user_id).get_user.remote(user_id)
    if found is None:
        return None
    state = wire.decode(found, UserState)
    opt_outs = sorted(f"{p.channel}:{p.category}" for p in state.prefs
                      if p.enabled is False and p.content_type == "*" and not p.context)
    return UserAnswer(user_id=state.user_id, addresses=state.addresses, opt_outs=opt_outs,
                      preferences_version=state.version, template=state.template,
                      suppressed=state.suppressed, timezone=state.timezone, locale=state.locale)


async def get_user(request: web.Request) -> web.Response:
    """A user's profile as its shard holds it."""
    user_id = request.match_info["user_id"]
    answer = await user_answer(request.app[ENGINE], user_id)
    if answer is None:
        raise Problem(404, "not found", [{"field": "user_id", "reason": f"no user {user_id!r}"}])
    return reply(answer)


class Suppression(msgspec.Struct, forbid_unknown_fields=True):
    """An address that must not be used on a channel, and why (``bounce``, ``complaint``, ``manual``…)."""

    channel: Channel
    address: Address
    reason: Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,32}\Z")] = "manual"


_suppression = msgspec.json.Decoder(Suppression)


class Suppressed(msgspec.Struct):
    """The suppression as stored, and the users who had that address (their shards reloaded)."""

    channel: str
    address: str
    reason: str
    users: list[str]


async def add_suppression(request: web.Request) -> web.Response:
    """Suppress an address on a channel (a suppression already there takes the new reason)."""
    engine = request.app[ENGINE]
    s = decode(_suppression, await read_json(request), "suppression")
    try:
        async with engine.pool.acquire() as conn:
            _, users = await user_store.suppress(conn, engine.ring, s.channel, s.address, s.reason, "api",
                                                 replace=True)
    except (*DB_BUSY, asyncpg.exceptions.DeadlockDetectedError):  # device holders' rows are locked now
        raise busy() from None
    n = len(engine.actors.user_shards)
    await asyncio.gather(*(engine.actors.user_shards[shard_of(u, n)].reload.remote([u]) for u in users))
    return reply(Suppressed(channel=s.channel, address=s.address, reason=s.reason, users=users), status=201)


PROFILE = {"addresses": {"email": "ada@example.com", "sms": "+14155550101"}, "opt_outs": ["email:marketing"],
           "timezone": "Europe/London", "locale": "en-GB"}
ROUTES = [
    Route("PUT", "/v1/users/{user_id}", put_user, Scoped("users:write"), params=USER_PATH, body=ProfileAtPath,
          answers={200: UserAnswer}, errors=(404,), example=PROFILE, links=tuple(
              Link(name, method, path, {"user_id": "$request.path.user_id"}) for name, method, path in (
                  ("user", "GET", "/v1/users/{user_id}"),
                  ("preferences", "GET", "/v1/users/{user_id}/preferences"),
                  ("effective", "GET", "/v1/users/{user_id}/preferences/effective"),
                  ("changes", "GET", "/v1/users/{user_id}/preferences/changes"),
                  ("inbox", "GET", "/v1/users/{user_id}/inbox"),
                  ("export", "GET", "/v1/users/{user_id}/export"),
                  ("hold", "PUT", "/v1/users/{user_id}/legal-hold"),
                  ("erase", "DELETE", "/v1/users/{user_id}")))),
    Route("GET", "/v1/users/{user_id}", get_user, Scoped("users:read"), params=USER_PATH, errors=(404,),
          answers={200: UserAnswer}),
    Route("POST", "/v1/users", put_users, Scoped("users:write"),
          body=Annotated[list[UserProfile], msgspec.Meta(min_length=1)], answers={200: Saved}, example=[{"user_id": "u-1042", **PROFILE}]),
    Route("POST", "/v1/suppressions", add_suppression, Scoped("suppressions:write"), body=Suppression,
          answers={201: Suppressed}, example={"channel": "email", "address": "old@example.com", "reason": "manual"}),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
