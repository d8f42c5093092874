"""The API's description: ``/openapi.json`` (OpenAPI 3.1, made from the routes
by engine/http/openapi.py) and ``/docs``, a Swagger UI page served from the
files the swagger-ui-py wheel bundles (no CDN: the page works offline and its
Content-Security-Policy allows scripts from this origin only)."""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import importlib.resources

import orjson
from aiohttp import web

from engine.http.access import ROUTES as REGISTERED, Media, Public, Route, register
from engine.http.common import ENGINE, Problem
from engine.http.openapi import document

# The document, made on the first request from the routes as registered (the
# holder is put in place while the app can still be changed)
DOCUMENT = web.AppKey("openapi", dict)

# The Swagger UI files the page loads, by the name it asks for (nothing else is served)
ASSETS = {
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui-standalone-preset.js": "application/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}

# The files carry the wheel's version in their URLs: after an upgrade a browser
# cannot mix a cached old bundle with the new page.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tidings API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css?v={v}"><link rel="icon" href="/docs/favicon-32x32.png?v={v}">
</head><body><div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js?v={v}"></script>
<script src="/docs/swagger-ui-standalone-preset.js?v={v}"></script>
<script src="/docs/init.js?v={v}"></script></body></html>
"""

# In a file of its own: the page's CSP allows no inline script. validatorUrl
# "none": Swagger UI would otherwise send the document's address to
# validator.swagger.io from any host but localhost.
INIT = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout",
  displayRequestDuration: true, persistAuthorization: false, validatorUrl: "none"});
"""

CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def version(package: str = "tidings") -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "0"


@functools.cache
def asset_bytes(name: str) -> bytes:
    """One of ``ASSETS``, read from the wheel once (the bundle is 1.5 MB)."""
    return (importlib.resources.files("swagger_ui") / "static" / name).read_bytes()


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this API."""
    held = request.app[DOCUMENT]
    if "body" not in held:
        ops_access = request.app[ENGINE].cfg.http.ops_access
        held["body"] = orjson.dumps(document(request.app[REGISTERED], version(), ops_access))
    return web.Response(body=held["body"], content_type="application/json", headers={"Cache-Control": "no-cache"})


async def page(request: web.Request) -> web.Response:
    """The API's documentation page (Swagger UI), for people."""
    return web.Response(text=PAGE.replace("{v}", version("swagger-ui-py")), content_type="text/html",
                        charset="utf-8", headers=PAGE_HEADERS)


async def asset(request: web.Request) -> web.Response:
    """A file of the documentation page."""
    name = request.match_info["name"]
    if name == "init.js":
        return web.Response(text=INIT, content_type="application/javascript", headers=PAGE_HEADERS)
    if name not in ASSETS:
        raise Problem(404, "not found", [{"field": "name", "reason": "no such file"}])
    data = await asyncio.to_thread(asset_bytes, name)  # off the loop the first time, cached after
    return web.Response(body=data, content_type=ASSETS[name],
                        headers={**PAGE_HEADERS, "Cache-Control": "public, max-age=86400"})


WHY = "describes the API; holds no data"
ROUTES = [
    Route("GET", "/openapi.json", openapi, Public(WHY), answers={200: Media("application/json", {"type": "object"})},
          tags=("docs",)),
    Route("GET", "/docs", page, Public(WHY), answers={200: Media("text/html", {"type": "string"})}, tags=("docs",)),
    Route("GET", "/docs/{name}", asset, Public(WHY), errors=(404,), tags=("docs",),
          answers={200: tuple(Media(t, {"type": "string"}) for t in dict.fromkeys(ASSETS.values()))}),
]


def add_routes(app: web.Application) -> None:
    app[DOCUMENT] = {}
    register(app, ROUTES)
