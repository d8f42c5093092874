"""Message templates: per channel and locale, rendered with Jinja2's sandbox.

A template has a subject, a text and an HTML part, each a Jinja2 template; the
HTML part is autoescaped, the others are not. Rendering is pure: the caller
passes the compiled template and the data. Locale fallback: the user's locale
("de-AT"), then its language ("de"), then the template's ``default`` locale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from msgspec import Meta, Struct

from policy.types import Content

TemplateId = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]
Locale = Annotated[str, Meta(min_length=2, max_length=35, pattern=r"^(default|[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*)$")]
DEFAULT_LOCALE = "default"

# StrictUndefined: a variable the data lacks is an error, not an empty string in a
# message a user reads. The sandbox keeps templates from reaching Python internals.
_plain = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
_html = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=True)


class MessageTemplate(Struct, kw_only=True, forbid_unknown_fields=True):
    """One version of a template for one channel and locale (what the API stores)."""

    id: TemplateId
    channel: str
    locale: Locale = DEFAULT_LOCALE
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    version: int = 0  # assigned when stored


class Compiled:
    """A MessageTemplate's parts compiled once, rendered many times."""

    __slots__ = ("template", "subject", "text", "html")

    def __init__(self, t: MessageTemplate):
        self.template = t
        self.subject = _plain.from_string(t.subject) if t.subject is not None else None
        self.text = _plain.from_string(t.text) if t.text is not None else None
        self.html = _html.from_string(t.html) if t.html is not None else None

    def render(self, data: Mapping[str, Any]) -> Content:
        """The Content for ``data``; jinja2 errors (a missing variable, a sandbox
        violation) propagate for the caller to report."""
        return Content(subject=self.subject.render(data).strip() if self.subject else None,
                       text=self.text.render(data) if self.text else None,
                       html=self.html.render(data) if self.html else None,
                       data=dict(data))


def syntax_errors(t: MessageTemplate) -> list[tuple[str, str]]:
    """(field, reason) for each part that does not parse."""
    errors = []
    for part in ("subject", "text", "html"):
        source = getattr(t, part)
        if source is None:
            continue
        try:
            (_html if part == "html" else _plain).parse(source)
        except jinja2.TemplateSyntaxError as e:
            errors.append((part, f"line {e.lineno}: {e.message}"))
    if t.subject is None and t.text is None and t.html is None:
        errors.append(("$", "a template needs a subject, text or html"))
    return errors


def locale_chain(locale: str) -> list[str]:
    """"de-AT" → ["de-AT", "de", "default"]."""
    chain = [locale]
    if "-" in locale:
        chain.append(locale.split("-", 1)[0])
    if DEFAULT_LOCALE not in chain:
        chain.append(DEFAULT_LOCALE)
    return chain


def pick(available: Mapping[str, Compiled], locale: str) -> Compiled | None:
    """The template for ``locale`` by the fallback chain, among ``available``
    (locale → compiled template of one id and channel)."""
    for candidate in locale_chain(locale):
        found = available.get(candidate)
        if found is not None:
            return found
    return None


def render_error(e: Exception) -> str:
    if isinstance(e, jinja2.UndefinedError):
        return f"missing data: {e.message}"
    if isinstance(e, jinja2.exceptions.SecurityError):
        return f"not allowed in a template: {e}"
    return f"{type(e).__name__}: {e}"


def ids_of(requests: Iterable) -> set[str]:
    return {r.template.id for r in requests if getattr(r, "template", None) is not None}
