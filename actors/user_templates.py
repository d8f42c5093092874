"""The UserShard's message templates: compiled once per (template, version),
loaded for a batch in one query per template it uses, rendered per recipient in
the recipient's locale."""

from __future__ import annotations

from actors import template_store
from policy.templating import Compiled, pick, render_error
from policy.types import Content, TemplateRef

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

    def _render(self, ref: TemplateRef, channel: str, locale: str) -> tuple[Content | None, str, str | None]:
        """(content, reason, detail): content, or None with ``template.missing`` /
        ``template.error`` and what went wrong."""
        compiled = pick(self.message_templates.get((ref.id, ref.version), {}).get(channel, {}), locale)
        if compiled is None:
            return None, "template.missing", f"no template {ref.id!r} for {channel} in {locale} or a fallback"
        try:
            return compiled.render(ref.data), "ok", None
        except Exception as e:  # noqa: BLE001 - a template's error is the request's, reported on its row
            return None, "template.error", render_error(e)

    async def message_templates_changed(self, template_id: str) -> int:
        """A template was saved: forget what was compiled of it."""
        for key in [k for k in self.message_templates if k[0] == template_id]:
            del self.message_templates[key]
        return len(self.message_templates)
