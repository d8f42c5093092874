"""Message templates in PostgreSQL: save a new version, load what a batch needs."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from policy.templating import MessageTemplate

LATEST = """
SELECT DISTINCT ON (id, channel, locale) id, channel, locale, version, subject, text, html
FROM message_templates WHERE id = $1 AND ($2::int IS NULL OR version <= $2)
ORDER BY id, channel, locale, version DESC
"""


async def load(conn: asyncpg.Connection, template_id: str, version: int | None = None) -> list[MessageTemplate]:
    """Every (channel, locale) part of a template as of ``version`` (newest when None):
    a version number is a save of the template id, so "version 3" is each part as it
    was after the third save."""
    return [MessageTemplate(id=r["id"], channel=r["channel"], locale=r["locale"], version=r["version"],
                            subject=r["subject"], text=r["text"], html=r["html"])
            for r in await conn.fetch(LATEST, template_id, version)]


async def save(conn: asyncpg.Connection, t: MessageTemplate, actor: str | None) -> int:
    """Store ``t`` as the template's next version; returns it."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('message_template:' || $1))", t.id)
        version = await conn.fetchval("SELECT COALESCE(max(version), 0) + 1 FROM message_templates WHERE id = $1",
                                      t.id)
        await conn.execute(
            "INSERT INTO message_templates (id, channel, locale, version, subject, text, html, created_by) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", t.id, t.channel, t.locale, version, t.subject, t.text,
            t.html, actor)
    return version


async def versions(conn: asyncpg.Connection, template_id: str) -> list[dict]:
    return [dict(r) for r in await conn.fetch(
        "SELECT version, channel, locale, extract(epoch FROM created_at)::float8 AS created_at, created_by "
        "FROM message_templates WHERE id = $1 ORDER BY version", template_id)]


def by_channel(parts: Iterable[MessageTemplate]) -> dict[str, dict[str, MessageTemplate]]:
    out: dict[str, dict[str, MessageTemplate]] = {}
    for p in parts:
        out.setdefault(p.channel, {})[p.locale] = p
    return out
