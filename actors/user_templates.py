"""The UserShard's message templates: compiled once per (template, version)
and loaded for a batch in one query per template it uses (``policy.plan``
renders them per recipient, in the recipient's locale)."""

from __future__ import annotations

from policy.templating import Compiled
from stores import templates as template_store

MAX_CACHED = 1000  # (template, version) pairs compiled and kept


class TemplatesMixin:
    """Mixed into UserShard (needs ``pool``)."""

    message_templates: dict[tuple[str, int | None], dict[str, dict[str, Compiled]]]

    async def _load_templates(self, refs: set[tuple[str, int | None]]) -> None:
        missing = [r for r in refs if r not in self.message_templates]
        if not missing:
            return
        if len(self.message_templates) + len(missing) > MAX_CACHED:
            self.message_templates.clear()
        async with self.pool.acquire() as conn:
            for tid, version in missing:
                parts = await template_store.load(conn, tid, version)
                self.message_templates[(tid, version)] = {
                    ch: {loc: Compiled(t) for loc, t in locales.items()}
                    for ch, locales in template_store.by_channel(parts).items()}

    async def message_templates_changed(self, template_id: str) -> int:
        """A template was saved: forget what was compiled of it."""
        for key in [k for k in self.message_templates if k[0] == template_id]:
            del self.message_templates[key]
        return len(self.message_templates)
