"""HTTP routes for preferences: the document with versions (ETag / If-Match),
the resolved view, the change feed, validation and templates. Every change goes
to the owning UserShard, which commits before it answers; the change is then
published on NATS (``<prefix>.prefs.changed.<user>``)."""

from __future__ import annotations

import asyncio
import time

import msgspec
from aiohttp import web

from actors.user_prefs import PrefCommand
from engine.http.access import Route, Scoped, actor, register
from engine.http.common import ENGINE, Problem, decode, path_user, query_int, read_json, reply
from engine.prefs_bus import run_commands
from engine.runtime import Engine
from policy import wire
from policy.prefs import ordered
from policy.rules import Template
from policy.types import UserId
from policy.validate import (
    PreferencesDoc,
    PreferencesPatch,
    TemplateId,
    data_errors,
    doc_errors,
    row_errors,
    rule_errors,
)
from stores import prefs as prefs_store

_doc = msgspec.json.Decoder(PreferencesDoc)
_patch = msgspec.json.Decoder(PreferencesPatch)
_template = msgspec.json.Decoder(Template)


class ApplyTemplate(msgspec.Struct, forbid_unknown_fields=True):
    """Whom a template applies to: listed users, or every user matching ``where``."""

    user_ids: list[UserId] = []
    where: dict[str, str] = {}  # locale / timezone equal to


_apply = msgspec.json.Decoder(ApplyTemplate)


def problems(errors) -> list[dict]:
    return [{"field": f, "reason": r} for f, r in errors]


def if_match(request: web.Request) -> int | None:
    """The version in ``If-Match`` (``"3"``, ``W/"3"`` or ``3``); ``*`` or none: no check."""
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    tag = raw.strip().removeprefix("W/").strip('"')
    # ASCII digits only ("²".isdigit() is true, and int() refuses it), and few
    # enough for a bigint version (int() also refuses past 4300 digits)
    if not (tag.isascii() and tag.isdigit() and len(tag) <= 18):
        raise Problem(400, "bad If-Match", [{"field": "If-Match", "reason": "expected a version such as \"3\""}])
    return int(tag)


def with_etag(doc: dict, status: int = 200) -> web.Response:
    resp = reply(doc, status)
    resp.headers["ETag"] = f'"{doc["version"]}"'
    return resp


async def get_doc(engine: Engine, user_id: str) -> dict:
    return wire.decode(await engine.shard_for(user_id).get_prefs.remote(user_id), dict)


async def get_prefs(request: web.Request) -> web.Response:
    return with_etag(await get_doc(request.app[ENGINE], path_user(request)))


async def change_prefs(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    user_id = path_user(request)
    body = await read_json(request)
    cmd = PrefCommand(user_id=user_id, if_match=if_match(request), actor=actor(request))
    if request.method == "PUT":
        cmd.put = decode(_doc, body, "preferences")
        rows, path = cmd.put.preferences, "preferences"
    else:
        cmd.patch = decode(_patch, body, "preferences patch")
        rows, path = cmd.patch.set, "set"
    # checked here, not only by the shard: data that cannot be encoded never reaches the Ray call
    custom = [e for i, p in enumerate(rows) if p.custom for e in data_errors(p.custom, f"{path}[{i}].custom")]
    if custom:
        raise Problem(422, "invalid preferences", problems(custom))
    (result,) = await run_commands(engine, [cmd])
    if result.status == "invalid":
        raise Problem(422, "invalid preferences", problems(result.errors))
    doc = await get_doc(engine, user_id)
    if result.status == "conflict":
        return _conflict(doc)
    return with_etag(doc)


def _conflict(doc: dict) -> web.Response:
    resp = reply({"error": "version conflict", "errors": [
        {"field": "If-Match", "reason": f"the preferences are at version {doc['version']}"}],
        "current_version": doc["version"], "current": doc}, 409)
    resp.headers["ETag"] = f'"{doc["version"]}"'
    return resp


async def effective(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    user_id = path_user(request)
    context = {k: v for k, v in request.query.items() if k in ("device", "location", "activity", "urgency")}
    return reply(wire.decode(await engine.shard_for(user_id).effective.remote(user_id, context), dict))


async def changes(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    user_id = path_user(request)
    since = query_int(request, "since", 0, 0, 2**62)
    limit = query_int(request, "limit", 500, 1, 5000)
    async with engine.pool.acquire() as conn:
        rows = await prefs_store.changes_since(conn, engine.ring, user_id, since, limit)
    return reply({"user_id": user_id, "since": since, "changes": rows,
                  "next": rows[-1]["version"] if rows else since})


async def validate(request: web.Request) -> web.Response:
    """Every violation of a preference document, checked as a whole set (rules
    included); 200 with ``valid`` and ``errors``. Nothing is stored."""
    engine = request.app[ENGINE]
    doc = decode(_doc, await read_json(request), "preferences")
    policy = engine.policy
    errors = doc_errors(doc, policy)
    chain = ()
    if doc.template:
        async with engine.pool.acquire() as conn:
            chain = await prefs_store.template_chain(conn, doc.template)
        if not chain:
            errors.append(("template", f"no template {doc.template!r}"))
    if not errors:
        errors = rule_errors(doc.preferences, chain, policy, time.time())
    return reply({"valid": not errors, "errors": problems(errors)})


# -- templates -----------------------------------------------------------------

async def save_template(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    t = decode(_template, await read_json(request), "template")
    errors = [("id", "letters, digits, '.', '_' and '-' only")] if not _valid_id(t.id) else []
    errors += row_errors(t.preferences, engine.policy)
    async with engine.pool.acquire() as conn:
        chain: tuple = ()
        if t.extends is not None:
            chain = await prefs_store.template_chain(conn, t.extends)
            if not chain:
                errors.append(("extends", f"no template {t.extends!r}"))
            elif t.id in {tid for tid, _ in chain}:
                errors.append(("extends", f"{t.extends!r} extends {t.id!r}: a cycle"))
        if not errors:  # a template on its own may not break a rule (its followers' rows are theirs)
            errors += rule_errors([], ((t.id, ordered(t.preferences)), *chain), engine.policy, time.time())
        if errors:
            raise Problem(422, "invalid template", problems(errors))
        version = await prefs_store.save_template(conn, t, actor(request))
    await asyncio.gather(*(s.templates_changed.remote() for s in engine.actors.user_shards))
    return reply({"id": t.id, "version": version}, 201)


def _valid_id(text: str) -> bool:
    try:
        msgspec.convert(text, TemplateId)
        return True
    except msgspec.ValidationError:
        return False


async def get_template(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    async with engine.pool.acquire() as conn:
        versions = await prefs_store.template_versions(conn, request.match_info["id"])
    if not versions:
        raise Problem(404, "not found", [{"field": "id", "reason": "no such template"}])
    latest = versions[-1]
    return reply({**msgspec.to_builtins(latest), "versions": [v.version for v in versions]})


async def apply_template(request: web.Request) -> web.Response:
    """Users follow the template from now on (a ``template`` change of each, with
    its version bump, audit row and change-feed entry)."""
    engine = request.app[ENGINE]
    tid = request.match_info["id"]
    target = decode(_apply, await read_json(request), "template target")
    bad = [k for k in target.where if k not in ("locale", "timezone")]
    if bad or (not target.user_ids and not target.where):
        raise Problem(422, "invalid template target", [{"field": f"where.{bad[0]}" if bad else "$",
                                                        "reason": "filter on locale or timezone" if bad else
                                                        "give user_ids or where"}])
    async with engine.pool.acquire() as conn:
        if not await prefs_store.template_chain(conn, tid):
            raise Problem(404, "not found", [{"field": "id", "reason": "no such template"}])
        users = list(target.user_ids)
        if target.where:
            clauses = " AND ".join(f"{k} = ${i + 1}" for i, k in enumerate(target.where))
            users += [r[0] for r in await conn.fetch(f"SELECT user_id FROM users WHERE {clauses}",
                                                     *target.where.values())]
    who = actor(request)
    applied, failed = 0, []
    for i in range(0, len(users), 1000):
        results = await run_commands(engine, [
            PrefCommand(user_id=u, patch=PreferencesPatch(template=tid), source="template", actor=who)
            for u in users[i:i + 1000]])
        applied += sum(r.status == "ok" for r in results)
        failed += [{"user_id": r.user_id, "errors": problems(r.errors)} for r in results if r.status != "ok"]
    return reply({"template": tid, "applied": applied, "failed": failed[:100]})


ROUTES = [
    Route("GET", "/v1/users/{user_id}/preferences", get_prefs, Scoped("preferences:read", user=True)),
    Route("PUT", "/v1/users/{user_id}/preferences", change_prefs, Scoped("preferences:write", user=True)),
    Route("PATCH", "/v1/users/{user_id}/preferences", change_prefs, Scoped("preferences:write", user=True)),
    Route("GET", "/v1/users/{user_id}/preferences/effective", effective, Scoped("preferences:read", user=True)),
    Route("GET", "/v1/users/{user_id}/preferences/changes", changes, Scoped("preferences:read")),
    Route("POST", "/v1/preferences/validate", validate, Scoped("preferences:read")),
    Route("POST", "/v1/preference-templates", save_template, Scoped("templates:write")),
    Route("GET", "/v1/preference-templates/{id}", get_template, Scoped("templates:read")),
    Route("POST", "/v1/preference-templates/{id}/apply", apply_template, Scoped("preferences:write")),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
