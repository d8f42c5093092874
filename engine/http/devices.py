"""A user's devices (policy/devices.py): phones, tablets and browsers, each
registered by the app on it (the user's own end-user token, or a key with
``users:write``), written by the user's UserShard like the rest of their state.
A push then goes to each of them; a token the push service says is gone
removes that device only."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

import asyncpg
import msgspec
from aiohttp import web

from engine.http.access import Route, Scoped, actor, register
from engine.http.common import ENGINE, Problem, busy, db_busy, decode, path_param, path_user, read_json, reply
from policy import wire
from policy.devices import DEFAULT_KIND, DEFAULT_SERVICE
from policy.sharding import shard_of
from policy.types import Device, DeviceId, Platform, Service, UserId, UserState
from providers.errors import DeliveryError
from providers.webpush.provider import parse_subscription

log = logging.getLogger(__name__)

HEX = frozenset("0123456789abcdefABCDEF")
Kind = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_-]*\Z")]


class DeviceBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A device to register: its ``platform``; its ``token`` (APNs: the hex
    device token; FCM: the registration token) or, for a browser, its
    ``subscription`` (the PushSubscription's JSON, as ``toJSON()`` gives it);
    ``service`` when not the platform's usual one (an iOS app on FCM); the
    ``app`` it belongs to; its ``kind``, the ``device`` context its contextual
    preferences match (default ``mobile`` for phones, ``desktop`` for browsers)."""

    platform: Platform
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern=r"^[\x21-\x7e]+\Z")] | None = None
    subscription: dict[str, Any] | None = None
    service: Service | None = None
    app: Annotated[str, msgspec.Meta(max_length=128, pattern=r"^[A-Za-z0-9_.:-]*\Z")] = ""
    kind: Kind | None = None


class DeviceAnswer(msgspec.Struct):
    """A registered device as stored, without its token."""

    device_id: str
    service: str
    platform: str
    app: str
    kind: str
    last_seen: float


class Devices(msgspec.Struct):
    user_id: str
    devices: list[DeviceAnswer]


class Removed(msgspec.Struct):
    device_id: str
    removed: bool


_body = msgspec.json.Decoder(DeviceBody)
_encode = msgspec.json.Encoder(order="sorted").encode  # one subscription, one spelling: its blind finds it


def path_device(request: web.Request) -> str:
    return path_param(request, "device_id", DeviceId, "device id")


def device_from(body: DeviceBody, device_id: str, allow_http: bool = False) -> Device:
    """The device to store, its token checked for its service (422 naming the field)."""
    service = body.service or DEFAULT_SERVICE[body.platform]
    if service == "webpush":
        if body.subscription is None or body.token is not None:
            raise Problem(422, "invalid device", [{"field": "$.subscription",
                                                   "reason": "a browser gives its PushSubscription, not a token"}])
        token = _encode(body.subscription).decode()
        try:
            parse_subscription(token, allow_http=allow_http, now=time.time())
        except DeliveryError as e:
            raise Problem(422, "invalid device", [{"field": "$.subscription", "reason": str(e)}]) from None
        if len(token) > 4096:
            raise Problem(422, "invalid device", [{"field": "$.subscription", "reason": "longer than 4096 bytes"}])
    else:
        if body.token is None or body.subscription is not None:
            raise Problem(422, "invalid device", [{"field": "$.token", "reason": f"{service} needs a token "
                                                   "(and no subscription)"}])
        token = body.token
        if service == "apns":
            if not (64 <= len(token) <= 200 and set(token) <= HEX):
                raise Problem(422, "invalid device", [{"field": "$.token",
                                                       "reason": "an APNs device token is 64-200 hex digits"}])
            token = token.lower()  # one token, one spelling: its blind index finds it again
    return Device(device_id=device_id, service=service, token=token, platform=body.platform, app=body.app,
                  kind=body.kind or DEFAULT_KIND[body.platform], last_seen=time.time())


def web_allows_http(engine) -> bool:
    """Whether the web channel's provider takes ``http://`` endpoints (a loopback
    push service in a test): a subscription it would refuse on every send is
    refused here instead."""
    web_channel = engine.cfg.channels.get("web")
    return bool(web_channel and any(p.settings.get("allow_http") for p in web_channel.providers))


async def reload_elsewhere(engine, users: list[str]) -> None:
    """The users a moved token was taken from: their shards read them again (a
    held state would keep sending to the phone's new owner). Tried three times,
    whatever happens to the request meanwhile; a failure is logged."""
    n = len(engine.actors.user_shards)
    for attempt in range(3):
        try:
            await asyncio.gather(*(engine.actors.user_shards[shard_of(u, n)].reload.remote([u]) for u in users))
            return
        except Exception:  # noqa: BLE001 - Ray's errors are many; retried, then logged
            if attempt == 2:
                log.error("a moved device token: %d other user(s) not reloaded by their shards", len(users))
            else:
                await asyncio.sleep(0.5 * (attempt + 1))


async def put_device(request: web.Request) -> web.Response:
    """Register a device, or refresh it (its token, kind, last seen): the app on
    it calls this at every start. A token another user's device had moves to
    this one (a phone that changed hands)."""
    user_id, device_id = path_user(request), path_device(request)
    engine = request.app[ENGINE]
    device = device_from(decode(_body, await read_json(request), "device"), device_id, web_allows_http(engine))
    try:
        done = await engine.shard_for(user_id).put_device.remote(user_id, wire.encode(device), actor(request))
    except Exception as e:
        if db_busy(e) or isinstance(getattr(e, "cause", e), asyncpg.exceptions.DeadlockDetectedError):
            raise busy() from None
        raise
    if done is None:
        raise Problem(404, "not found", [{"field": "user_id", "reason": "no such user"}])
    if done["taken_from"]:
        await asyncio.shield(reload_elsewhere(engine, done["taken_from"]))
    return reply(answer(device))


async def delete_device(request: web.Request) -> web.Response:
    """Remove a device (signed out, uninstalled): pushes stop going to it."""
    user_id, device_id = path_user(request), path_device(request)
    engine = request.app[ENGINE]
    removed = await engine.shard_for(user_id).remove_device.remote(user_id, device_id, actor(request))
    return reply(Removed(device_id, bool(removed)))


async def list_devices(request: web.Request) -> web.Response:
    """A user's devices (their tokens are not shown)."""
    user_id = path_user(request)
    found = await request.app[ENGINE].shard_for(user_id).get_user.remote(user_id)
    if found is None:
        raise Problem(404, "not found", [{"field": "user_id", "reason": "no such user"}])
    state = wire.decode(found, UserState)
    return reply(Devices(user_id, [answer(d) for d in state.devices]))


def answer(d: Device) -> DeviceAnswer:
    return DeviceAnswer(d.device_id, d.service, d.platform, d.app, d.kind, round(d.last_seen, 3))


DEVICE_PATH = {"user_id": UserId, "device_id": DeviceId}
EXAMPLE = {"platform": "ios", "token": "a" * 64, "app": "com.example.jobs", "kind": "mobile"}
ROUTES = [
    Route("PUT", "/v1/users/{user_id}/devices/{device_id}", put_device, Scoped("users:write", user=True),
          params=DEVICE_PATH, body=DeviceBody, answers={200: DeviceAnswer}, errors=(404,), example=EXAMPLE),
    Route("DELETE", "/v1/users/{user_id}/devices/{device_id}", delete_device, Scoped("users:write", user=True),
          params=DEVICE_PATH, answers={200: Removed}),
    Route("GET", "/v1/users/{user_id}/devices", list_devices, Scoped("users:read", user=True),
          params={"user_id": UserId}, answers={200: Devices}, errors=(404,)),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)


__all__ = ["ROUTES", "add_routes"]
