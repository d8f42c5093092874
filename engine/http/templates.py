"""HTTP routes for message templates: save a version of one (channel, locale)
part, read a template's parts and versions, preview a rendering."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Annotated

import msgspec
from aiohttp import web

from engine.http.access import Route, Scoped, actor, register
from engine.http.common import ENGINE, Problem, decode, read_json, reply
from policy.templating import Compiled, MessageTemplate, pick, render_error, syntax_errors
from policy.types import CHANNELS, Content
from stores import templates as template_store

_template = msgspec.json.Decoder(MessageTemplate)


class Preview(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    locale: str = "en"
    data: dict = {}
    version: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)] | None = None  # the column is int4


_preview = msgspec.json.Decoder(Preview)

# Previews compile and render in worker threads (a render may take its whole CPU
# budget, ``MAX_RENDER_SECONDS``, which the event loop must not wait through), at
# most this many at once: concurrent previews queue here, the API keeps answering.
# The budget is CPU time of the rendering thread, so it holds in a worker as well.
_RENDERING = asyncio.Semaphore(2)


async def save(request: web.Request) -> web.Response:
    """A new version of one part; 201 ``{"id", "version"}``. Every shard forgets
    what it compiled of the template."""
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
    return reply({"id": t.id, "channel": t.channel, "locale": t.locale, "version": version}, 201)


async def get(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    tid = request.match_info["id"]
    async with engine.pool.acquire() as conn:
        parts = await template_store.load(conn, tid)
        history = await template_store.versions(conn, tid)
    if not parts:
        raise Problem(404, "not found", [{"field": "id", "reason": f"no template {tid!r}"}])
    return reply({"id": tid, "parts": msgspec.to_builtins(parts), "versions": history})


async def preview(request: web.Request) -> web.Response:
    """Render without sending: 200 with the content, 422 with what went wrong."""
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
    return reply({"locale": template.locale, "version": template.version, "content": msgspec.to_builtins(content)})


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
    Route("POST", "/v1/templates", save, Scoped("templates:write")),
    Route("GET", "/v1/templates/{id}", get, Scoped("templates:read")),
    Route("POST", "/v1/templates/{id}/preview", preview, Scoped("templates:read")),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
