"""policy.email: what an address is, what content an email needs, and the
unsubscribe URL filler; one set of rules for the providers and the HTTP API."""

from __future__ import annotations

import pytest

from policy import email
from policy.types import Content, DeliveryTask


@pytest.mark.parametrize("text", [
    "a@example.com",
    "first.last+tag@sub.example.co.uk",
    "ü@例え.jp",
])
def test_bare_addresses_are_addresses(text):
    assert email.is_address(text)


@pytest.mark.parametrize("text", [
    None,
    "",
    "no-at-sign",
    "@example.com",
    "a@",
    "a@@example.com",
    "a@b@example.com",
    "Bob <bob@example.com>",   # a display name is a sender's business, not an address
    "bob@example.com>",
    "a@example.com, b@example.com",
    "a@example.com;b@example.com",
    "a b@example.com",
    "a@example.com\n",
    "a@example.com\r\nBcc: x@y.z",
    '"a"@example.com',
])
def test_anything_else_is_not(text):
    assert not email.is_address(text)


@pytest.mark.parametrize("content, problem", [
    (Content(subject="Hi", text="t"), None),
    (Content(subject="Hi", html="<p>h</p>"), None),
    (Content(subject="Hi", text="t", html="<p>h</p>"), None),
    (Content(text="no subject"), "email needs a subject"),
    (Content(subject="", text="empty subject"), "email needs a subject"),
    (Content(subject="a\r\nBcc: x@y.z", text="t"), "email subject contains a line break"),
    (Content(subject="a\nb", text="t"), "email subject contains a line break"),
    (Content(subject="a\x0bb", text="t"), "email subject contains a control character"),
    (Content(subject="a\x0cb", text="t"), "email subject contains a control character"),
    (Content(subject="a\x1eb", text="t"), "email subject contains a control character"),
    (Content(subject="a\x85b", text="t"), "email subject contains a control character"),
    (Content(subject="a\u2028b", text="t"), "email subject contains a control character"),
    (Content(subject="a\x00b", text="t"), "email subject contains a control character"),
    (Content(subject="a\tb", text="t"), "email subject contains a control character"),
    (Content(subject="Grüße ✓ 日本", text="t\tab\n"), None),
    (Content(subject="no body"), "email needs text or html content"),
    (Content(subject="empty body", text="", html=""), "email needs text or html content"),
])
def test_content_problem_says_what_is_missing(content, problem):
    assert email.content_problem(content) == problem


def test_fill_quotes_each_value():
    task = DeliveryTask("n/1", "u 1&x", "email", "news.weekly", "a@x.test", Content(subject="s", text="t"))
    url = "https://x.test/unsub?u={user_id}&c={category}&n={notification_id}&keep={other}"
    assert email.fill(url, task) == "https://x.test/unsub?u=u%201%26x&c=news.weekly&n=n%2F1&keep={other}"


def test_transactional_categories_by_default():
    assert email.DEFAULT_TRANSACTIONAL == ("security", "account", "transactional")


def test_the_can_spam_footer_ends_both_parts_escaped_and_keeps_the_rest():
    from policy.email import with_footer
    from policy.types import Content

    c = Content(subject="Hi", text="Hello\n\n", html="<html><body><p>Hello</p></BODY></html>")
    out = with_footer(c, "Jobs & Co <HQ>\n1 Main St", "https://n.test/u/abc?x=1&y=2")
    assert out.text == "Hello\n\n-- \nJobs & Co <HQ>\n1 Main St\nUnsubscribe: https://n.test/u/abc?x=1&y=2\n"
    assert out.html.startswith("<html><body><p>Hello</p><p ") and out.html.endswith("</p></BODY></html>")
    assert "Jobs &amp; Co &lt;HQ&gt;<br>1 Main St" in out.html
    assert 'href="https://n.test/u/abc?x=1&amp;y=2"' in out.html
    assert with_footer(Content(subject="s", html="<p>x</p>"), "A", None).html == \
        '<p>x</p><p style="font-size:12px;color:#666">A</p>'
    assert with_footer(Content(subject="s", html="<p>x</p>"), "A", None).text is None
