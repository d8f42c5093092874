"""One-click unsubscribe (RFC 8058), the target of every non-transactional
email's ``List-Unsubscribe`` (``policy.unsubscribe``):

- ``POST /u/{token}`` with the form field ``List-Unsubscribe=One-Click`` (what a
  mailbox provider sends, and the button of the page below): the person is opted
  out of that category on that channel inside the request, through their
  UserShard like any preference write (versioned, audited, actor
  ``unsubscribe:one-click``), and the answer is 200. Again for someone already
  out changes nothing and is 200 too. No cookie, no login: the sealed token is
  the credential.
- ``GET /u/{token}``: a page that asks, with a button that posts the form above.
  A GET never unsubscribes: mail scanners fetch links.

A token that does not open is 404; the pages say nothing about whose it was.
Off (404) while ``[engagement]`` has no base URL and secret.
"""

from __future__ import annotations

import jinja2
from aiohttp import web

from actors.user_links import unsubscribe_rules
from actors.user_prefs import PrefCommand
from engine import prefs_bus
from engine.http.access import Media, Public, Route, register
from engine.http.common import ENGINE
from policy import wire
from policy.prefs import Preference, narrower
from policy.types import UserState
from policy.unsubscribe import Target, open_token
from policy.validate import PreferencesPatch

FIELD, VALUE = "List-Unsubscribe", "One-Click"
ACTOR = "unsubscribe:one-click"

_pages = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
PAGE = _pages.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;line-height:1.5}
button{font-size:1rem;padding:.6rem 1.2rem}</style></head>
<body><main><h1>{{ title }}</h1><p>{{ text }}</p>
{% if form %}<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form>{% endif %}
</main></body></html>
""")


def page(status: int, title: str, text: str, form: bool = False) -> web.Response:
    return web.Response(status=status, content_type="text/html", charset="utf-8",
                        text=PAGE.render(title=title, text=text, form=form),
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def _target(request: web.Request) -> Target | None:
    rules = unsubscribe_rules(request.app[ENGINE].cfg)  # None: no links are made, none open
    return open_token(rules.secret, request.match_info["token"]) if rules is not None else None


NOT_FOUND = ("Link not valid", "This unsubscribe link is not valid. Use the link in the most recent message.")


async def confirm(request: web.Request) -> web.Response:
    """The unsubscribe page: asks, with a button that posts the one-click form.

    A GET never unsubscribes (mail scanners fetch links). A token that does not
    open is a 404 page, which says nothing about whose it was."""
    target = _target(request)
    if target is None:
        return page(404, *NOT_FOUND)
    return page(200, "Unsubscribe?", f"Stop getting {target.category.replace('_', ' ')} messages by "
                                     f"{target.channel}?", form=True)


def _patch(state: UserState, target: Target) -> PreferencesPatch | None:
    """The change that opts the person out for good, or None if they already are:
    a permanent ``enabled: false`` row for the channel and category, and none of
    their narrower rows for it left (``policy.prefs.narrower``). A temporary
    opt-out (``expires_at``) is made permanent."""
    specific = narrower(state.prefs, target.category, target.channel)
    own = Preference(channel=target.channel, category=target.category).key()
    if not specific and any(p.key() == own and p.enabled is False and p.expires_at is None for p in state.prefs):
        return None
    return PreferencesPatch(set=[Preference(channel=target.channel, category=target.category, enabled=False)],
                            remove=specific)


async def one_click(request: web.Request) -> web.Response:
    """One-click unsubscribe (RFC 8058): opts the person out of that category on that channel.

    The form carries ``List-Unsubscribe=One-Click`` (400 page otherwise). 200
    page when done, also when they were out already; 404 page for a token that
    does not open or a person erased since; 409 page when the category cannot
    be turned off there (mandatory)."""
    target = _target(request)
    if target is None:
        return page(404, *NOT_FOUND)
    try:
        form = await request.post()
    except (ValueError, LookupError):  # a multipart body without its boundary, an unknown charset
        return page(400, "Not understood", f"An unsubscribe request carries {FIELD}={VALUE}.")
    if form.get(FIELD) != VALUE:
        return page(400, "Not understood", f"An unsubscribe request carries {FIELD}={VALUE}.")
    engine = request.app[ENGINE]
    found = await engine.shard_for(target.user_id).get_user.remote(target.user_id)
    if found is None:  # erased since: nothing to opt out, and no user to create
        return page(404, *NOT_FOUND)
    done = page(200, "Unsubscribed", f"You will no longer get {target.category.replace('_', ' ')} messages by "
                                     f"{target.channel}.")
    patch = _patch(wire.decode(found, UserState), target)
    if patch is None:
        return done
    cmd = PrefCommand(user_id=target.user_id, source="unsubscribe", actor=ACTOR, patch=patch)
    result = (await prefs_bus.run_commands(engine, [cmd]))[0]
    if result.status == "ok":
        return done
    return page(409, "Cannot unsubscribe", "These messages cannot be turned off here"
                + (f": {result.errors[0][1]}" if result.errors else "."))


PAGE_MEDIA = Media("text/html", {"type": "string"})
# What one_click reads of the body (request.post(): a urlencoded or a multipart form): one field
FORM = {"type": "object", "properties": {FIELD: {"const": VALUE, "description": "RFC 8058's one-click field"}},
        "required": [FIELD]}
ROUTES = [
    Route("GET", "/u/{token}", confirm, Public("the sealed unsubscribe token is the credential"),
          answers={200: PAGE_MEDIA}, errors=(404,)),
    Route("POST", "/u/{token}", one_click, Public("RFC 8058 one-click: the sealed unsubscribe token is the credential"),
          body=(Media("application/x-www-form-urlencoded", FORM), Media("multipart/form-data", FORM)),
          answers={200: PAGE_MEDIA}, errors=(404, 409), example={FIELD: VALUE}),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)
