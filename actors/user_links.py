"""The UserShard's side of our own open pixel and click redirect: the HTML of a
task on a tracked channel rewritten (``policy.links``) before it is sent, with
the channel's List-Unsubscribe URLs, as its providers fill them, left alone."""

from __future__ import annotations

import msgspec

from engine.config import Config
from policy import links
from policy.types import DeliveryTask
from providers.email.common import fill


class LinkTracker:
    """Built once per UserShard from ``[engagement]``; see ``tracker``."""

    def __init__(self, cfg: Config):
        e = cfg.engagement
        self.secret = e.secret.encode()
        self.base_url = e.base_url
        self.opens, self.clicks = e.opens, e.clicks
        self.channels = frozenset(e.channels)
        # every provider's unsubscribe_url template: any of them may be the one that sends
        self.unsubscribe = {name: tuple({p.settings["unsubscribe_url"] for p in ch.providers
                                         if isinstance(p.settings.get("unsubscribe_url"), str)})
                            for name, ch in cfg.channels.items() if name in self.channels}

    def apply(self, task: DeliveryTask) -> DeliveryTask:
        """``task`` with its HTML rewritten (the caller checked it has HTML and a tracked channel)."""
        keep = {fill(t, task) for t in self.unsubscribe.get(task.channel, ())}
        html = links.rewrite(task.content.html, self.secret, self.base_url, task.notification_id, task.channel,
                             opens=self.opens, clicks=self.clicks, keep=keep)
        return msgspec.structs.replace(task, content=msgspec.structs.replace(task.content, html=html))


def tracker(cfg: Config) -> LinkTracker | None:
    """The tracker, or None when ``[engagement]`` is off."""
    return LinkTracker(cfg) if cfg.engagement.enabled else None


__all__ = ["LinkTracker", "tracker"]
