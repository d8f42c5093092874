"""Our own open pixel and click redirect (``[engagement]``, ``policy.links``):

- ``GET /v1/t/o/{token}.gif``: records "opened" (source ``pixel``) and always
  answers a 1x1 transparent GIF, never cached; a token that does not verify
  records nothing and gets the same GIF (a mail client shows no broken image);
- ``GET /v1/t/c/{token}``: records "clicked" (source ``link``) and answers 302
  to the URL the token signed; a token that does not verify is 404, so the
  route never redirects anywhere it did not sign.

An event is recorded as ``stores.engagement`` records a client's report: only
on a tracking row whose status says the channel was sent (``OPENABLE``), the
first of each type per notification and channel kept, a ``sent`` row moved to
``delivered``. A row not written yet (the Recorder writes in batches) or not
sent stores nothing; a click is redirected all the same. Off (404 for both)
while ``engagement.base_url`` is empty.
"""

from __future__ import annotations

import base64
import logging
import time

from aiohttp import web

from engine.http.access import Media, Public, Route, register
from engine.http.common import ENGINE
from policy import links
from stores import engagement
from stores.engagement import Engagement

log = logging.getLogger(__name__)

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")  # 1x1, transparent
NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache",
            "Expires": "0"}
ROW_SQL = "SELECT user_id, status FROM delivery_tracking WHERE notification_id = $1 AND channel = $2"


def _secret(request: web.Request) -> bytes | None:
    e = request.app[ENGINE].cfg.engagement
    return e.secret.encode() if e.base_url else None


async def _record(request: web.Request, link: links.Link, type_: str, source: str) -> bool:
    """Store the event if its row was sent; True when it was new."""
    pool = request.app[ENGINE].pool
    nid = link.notification_id
    async with pool.acquire() as conn:
        row = await conn.fetchrow(ROW_SQL, nid, link.channel)
        if row is None or row["status"] not in engagement.OPENABLE:
            return False
        event = Engagement(nid, row["user_id"], link.channel, type_, time.time(), source)
        new = await engagement.record(conn, [event])
    request.app[ENGINE].feed.add([event], new)
    return bool(new)


async def opened(request: web.Request) -> web.Response:
    """The open pixel: records the notification "opened" and answers a 1x1 transparent GIF.

    Always the GIF (never cached), also for a token that does not verify, which
    records nothing; 404 only while tracking is off (``engagement.base_url``
    empty)."""
    secret = _secret(request)
    if secret is None:
        raise web.HTTPNotFound()
    link = links.verify(secret, request.match_info["token"], "o")
    if link is not None:
        try:
            await _record(request, link, "opened", "pixel")
        except Exception:
            log.exception("open of %s on %s not recorded", link.notification_id, link.channel,
                          extra={"notification_id": link.notification_id})
    return web.Response(body=GIF, content_type="image/gif", headers=NO_CACHE)


async def clicked(request: web.Request) -> web.Response:
    """The click redirect: records the notification "clicked" and redirects (302) to the URL the token signed.

    A token that does not verify, or tracking off, is 404: the route never
    redirects anywhere it did not sign."""
    secret = _secret(request)
    link = None if secret is None else links.verify(secret, request.match_info["token"], "c")
    if link is None or not links.trackable(link.url):
        raise web.HTTPNotFound()
    try:
        await _record(request, link, "clicked", "link")
    except Exception:
        log.exception("click on %s on %s not recorded", link.notification_id, link.channel,
                      extra={"notification_id": link.notification_id})
    raise web.HTTPFound(link.url, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


ROUTES = [
    Route("GET", "/v1/t/o/{token}.gif", opened, Public("the signed link token is verified"),
          answers={200: Media("image/gif", {"type": "string", "contentMediaType": "image/gif"})}, errors=(404,)),
    Route("GET", "/v1/t/c/{token}", clicked, Public("the signed link token is verified"), answers={302: None},
          errors=(404,)),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)


__all__ = ["GIF", "add_routes", "clicked", "opened"]
