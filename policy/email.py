"""Email's rules, in one place: what counts as an address, what content an email
needs, which categories are transactional by default, and how an unsubscribe URL
is filled. The email providers and the HTTP API's validation both use these, so
a request the API accepts is one every provider can send.
"""

from __future__ import annotations

import html
import re
import urllib.parse

import msgspec

from policy.types import CONTROL_CHARS, Content, DeliveryTask

# A bare local@domain: no display name, brackets, spaces or separators. Both the
# email package and aiosmtplib parse leniently ("a@b> X" becomes "a@b"), and an
# address that needs that leniency is a bug upstream, not something to fix up
# silently.
ADDRESS = re.compile(r"[^\s<>(),;:@\"]+@[^\s<>(),;:@\"]+")

# Any control character in a subject: a line break (\r, \n, and whatever else
# str.splitlines() splits on) would let the subject add headers (Bcc: ...) or make
# the email package refuse or fold the header; NUL and the rest have no business
# in a one-line header either.
SUBJECT_CONTROL = re.compile(f"[{CONTROL_CHARS}]")

# Categories that get no List-Unsubscribe header unless a provider's
# ``transactional_categories`` setting says otherwise.
DEFAULT_TRANSACTIONAL = ("security", "account", "transactional")


def is_address(text: str | None) -> bool:
    """True when ``text`` is exactly one bare ``local@domain`` address."""
    return text is not None and ADDRESS.fullmatch(text) is not None


def content_problem(content: Content) -> str | None:
    """What keeps ``content`` from being an email (a one-line subject and text or
    html), or None when nothing does."""
    if not content.subject:
        return "email needs a subject"
    if "\r" in content.subject or "\n" in content.subject:
        # a line break would let the subject add headers (Bcc: ...) to the message
        return "email subject contains a line break"
    if SUBJECT_CONTROL.search(content.subject):
        return "email subject contains a control character"
    if not content.text and not content.html:
        return "email needs text or html content"
    return None


def fill(template: str, task: DeliveryTask) -> str:
    """``{user_id}``, ``{category}`` and ``{notification_id}`` in an unsubscribe
    URL replaced by the task's values, URL-quoted."""
    for key in ("user_id", "category", "notification_id"):
        template = template.replace("{" + key + "}", urllib.parse.quote(getattr(task, key), safe=""))
    return template


def with_footer(content: Content, postal_address: str | None, unsubscribe: str | None,
                center: str | None = None) -> Content:
    """``content`` with its footer: the sender's postal address (CAN-SPAM, for the
    marketing categories), the unsubscribe link and the preference center link,
    those that are given, at the end of the text and before the HTML's last
    ``</body>`` (else at its end). Escaped for HTML; the links are never rewritten
    for click tracking (they are the List-Unsubscribe and center URLs)."""
    links = [(label, url) for label, url in (("Unsubscribe", unsubscribe), ("Manage your preferences", center)) if url]
    if not postal_address and not links:
        return content
    lines = ([postal_address] if postal_address else []) + [f"{label}: {url}" for label, url in links]
    text = (content.text or "").rstrip("\n") + "\n\n-- \n" + "\n".join(lines) + "\n" if content.text else None
    html_ = content.html
    if html_:
        parts = [html.escape(postal_address).replace("\n", "<br>")] if postal_address else []
        parts += [f'<a href="{html.escape(url)}">{label}</a>' for label, url in links]
        footer = f'<p style="font-size:12px;color:#666">{"<br>".join(parts)}</p>'
        end = html_.lower().rfind("</body>")
        html_ = html_[:end] + footer + html_[end:] if end >= 0 else html_ + footer
    return msgspec.structs.replace(content, text=text, html=html_)


def unsubscribe_url(task: DeliveryTask, template: str | None) -> str | None:
    """The List-Unsubscribe URL of an email: the engine's own one-click link when
    it made one (``task.unsubscribe_url``: no user id in it), else the provider's
    configured ``unsubscribe_url`` filled in, else None."""
    if task.unsubscribe_url:
        return task.unsubscribe_url
    return fill(template, task) if template else None


__all__ = ["ADDRESS", "DEFAULT_TRANSACTIONAL", "content_problem", "fill", "is_address", "unsubscribe_url",
           "with_footer"]
