"""Message templates: per channel and locale, rendered with Jinja2's sandbox.

A template has a subject, a text and an HTML part, each a Jinja2 template; the
HTML part is autoescaped, the others are not. Rendering is pure: the caller
passes the compiled template and the data. Locale fallback: the user's locale
("de-AT"), then its language ("de"), then the template's ``default`` locale.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import jinja2
from msgspec import Meta, Struct

from policy.template_limits import (
    BUDGET,
    CONTROL,
    HTML,
    MAX_RENDER_SECONDS,
    PLAIN,
    Budget,
    TemplateLimit,
    TemplateOutput,
    generate,
)
from policy.types import NO_NUL, SUBJECT_MAX_LENGTH, Content

TemplateId = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+\Z")]
Locale = Annotated[str, Meta(min_length=2, max_length=35, pattern=r"^(default|[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*)\Z")]
DEFAULT_LOCALE = "default"

class MessageTemplate(Struct, kw_only=True, forbid_unknown_fields=True):
    """One version of a template for one channel and locale (what the API stores)."""

    id: TemplateId
    channel: str
    locale: Locale = DEFAULT_LOCALE
    # no NUL: PostgreSQL cannot store one in text (a 422 naming the part, not a failed write)
    subject: Annotated[str, Meta(pattern=NO_NUL)] | None = None
    text: Annotated[str, Meta(pattern=NO_NUL)] | None = None
    html: Annotated[str, Meta(pattern=NO_NUL)] | None = None
    version: int = 0  # assigned when stored


class Compiled:
    """A MessageTemplate's parts compiled once, rendered many times."""

    __slots__ = ("template", "subject", "text", "html")

    def __init__(self, t: MessageTemplate):
        self.template = t
        self.subject = PLAIN.from_string(t.subject) if t.subject is not None else None
        self.text = PLAIN.from_string(t.text) if t.text is not None else None
        self.html = HTML.from_string(t.html) if t.html is not None else None

    def render(self, data: Mapping[str, Any]) -> Content:
        """The Content for ``data``; jinja2 errors (a missing variable, a sandbox
        violation) and ``TemplateLimit`` propagate for the caller to report. All
        three parts share one time budget (``MAX_RENDER_SECONDS``)."""
        budget = Budget(time.thread_time() + MAX_RENDER_SECONDS)
        token = BUDGET.set(budget)
        try:
            subject = generate(self.subject, data, budget).strip() if self.subject else None
            text = generate(self.text, data, budget) if self.text else None
            html = generate(self.html, data, budget) if self.html else None
        finally:
            BUDGET.reset(token)
        # What a request's Content may not hold may not come out of a template either:
        # the rendered Content travels to the ChannelShard decoded as the same type.
        if subject is not None and len(subject) > SUBJECT_MAX_LENGTH:
            raise TemplateOutput(f"the subject is longer than {SUBJECT_MAX_LENGTH} characters")
        if subject is not None and CONTROL.search(subject):
            raise TemplateOutput("the subject contains a line break or control character")
        for name, part in (("text", text), ("html", html)):
            if part is not None and "\x00" in part:
                raise TemplateOutput(f"the {name} contains a NUL character")
        return Content(subject=subject, text=text, html=html, data=dict(data))


def syntax_errors(t: MessageTemplate) -> list[tuple[str, str]]:
    """(field, reason) for each part that does not parse."""
    errors = []
    for part in ("subject", "text", "html"):
        source = getattr(t, part)
        if source is None:
            continue
        try:
            (HTML if part == "html" else PLAIN).parse(source)
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
    if isinstance(e, TemplateLimit):
        return f"template limit: {e}"
    if isinstance(e, TemplateOutput):
        return str(e)
    if isinstance(e, RecursionError):
        return "template limit: nested too deeply"
    if isinstance(e, MemoryError):
        return "template limit: out of memory"
    if isinstance(e, jinja2.UndefinedError):
        return f"missing data: {e.message}"
    if isinstance(e, jinja2.exceptions.SecurityError):
        return f"not allowed in a template: {e}"
    return " ".join(f"{type(e).__name__}: {e}".split())[:500]  # one line


def ids_of(requests: Iterable) -> set[str]:
    return {r.template.id for r in requests if getattr(r, "template", None) is not None}
