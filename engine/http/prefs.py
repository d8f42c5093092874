"""HTTP routes for preferences: the document with versions (ETag / If-Match),
the resolved view, the change feed, validation and templates. Every change goes
to the owning UserShard, which commits before it answers; the change is then
published on NATS (``<prefix>.prefs.changed.<user>``)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import msgspec
from aiohttp import web

from actors.user_prefs import PrefCommand
from engine import audiences
from engine.dry_runs import Busy
from engine.http.access import Link, Param, Route, Scoped, actor, register
from engine.http.common import ENGINE, USER_PATH, Problem, decode, path_user, query_int, read_json, reply
from engine.prefs_bus import run_commands
from engine.runtime import Engine
from policy import segments, wire
from policy.api import FieldError
from policy.audience import Audience
from policy.prefs import Preference, ordered
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
from policy.windows import Window
from stores import prefs as prefs_store

_doc = msgspec.json.Decoder(PreferencesDoc)
_patch = msgspec.json.Decoder(PreferencesPatch)
_template = msgspec.json.Decoder(Template)


class ApplyTemplate(msgspec.Struct, forbid_unknown_fields=True):
    """Whom a template applies to: listed users, every user matching ``where``
    (locale / timezone equal to), or every user in ``audience`` (a topic, a saved
    segment or a segment filter: ``policy.segments``); those of each given."""

    user_ids: list[UserId] = []
    where: dict[str, str] = {}
    audience: Audience | None = None


_apply = msgspec.json.Decoder(ApplyTemplate)


class PreferencesAnswer(msgspec.Struct):
    """A user's preference document: its version (also the ETag), rows, granted consent, zone and template."""

    user_id: str
    version: int
    preferences: list[Preference]
    consent: dict[str, str]  # the consent keys granted now ("sms", "sms:marketing"): "granted"
    timezone: str
    template: str | None


class PreferencesConflict(msgspec.Struct):
    """409: the ``If-Match`` version is not the current one; the current document comes with it."""

    error: str
    errors: list[FieldError]
    current_version: int
    current: PreferencesAnswer


class EffectiveRow(msgspec.Struct):
    """One (channel, category) resolved; ``why`` names the level each field came from."""

    channel: str
    category: str
    enabled: bool
    frequency: str
    quiet_hours: list[Window]
    time_windows: list[Window]
    custom: dict[str, Any] | None
    why: dict[str, str]


class EffectivePreferences(msgspec.Struct):
    """Every (channel, category) of a user resolved, for the context given in the query."""

    user_id: str
    version: int
    timezone: str
    effective: list[EffectiveRow]


class ChangeFeed(msgspec.Struct):
    """Changes after ``since``, oldest first, each its version, type, source, at and the document as changed."""

    user_id: str
    since: int
    changes: list[dict[str, Any]]
    next: int


class Validation(msgspec.Struct):
    """Whether the document is valid, and every violation."""

    valid: bool
    errors: list[FieldError]


class TemplateSaved(msgspec.Struct):
    """The template's id and the version this save made."""

    id: str
    version: int


class TemplateVersions(Template, kw_only=True):
    """A template's newest version, and every version it has had."""

    versions: list[int]


class ApplyFailed(msgspec.Struct):
    """A user the template could not be applied to, and why."""

    user_id: str
    errors: list[FieldError]


class Applied(msgspec.Struct):
    """How many users follow the template now; the first 100 that could not, with why."""

    template: str
    applied: int
    failed: list[ApplyFailed]


def problems(errors) -> list[dict]:
    return [{"field": f, "reason": r} for f, r in errors]


def field_errors(errors) -> list[FieldError]:
    return [FieldError(field=f, reason=r) for f, r in errors]


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


def with_etag(doc: PreferencesAnswer, status: int = 200) -> web.Response:
    resp = reply(doc, status)
    resp.headers["ETag"] = f'"{doc.version}"'
    return resp


async def get_doc(engine: Engine, user_id: str) -> PreferencesAnswer:
    return wire.decode(await engine.shard_for(user_id).get_prefs.remote(user_id), PreferencesAnswer)


async def get_prefs(request: web.Request) -> web.Response:
    """A user's preference document, with its version as the ``ETag``."""
    return with_etag(await get_doc(request.app[ENGINE], path_user(request)))


async def change_prefs(request: web.Request) -> web.Response:
    """Replace (PUT) or change (PATCH) a user's preferences.

    With ``If-Match`` (a version, as the ``ETag`` gave it), only if the document is
    still at that version (409 with the current one otherwise). Answers the new
    document, with its version as the ``ETag``."""
    engine = request.app[ENGINE]
    user_id = path_user(request)
    body = await read_json(request)
    cmd = PrefCommand(user_id=user_id, if_match=if_match(request), actor=actor(request))
    if request.method == "PUT":
        cmd.put = decode(_doc, body, "preferences")
    else:
        cmd.patch = decode(_patch, body, "preferences patch")
    doc, stale = await change(engine, cmd)
    return conflict(doc) if stale else with_etag(doc)


async def change(engine: Engine, cmd: PrefCommand) -> tuple[PreferencesAnswer, bool]:
    """Carry out one change (its ``put`` or its ``patch``) through the owning
    shard: the document after it, and whether ``if_match`` was stale (nothing
    changed then). A violation is a 422 naming the field. The REST routes and
    the GraphQL mutations both change preferences here."""
    rows, path = (cmd.put.preferences, "preferences") if cmd.put is not None else \
        (cmd.patch.set if cmd.patch is not None else [], "set")
    # checked here, not only by the shard: data that cannot be encoded never reaches the Ray call
    custom = [e for i, p in enumerate(rows) if p.custom for e in data_errors(p.custom, f"{path}[{i}].custom")]
    if custom:
        raise Problem(422, "invalid preferences", problems(custom))
    (result,) = await run_commands(engine, [cmd])
    if result.status == "invalid":
        raise Problem(422, "invalid preferences", problems(result.errors))
    return await get_doc(engine, cmd.user_id), result.status == "conflict"


def conflict(doc: PreferencesAnswer) -> web.Response:
    resp = reply(PreferencesConflict(error="version conflict", errors=[
        FieldError(field="If-Match", reason=f"the preferences are at version {doc.version}")],
        current_version=doc.version, current=doc), 409)
    resp.headers["ETag"] = f'"{doc.version}"'
    return resp


CONTEXT_QUERY = ("device", "location", "activity", "urgency")


async def effective(request: web.Request) -> web.Response:
    """Every (channel, category) of a user resolved, with the level each value came from.

    The query's ``device``, ``location``, ``activity`` and ``urgency`` are the
    context that contextual rows match."""
    user_id = path_user(request)
    context = {k: v for k, v in request.query.items() if k in CONTEXT_QUERY}
    return reply(await effective_of(request.app[ENGINE], user_id, context))


async def effective_of(engine: Engine, user_id: str, context: dict[str, str]) -> EffectivePreferences:
    """The owning shard's resolution of every (channel, category) of a user for
    ``context`` (keys of ``CONTEXT_QUERY``), each value with the level it came from."""
    return wire.decode(await engine.shard_for(user_id).effective.remote(user_id, context), EffectivePreferences)


async def changes(request: web.Request) -> web.Response:
    """A user's preference change feed: the changes after version ``since``, oldest first."""
    engine = request.app[ENGINE]
    user_id = path_user(request)
    since = query_int(request, "since", 0, 0, 2**62)
    limit = query_int(request, "limit", 500, 1, 5000)
    async with engine.pool.acquire() as conn:
        rows = await prefs_store.changes_since(conn, engine.ring, user_id, since, limit)
    return reply(ChangeFeed(user_id=user_id, since=since, changes=rows, next=rows[-1]["version"] if rows else since))


async def validate(request: web.Request) -> web.Response:
    """Check a preference document without storing it.

    Every violation of the document, checked as a whole set (rules included);
    200 with ``valid`` and ``errors``. Nothing is stored."""
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
    return reply(Validation(valid=not errors, errors=field_errors(errors)))


# -- templates -----------------------------------------------------------------

async def save_template(request: web.Request) -> web.Response:
    """Save a preference template as its next version.

    Its rows may break no rule on their own; ``extends`` names an existing
    template (no cycles). The users following it use the new version at once."""
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
    return reply(TemplateSaved(id=t.id, version=version), 201)


def _valid_id(text: str) -> bool:
    try:
        msgspec.convert(text, TemplateId)
        return True
    except msgspec.ValidationError:
        return False


async def get_template(request: web.Request) -> web.Response:
    """A preference template's newest version, and the list of its versions."""
    engine = request.app[ENGINE]
    async with engine.pool.acquire() as conn:
        versions = await prefs_store.template_versions(conn, request.match_info["id"])
    if not versions:
        raise Problem(404, "not found", [{"field": "id", "reason": "no such template"}])
    latest = versions[-1]
    return reply(TemplateVersions(**msgspec.structs.asdict(latest), versions=[v.version for v in versions]))


async def apply_template(request: web.Request) -> web.Response:
    """Make users follow a preference template.

    Users follow the template from now on (a ``template`` change of each, with
    its version bump, audit row and change-feed entry)."""
    engine = request.app[ENGINE]
    tid = request.match_info["id"]
    target = decode(_apply, await read_json(request), "template target")
    bad = [k for k in target.where if k not in ("locale", "timezone")]
    if bad or (not target.user_ids and not target.where and target.audience is None):
        raise Problem(422, "invalid template target", [{"field": f"where.{bad[0]}" if bad else "$",
                                                        "reason": "filter on locale or timezone" if bad else
                                                        "give user_ids, where or audience"}])
    audience = None
    if target.audience is not None:
        try:
            audience = await audiences.resolved(engine, target.audience, "$.audience")
        except segments.Invalid as e:
            raise Problem(422, "invalid template target", [{"field": p, "reason": r} for p, r in e.errors]) from None
        except audiences.UnknownSegment:
            raise Problem(422, "invalid template target", [{"field": "$.audience.segment",
                                                            "reason": "no such segment"}]) from None
    async with engine.pool.acquire() as conn:
        if not await prefs_store.template_chain(conn, tid):
            raise Problem(404, "not found", [{"field": "id", "reason": "no such template"}])
        users = list(target.user_ids)
        if target.where:
            clauses = " AND ".join(f"{k} = ${i + 1}" for i, k in enumerate(target.where))
            users += [r[0] for r in await conn.fetch(f"SELECT user_id FROM users WHERE {clauses}",
                                                     *target.where.values())]
    if audience is not None:
        try:
            users += await audiences.members(engine, audience)
        except audiences.TooMany:
            raise Problem(422, "invalid template target", [{"field": "$.audience", "reason": (
                f"more than {audiences.MOST_MEMBERS} users: narrow it, or import the template's users "
                "(POST /v1/preferences/import)")}]) from None
        except Busy:
            raise Problem(429, "busy", [{"field": "$.audience", "reason": "an audience count or dry run is running "
                                         "on this engine: try again when it has answered"}]) from None
        except TimeoutError:
            raise Problem(504, "took too long", [{"field": "$.audience",
                                                  "reason": "the shards did not answer in time"}]) from None
    users = list(dict.fromkeys(users))  # each once, in the order given
    who = actor(request)
    applied, failed = 0, []
    for i in range(0, len(users), 1000):
        results = await run_commands(engine, [
            PrefCommand(user_id=u, patch=PreferencesPatch(template=tid), source="template", actor=who)
            for u in users[i:i + 1000]])
        applied += sum(r.status == "ok" for r in results)
        failed += [ApplyFailed(user_id=r.user_id, errors=field_errors(r.errors)) for r in results if r.status != "ok"]
    return reply(Applied(template=tid, applied=applied, failed=failed[:100]))


TEMPLATE = {"id": TemplateId}
CONTEXT = tuple(Param(k, str, f"The {k} a contextual row may match") for k in CONTEXT_QUERY)
FEED = (Param("since", Annotated[int, msgspec.Meta(ge=0, le=2**62)], "Changes after this version (default 0)"),
        Param("limit", Annotated[int, msgspec.Meta(ge=1, le=5000)], "At most this many changes (default 500)"))
DOC = {"preferences": [{"channel": "email", "category": "marketing", "enabled": False},
                       {"channel": "sms", "quiet_hours": [{"start": "22:00", "end": "07:00"}]}],
       "consent": {"sms": "granted"}, "timezone": "Europe/London"}
PATCH = {"set": [{"channel": "email", "category": "product_updates", "frequency": "weekly"}],
         "remove": [{"channel": "email", "category": "marketing"}]}
ETAG = {"ETag": 'The document\'s version, quoted ("3"): send it back as If-Match'}
IF_MATCH = (Param("If-Match", str, 'Write only if the document is still at this version ("3", W/"3" or 3; * or '
                  "none: no check); otherwise 409 with the current document", where="header"),)
ROUTES = [
    Route("GET", "/v1/users/{user_id}/preferences", get_prefs, Scoped("preferences:read", user=True), params=USER_PATH,
          answers={200: PreferencesAnswer}, headers=ETAG),
    Route("PUT", "/v1/users/{user_id}/preferences", change_prefs, Scoped("preferences:write", user=True),
          params=USER_PATH, body=PreferencesDoc, answers={200: PreferencesAnswer, 409: PreferencesConflict},
          query=IF_MATCH, errors=(400,), headers=ETAG, example=DOC),
    Route("PATCH", "/v1/users/{user_id}/preferences", change_prefs, Scoped("preferences:write", user=True),
          params=USER_PATH, body=PreferencesPatch, answers={200: PreferencesAnswer, 409: PreferencesConflict},
          query=IF_MATCH, errors=(400,), headers=ETAG, example=PATCH),
    Route("GET", "/v1/users/{user_id}/preferences/effective", effective, Scoped("preferences:read", user=True),
          params=USER_PATH, query=CONTEXT, answers={200: EffectivePreferences}),
    Route("GET", "/v1/users/{user_id}/preferences/changes", changes, Scoped("preferences:read"), params=USER_PATH,
          query=FEED, answers={200: ChangeFeed}),
    Route("POST", "/v1/preferences/validate", validate, Scoped("preferences:read"), body=PreferencesDoc,
          answers={200: Validation}, example=DOC),
    Route("POST", "/v1/preference-templates", save_template, Scoped("templates:write"), body=Template,
          answers={201: TemplateSaved}, example={"id": "quiet-nights", "name": "Quiet nights", "preferences": [
              {"channel": "sms", "quiet_hours": [{"start": "21:00", "end": "08:00"}]}]},
          links=(Link("template", "GET", "/v1/preference-templates/{id}", {"id": "$response.body#/id"}),
                 Link("apply", "POST", "/v1/preference-templates/{id}/apply", {"id": "$response.body#/id"}))),
    Route("GET", "/v1/preference-templates/{id}", get_template, Scoped("templates:read"), params=TEMPLATE,
          errors=(404,), answers={200: TemplateVersions}),
    Route("POST", "/v1/preference-templates/{id}/apply", apply_template, Scoped("preferences:write"),
          params=TEMPLATE, body=ApplyTemplate, errors=(404,), answers={200: Applied},
          example={"user_ids": ["u-1042", "u-1043"]}),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
