"""policy.links: signed link tokens and the rewrite of an email's HTML."""

from __future__ import annotations

import html
import uuid
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings, strategies as st

from policy import links

SECRET = b"0123456789abcdef-secret"
BASE = "https://t.example.test"
NID = str(uuid.uuid4())
PIXEL_MARK = f'<img src="{BASE}/v1/t/o/'


def test_a_token_round_trips():
    link = links.verify(SECRET, links.sign(SECRET, "c", NID, "email", "https://x.test/a?b=1&c=ü"), "c")
    assert link is not None
    assert (str(link.notification_id), link.channel, link.url) == (NID, "email", "https://x.test/a?b=1&c=ü")
    opened = links.verify(SECRET, links.sign(SECRET, "o", NID, "email"), "o")
    assert opened is not None and str(opened.notification_id) == NID and opened.url == ""


def test_a_token_is_url_safe():
    token = links.sign(SECRET, "c", NID, "email", "https://x.test/" + "é/?&#" * 50)
    assert token.isascii() and all(c.isalnum() or c in "-_" for c in token)


@pytest.mark.parametrize("at", [0, 5, -1, -5, -22, -23])
def test_a_tampered_token_does_not_verify(at):
    token = links.sign(SECRET, "c", NID, "email", "https://x.test/a")
    i = at % len(token)
    swapped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
    assert links.verify(SECRET, swapped, "c") is None


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.mark.parametrize("at", [-1, -23])  # the last characters of the mac and of the payload
def test_a_token_has_one_spelling(at):
    token = links.sign(SECRET, "c", NID, "email", "https://x.test/ab")
    i = at % len(token)
    others = [token[:i] + c + token[i + 1:] for c in ALPHABET if c != token[i]]
    assert [t for t in others if links.verify(SECRET, t, "c") is not None] == []


def test_another_url_under_the_same_mac_does_not_verify():
    good = links.sign(SECRET, "c", NID, "email", "https://x.test/a")
    evil = links.sign(b"attacker's own key!", "c", NID, "email", "https://evil.test/")
    assert links.verify(SECRET, evil[:-links.MAC_CHARS] + good[-links.MAC_CHARS:], "c") is None


def test_another_secret_or_kind_does_not_verify():
    click = links.sign(SECRET, "c", NID, "email", "https://x.test/a")
    assert links.verify(b"another secret, as long", click, "c") is None
    assert links.verify(SECRET, click, "o") is None  # a click token is not an open
    assert links.verify(SECRET, links.sign(SECRET, "o", NID, "email"), "c") is None


@pytest.mark.parametrize("token", ["", "x", "a" * 22, "a" * 40, "!!!!" * 10, "é" * 30, "AAAA" + "A" * 22])
def test_garbage_does_not_verify(token):
    assert links.verify(SECRET, token, "c") is None


def rewrite(text: str, **kw) -> str:
    return links.rewrite(text, SECRET, BASE, NID, "email", **kw)


class Hrefs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str | None] = []
        self.images: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href"))
        elif tag == "img":
            self.images.append(dict(attrs).get("src"))


def parsed(text: str) -> Hrefs:
    p = Hrefs()
    p.feed(text)
    p.close()
    return p


def without_pixel(out: str) -> str:
    start = out.index(PIXEL_MARK)
    end = out.index(">", start) + 1
    return out[:start] + out[end:]


def test_the_pixel_goes_before_the_body_end():
    out = rewrite("<html><body><p>Hi</p></body></html>")
    assert out.startswith("<html><body><p>Hi</p>" + PIXEL_MARK) and out.endswith('style="display:none"></body></html>')
    src = parsed(out).images[0]
    token = src.removeprefix(f"{BASE}/v1/t/o/").removesuffix(".gif")
    assert str(links.verify(SECRET, token, "o").notification_id) == NID


def test_the_pixel_goes_at_the_end_without_a_body():
    out = rewrite("<p>Hi</p>")
    assert out.startswith("<p>Hi</p>" + PIXEL_MARK)


def test_links_are_rewritten_and_others_left_alone():
    unsub = "https://x.test/unsub?u=u1&c=marketing"
    text = ('<a href="https://x.test/a?b=1&amp;c=2">a</a> <A HREF=\'http://x.test/b\' class=x>b</A> '
            '<a href="mailto:me@x.test">m</a> <a href="tel:+1555">t</a> <a href="#top">top</a> '
            f'<a href="/relative">r</a> <a name="n">n</a> <a href="{html.escape(unsub)}">unsubscribe</a> '
            '<a href=https://x.test/c>c</a><!-- <a href="https://x.test/comment"> -->')
    out = rewrite(text, opens=False, keep={unsub})
    hrefs = parsed(out).hrefs
    clicks = [links.verify(SECRET, h.removeprefix(f"{BASE}/v1/t/c/"), "c") for h in hrefs if h and h.startswith(BASE)]
    assert [c.url for c in clicks] == ["https://x.test/a?b=1&c=2", "http://x.test/b", "https://x.test/c"]
    assert hrefs[2:8] == ["mailto:me@x.test", "tel:+1555", "#top", "/relative", None, unsub]
    assert 'class=x>b</A>' in out and '<!-- <a href="https://x.test/comment"> -->' in out
    assert PIXEL_MARK not in out


def test_clicks_off_leaves_links():
    text = '<a href="https://x.test/a">a</a>'
    assert without_pixel(rewrite(text, clicks=False)) == text


# HTML built from pieces that are not links: tags with attributes, text with
# entities and stray "<", comments, scripts that mention links, a body end.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
ATTR_VALUE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='"'), max_size=12)
PIECES = st.one_of(
    TEXT,
    st.sampled_from(["<p>", "</p>", "<br/>", "<div class='a'>", "</div>", "&amp;", "&lt;a href=x&gt;", "</body>",
                     "<body>", "</html>", "<a name=top>", "</a>", "<a href='mailto:x@y.z'>", "<a href=#x>",
                     "<a href=\"tel:1\">", "<!-- <a href='https://x.test/'> -->",
                     # the '>' first: a '<?', '<!' or '</' just before would open a bogus comment that
                     # swallows '<script>', and the '<a' in it would be a real link, to a browser too
                     "><script>var s = '<a href=\"https://x.test\">';</script>", "< a", "<", "\r\n", "\n"]),
    ATTR_VALUE.map(lambda v: f'<img src="{v}" alt="">'),
    ATTR_VALUE.map(lambda v: f'<a href="/{v}">'),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=30).map("".join))
def test_html_without_links_is_unchanged_but_for_the_pixel(text):
    out = rewrite(text)
    assert out.count(PIXEL_MARK) == text.count(PIXEL_MARK) + 1
    assert without_pixel(out) == text


URL = st.builds(lambda scheme, host, path: f"{scheme}://{host}/{path}",
                st.sampled_from(["http", "https", "HTTPS"]),
                st.from_regex(r"[a-z]{1,8}\.test", fullmatch=True),
                st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF, blacklist_categories=("Cs",)),
                        max_size=20))
QUOTE = st.sampled_from(['"', "'", ""])


def anchor(url: str, quote: str, before: str) -> str:
    value = html.escape(url, quote=True)
    if not quote:  # an unquoted value cannot hold spaces, quotes or ">"; escaping covers the rest
        value = value.replace(">", "&gt;").replace("=", "&#61;").replace("`", "&#96;")
    return f"<a {before}href={quote}{value}{quote}>x</a>"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(URL, st.sampled_from(["mailto:a@b.c", "#x", "/rel"])), QUOTE,
                          st.sampled_from(["", 'class="c" ', "data-x='>' "]), PIECES), max_size=8))
def test_every_rewritten_link_verifies_back_to_its_url(parts):
    text = "".join(anchor(url, q, before) + filler for url, q, before, filler in parts)
    original = parsed(text).hrefs
    out = rewrite(text)
    assert without_pixel(out).count("<a ") == text.count("<a ")
    got = parsed(out).hrefs
    assert len(got) == len(original)
    for before, after in zip(original, got, strict=True):
        if before is not None and links.trackable(before.strip()):
            link = links.verify(SECRET, after.removeprefix(f"{BASE}/v1/t/c/"), "c")
            assert link is not None and link.url == before.strip() and link.channel == "email"
        else:
            assert after == before
