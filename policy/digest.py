"""A digest's content: every collected item of one (user, channel, category,
period), in arrival order, as one message."""

from __future__ import annotations

import html
from collections.abc import Sequence

from policy.types import Content, Message


def headline(m: Message) -> str:
    """An item's line in the digest: its subject, else the first line of its text."""
    c = m.content or next(iter(m.channel_content.values()), None)
    if c is None:
        return m.category
    if c.subject:
        return c.subject
    return (c.text or "").strip().splitlines()[0] if (c.text or "").strip() else m.category


def compose(items: Sequence[tuple[str, Message]], category: str, frequency: str) -> Content:
    """One Content for ``items`` ((notification id, request) pairs): a subject
    with the count, a text and an HTML list, and the item ids and lines in data."""
    lines = [headline(m) for _, m in items]
    n = len(items)
    subject = f"Your {frequency} digest: {n} {category.replace('_', ' ')} update{'s' if n != 1 else ''}"
    text = "\n".join(f"- {line}" for line in lines)
    body = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return Content(subject=subject, text=f"{subject}\n\n{text}\n",
                   html=f"<h1>{html.escape(subject)}</h1><ul>{body}</ul>",
                   data={"digest": {"frequency": frequency, "category": category,
                                    "items": [{"id": nid, "line": line} for (nid, _), line in zip(items, lines, strict=True)]}})
