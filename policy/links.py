"""Our own open pixel and click redirect for HTML email: signed link tokens and
the rewrite of a message's HTML.

A token is ``base64url(payload) + base64url(mac)``, unpadded; the payload is a
MessagePack array (kind, notification id as 16 bytes, channel, url), the mac
the first 16 bytes of HMAC-SHA256 over the payload under the configured secret
(always 22 characters). The kind is signed, so an open token is never a valid
click token, and the target URL is signed, so the redirect is never open.
Tokens do not expire: an email stays in a mailbox, and its links must work.

``rewrite`` adds a 1x1 pixel ``{base}/v1/t/o/{token}.gif`` before the last
``</body>`` (else at the end) and points every ``<a href>`` whose URL is http(s)
at ``{base}/v1/t/c/{token}``; other links (mailto:, tel:, ``#anchor``, relative
ones) and the URLs in ``keep`` (the List-Unsubscribe targets) are left as they
are. Only the href values change: the rest of the HTML comes back byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import uuid
from collections.abc import Collection
from html.parser import HTMLParser
from typing import Literal

import msgspec

from policy.email import fill
from policy.types import DeliveryTask

Kind = Literal["o", "c"]  # opened (pixel), clicked (redirect)
MAC_BYTES = 16  # 128 bits of HMAC-SHA256: forging one is 2^128 guesses, each a request
MAC_CHARS = 22  # base64url of MAC_BYTES, unpadded
DOMAIN = b"tidings.link.v1\x00"  # a key shared with another use never signs the same bytes

# One attribute of a start tag, as html.parser reads them: a name, then an
# optional value, double-, single- or un-quoted. Group 3/4/5 hold the value.
ATTR = re.compile(r"""([^\s/>=][^\s/>=]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]*)))?""")
URL_UNSAFE = re.compile(r"[\x00-\x20\x7f]")  # kept out of a redirect's Location


class Link(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """What a token carries."""

    kind: Kind
    nid: bytes  # the notification id, 16 bytes
    channel: str
    url: str = ""  # clicks only

    @property
    def notification_id(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.nid)


_encode = msgspec.msgpack.Encoder()
_decode = msgspec.msgpack.Decoder(Link)


def b64url(data: bytes) -> str:
    """Base64url without padding (what a URL path segment carries)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, DOMAIN + payload, hashlib.sha256).digest()[:MAC_BYTES]


def sign(secret: bytes, kind: Kind, notification_id: str | uuid.UUID, channel: str, url: str = "") -> str:
    """The token of an open (``"o"``) or of a click (``"c"``) on ``url``."""
    nid = notification_id if isinstance(notification_id, uuid.UUID) else uuid.UUID(notification_id)
    payload = _encode.encode(Link(kind, nid.bytes, channel, url))
    return b64url(payload) + b64url(_mac(secret, payload))


def verify(secret: bytes, token: str, kind: Kind) -> Link | None:
    """The Link of a token signed with ``secret`` for ``kind``; None for anything
    else (tampered, another key, another kind, not a token at all)."""
    if len(token) <= MAC_CHARS or not token.isascii():
        return None
    body, mac = token[:-MAC_CHARS], token[-MAC_CHARS:]
    try:
        payload = unb64url(body)
    except ValueError:
        return None
    # Compared as text, both parts canonical: base64 decoding ignores a last
    # character's unused bits, so one token must not have several spellings.
    if not hmac.compare_digest(mac, b64url(_mac(secret, payload))) or b64url(payload) != body:
        return None
    try:
        link = _decode.decode(payload)
    except msgspec.DecodeError:
        return None
    if link.kind != kind or len(link.nid) != 16:
        return None
    return link


def trackable(url: str) -> bool:
    """An absolute http(s) URL that can be a redirect's target as it is."""
    return url[:8].lower().startswith(("http://", "https://")) and not URL_UNSAFE.search(url)


class _Anchors(HTMLParser):
    """Finds the offsets of ``<a>`` start tags and of the last ``</body>``; the
    parser's own reading decides what is a tag (not text, a comment, a script)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.lines = [0]
        for i, ch in enumerate(text):
            if ch == "\n":  # html.parser counts "\n" only
                self.lines.append(i + 1)
        self.anchors: list[tuple[int, str]] = []  # (offset, raw start tag)
        self.body_end: int | None = None

    def _offset(self) -> int:
        line, col = self.getpos()
        return self.lines[line - 1] + col

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.anchors.append((self._offset(), self.get_starttag_text() or ""))

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag):
        if tag == "body":
            self.body_end = self._offset()


def _href(raw: str) -> tuple[int, int, str] | None:
    """(start, end, value) of the first href value in a raw ``<a ...>`` tag; the
    span excludes the quotes. Later duplicates are ignored, as browsers do."""
    pos = 2  # after "<a"
    while True:
        m = ATTR.search(raw, pos)
        if m is None or m.end() == m.start():
            return None
        if m.group(1).lower() == "href":
            for g in (2, 3, 4):
                if m.group(g) is not None:
                    return m.start(g), m.end(g), m.group(g)
            return None
        pos = m.end()


def pixel(base_url: str, token: str) -> str:
    src = html.escape(f"{base_url}/v1/t/o/{token}.gif", quote=True)
    return f'<img src="{src}" width="1" height="1" alt="" style="display:none">'


def rewrite(text: str, secret: bytes, base_url: str, notification_id: str, channel: str, *,
            opens: bool = True, clicks: bool = True, keep: Collection[str] = ()) -> str:
    """``text`` (HTML) with the open pixel added (``opens``) and its http(s)
    links, except those in ``keep``, pointed at the click redirect (``clicks``)."""
    parser = _Anchors(text)
    parser.feed(text)
    parser.close()
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement), in order
    if clicks:
        for offset, raw in parser.anchors:
            found = _href(raw)
            if found is None:
                continue
            start, end, value = found
            url = html.unescape(value).strip()
            if not trackable(url) or url in keep:
                continue
            token = sign(secret, "c", notification_id, channel, url)
            edits.append((offset + start, offset + end, html.escape(f"{base_url}/v1/t/c/{token}", quote=True)))
    if opens:
        at = parser.body_end if parser.body_end is not None else len(text)
        edits.append((at, at, pixel(base_url, sign(secret, "o", notification_id, channel))))
    out, pos = [], 0
    for start, end, replacement in sorted(edits, key=lambda e: e[0]):
        out += [text[pos:start], replacement]
        pos = end
    out.append(text[pos:])
    return "".join(out)


__all__ = ["Kind", "Link", "pixel", "rewrite", "sign", "trackable", "verify"]


class LinkRules(msgspec.Struct, frozen=True):
    """Which tasks ``track`` rewrites and how: built once from ``[engagement]``.
    ``unsubscribe``: per tracked channel, every provider's List-Unsubscribe URL
    template (any of them may be the one that sends), left as it is."""

    secret: bytes
    base_url: str
    opens: bool
    clicks: bool
    channels: frozenset[str]
    unsubscribe: dict[str, tuple[str, ...]] = {}


def track(rules: LinkRules, task: DeliveryTask) -> DeliveryTask:
    """``task`` with its HTML rewritten (the caller checked it has HTML and a tracked channel)."""
    keep = {fill(t, task) for t in rules.unsubscribe.get(task.channel, ())}
    if task.unsubscribe_url:
        keep.add(task.unsubscribe_url)
    html_ = rewrite(task.content.html or "", rules.secret, rules.base_url, task.notification_id, task.channel,
                    opens=rules.opens, clicks=rules.clicks, keep=keep)
    return msgspec.structs.replace(task, content=msgspec.structs.replace(task.content, html=html_))
