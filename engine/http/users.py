"""Users: profiles written through their owning UserShard (PostgreSQL first,
then its memory), read back as the shard holds them; suppressions."""

from __future__ import annotations

import asyncio
import zoneinfo
from typing import Annotated

import msgspec
from aiohttp import web

from engine.http.access import Route, Scoped, actor, register
from engine.http.common import ENGINE, Problem, decode, json_body, read_json, reply
from engine.http.errors import field_error
from engine.runtime import Engine, Refused
from policy import wire
from policy.email import is_address
from policy.sharding import shard_of
from policy.types import Address, Channel, UserProfile, UserState
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


async def put_user(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    user_id = request.match_info["user_id"]
    profile = profile_from(json_body(await read_json(request)), user_id, "$")
    await save_profiles(engine, [profile], actor(request))
    return await get_user(request)


async def put_users(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    data = json_body(await read_json(request))
    if not isinstance(data, list) or not data:
        raise Problem(422, "invalid users", [{"field": "$", "reason": "expected a non-empty array"}])
    if len(data) > engine.cfg.http.max_batch:
        raise Problem(422, "batch too large", [{"field": "$", "reason": f"at most {engine.cfg.http.max_batch}"}])
    profiles = [profile_from(d, None, f"$[{i}]") for i, d in enumerate(data)]
    await save_profiles(engine, profiles, actor(request))
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
    reason: Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,32}\Z")] = "manual"


_suppression = msgspec.json.Decoder(Suppression)


async def add_suppression(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    s = decode(_suppression, await read_json(request), "suppression")
    async with engine.pool.acquire() as conn:
        _, users = await user_store.suppress(conn, engine.ring, s.channel, s.address, s.reason, "api", replace=True)
    n = len(engine.actors.user_shards)
    await asyncio.gather(*(engine.actors.user_shards[shard_of(u, n)].reload.remote([u]) for u in users))
    return reply({"channel": s.channel, "address": s.address, "reason": s.reason, "users": users}, status=201)


ROUTES = [
    Route("PUT", "/v1/users/{user_id}", put_user, Scoped("users:write")),
    Route("GET", "/v1/users/{user_id}", get_user, Scoped("users:read")),
    Route("POST", "/v1/users", put_users, Scoped("users:write")),
    Route("POST", "/v1/suppressions", add_suppression, Scoped("suppressions:write")),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
