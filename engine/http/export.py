"""``GET /v1/users/{user_id}/export``: everything held about one person
(``stores/export.py``), for GDPR Art. 15 and 20 and CCPA:

- ``?format=jsonld`` (the default): one JSON-LD document, ``application/ld+json``,
  its context inline and described in ``docs/export.md``;
- ``?format=zip``: one CSV per kind of data and a README, ``application/zip``.

A key with ``users:read`` may export anyone; the person's own end-user token
exports themselves (self-service). Every export is written to the person's
audit chain (action ``gdpr.export``, who, which format) before it is answered.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import orjson
from aiohttp import web

from engine.http.access import Media, Param, Route, Scoped, actor, register
from engine.http.common import ENGINE, USER_PATH, Problem
from stores import audit, export

FORMATS = ("jsonld", "zip")

# The JSON-LD document's shape (stores/export.py ``as_jsonld``; its terms in docs/export.md): the
# profile's columns in ``subject``, each other section a list of rows with that section's columns.
_ROWS = {s.name: {"type": "array", "items": {"type": "object", "properties": {c: {} for c in s.columns}}}
         for s in export.SECTIONS if s.name != "profile"}
_PROFILE = next(s for s in export.SECTIONS if s.name == "profile")
JSONLD = {
    "type": "object",
    "description": "Everything held about the person, as JSON-LD (terms described in docs/export.md)",
    "required": ["@context", "@type", "@id", "generated_at", "subject", *_ROWS],
    "properties": {
        "@context": {"type": "object"},
        "@type": {"const": "PersonalDataExport"},
        "@id": {"type": "string"},
        "generated_at": {"type": "string", "description": "ISO 8601, UTC"},
        "subject": {"type": "object", "properties": {"@id": {"type": "string"}, "@type": {"type": "string"},
                                                     **{c: {} for c in _PROFILE.columns}}},
        **_ROWS,
    },
}


async def export_user(request: web.Request) -> web.Response:
    """Everything held about one person (GDPR Art. 15 and 20, CCPA), as JSON-LD or a ZIP of CSVs.

    Each export is written to the person's audit chain (``gdpr.export``) before
    it is answered."""
    engine = request.app[ENGINE]
    user_id = request.match_info["user_id"]
    fmt = request.query.get("format", "jsonld")
    if fmt not in FORMATS:
        raise Problem(400, "bad query", [{"field": "format", "reason": f"one of {', '.join(FORMATS)}"}])
    now = dt.datetime.now(dt.UTC)
    if request.method == "HEAD":  # no export made, none audited
        return web.Response(content_type="application/zip" if fmt == "zip" else "application/ld+json")
    async with engine.pool.acquire() as conn:
        sections = await export.collect(conn, engine.ring, user_id)
        if sections is None:
            raise Problem(404, "not found", [{"field": "user_id", "reason": "no such user"}])
        async with conn.transaction():
            # the user's row first: a chain's appends must not interleave (stores/audit.py)
            if await conn.fetchval("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", user_id) is None:
                raise Problem(404, "not found", [{"field": "user_id", "reason": "no such user"}])  # erased meanwhile
            await audit.append(conn, engine.ring, [audit.Entry(user_id, "gdpr.export", None, {"format": fmt},
                                                  actor=actor(request))])
    headers = {"Cache-Control": "no-store"}
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    if fmt == "zip":
        headers["Content-Disposition"] = f'attachment; filename="export-{stamp}.zip"'
        return web.Response(body=export.as_zip(sections, now), content_type="application/zip", headers=headers)
    body = orjson.dumps(export.as_jsonld(user_id, sections, now))
    return web.Response(body=body, content_type="application/ld+json", headers=headers)


ROUTES = [Route("GET", "/v1/users/{user_id}/export", export_user, Scoped("users:read", user=True),
                params=USER_PATH, errors=(404,),
                query=(Param("format", Literal["jsonld", "zip"], "JSON-LD (the default) or a ZIP of CSV files"),),
                answers={200: (Media("application/ld+json", JSONLD),
                               Media("application/zip", {"type": "string", "format": "binary"}))},
                headers={"Cache-Control": "no-store: personal data",
                         "Content-Disposition": "with format=zip: attachment; filename=\"export-<time>.zip\""})]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
