"""HTTP routes for message templates: save a version of one (channel, locale)
part, read a template's parts and versions, preview a rendering."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Annotated

import msgspec
from aiohttp import web

from engine.http.access import Link, Route, Scoped, actor, register
from engine.http.common import ENGINE, Problem, decode, read_json, reply
from policy.templating import Compiled, MessageTemplate, pick, render_error, syntax_errors
from policy.types import CHANNELS, Content
from stores import templates as template_store

_template = msgspec.json.Decoder(MessageTemplate)


class Preview(msgspec.Struct, forbid_unknown_fields=True):
    """What to render: the template's part for ``channel``, picked for ``locale``
    (then its language, then ``default``), with ``data``, as of ``version`` (the
    newest when left out)."""

    channel: Annotated[str, msgspec.Meta(examples=["email"])]
    locale: Annotated[str, msgspec.Meta(examples=["de-AT"])] = "en"
    data: Annotated[dict, msgspec.Meta(examples=[{"name": "Ada", "order": "8812"}])] = {}
    version: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)] | None = None  # the column is int4


class SavedTemplate(msgspec.Struct):
    """A part stored (201): the template, the part's channel and locale, and the version this save made."""

    id: str
    channel: str
    locale: str
    version: int


class TemplateVersion(msgspec.Struct):
    """One saved part: the version its save made, when (epoch seconds) and by whom (the key or user, if known)."""

    version: int
    channel: str
    locale: str
    created_at: float
    created_by: str | None


class TemplateDetail(msgspec.Struct):
    """A template: the newest version of each (channel, locale) part, and every save made."""

    id: str
    parts: list[MessageTemplate]
    versions: list[TemplateVersion]


class Rendered(msgspec.Struct):
    """A preview: the part that was picked (its locale and version) and the content it rendered."""

    locale: str
    version: int
    content: Content


_preview = msgspec.json.Decoder(Preview)

# Previews compile and render in worker threads (a render may take its whole CPU
# budget, ``MAX_RENDER_SECONDS``, which the event loop must not wait through), at
# most this many at once: concurrent previews queue here, the API keeps answering.
# The budget is CPU time of the rendering thread, so it holds in a worker as well.
_RENDERING = asyncio.Semaphore(2)


async def save(request: web.Request) -> web.Response:
    """Save a new version of one (channel, locale) part of a template.

    201 with the template id, the part's channel and locale and its new version.
    Every shard forgets what it compiled of the template."""
    engine = request.app[ENGINE]
    t = decode(_template, await read_json(request), "template")
    errors = syntax_errors(t)
    if t.channel not in CHANNELS:
        errors.append(("channel", f"unknown channel {t.channel!r}"))
    if errors:
        raise Problem(422, "invalid template", [{"field": f, "reason": r} for f, r in errors])
    async with engine.pool.acquire() as conn:
        version = await template_store.save(conn, t, actor(request))
    await asyncio.gather(*(s.message_templates_changed.remote(t.id) for s in engine.actors.user_shards))
    return reply(SavedTemplate(id=t.id, channel=t.channel, locale=t.locale, version=version), 201)


async def get(request: web.Request) -> web.Response:
    """A template's parts (the newest version of each) and its version history.

    404 when no part of the template was ever saved."""
    tid = request.match_info["id"]
    found = await detail(request.app[ENGINE], tid)
    if found is None:
        raise Problem(404, "not found", [{"field": "id", "reason": f"no template {tid!r}"}])
    return reply(found)


async def detail(engine, tid: str) -> TemplateDetail | None:
    """A template's newest parts and its saves; None when none was ever saved
    (the REST route and the GraphQL ``template`` field read it here)."""
    async with engine.pool.acquire() as conn:
        parts = await template_store.load(conn, tid)
        history = await template_store.versions(conn, tid)
    if not parts:
        return None
    return TemplateDetail(id=tid, parts=parts, versions=[TemplateVersion(**v) for v in history])


async def preview(request: web.Request) -> web.Response:
    """Render a template without sending it.

    200 with the content; 404 when the template has no part for the channel (at
    that version); 422 with what went wrong when rendering fails."""
    engine = request.app[ENGINE]
    tid = request.match_info["id"]
    p = decode(_preview, await read_json(request), "preview")
    async with engine.pool.acquire() as conn:
        parts = await template_store.load(conn, tid, p.version)
    templates = template_store.by_channel(parts).get(p.channel, {})
    async with _RENDERING:
        rendered = await asyncio.to_thread(_render, templates, p.locale, p.data)
    if rendered is None:
        raise Problem(404, "not found", [{"field": "channel", "reason": f"no template {tid!r} for {p.channel}"}])
    template, content = rendered
    if isinstance(content, str):
        raise Problem(422, "template error", [{"field": "data", "reason": content}])
    return reply(Rendered(locale=template.locale, version=template.version, content=content))


def _render(templates: Mapping[str, MessageTemplate], locale: str,
            data: dict) -> tuple[MessageTemplate, Content | str] | None:
    """In a worker thread: the template picked for ``locale`` among ``templates``
    (locale → template) and its rendering of ``data``, or why it failed; None when
    no template fits."""
    compiled = pick({loc: Compiled(t) for loc, t in templates.items()}, locale)
    if compiled is None:
        return None
    try:
        return compiled.template, compiled.render(data)
    except Exception as e:  # noqa: BLE001 - the template's error, answered
        return compiled.template, render_error(e)


ROUTES = [
    Route("POST", "/v1/templates", save, Scoped("templates:write"), body=MessageTemplate, answers={201: SavedTemplate},
          example={"id": "order-shipped", "channel": "email", "locale": "en", "subject": "Order {{ order }} shipped",
                   "text": "Hello {{ name }}, your order {{ order }} is on its way."},
          links=(Link("template", "GET", "/v1/templates/{id}", {"id": "$response.body#/id"}),
                 Link("preview", "POST", "/v1/templates/{id}/preview", {"id": "$response.body#/id"}))),
    Route("GET", "/v1/templates/{id}", get, Scoped("templates:read"), answers={200: TemplateDetail}, errors=(404,)),
    Route("POST", "/v1/templates/{id}/preview", preview, Scoped("templates:read"), body=Preview,
          answers={200: Rendered}, errors=(404,),
          example={"channel": "email", "locale": "en", "data": {"name": "Ada", "order": "8812"}}),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
