"""The UserShard's side of our own open pixel and click redirect: the rules
``policy.links.track`` applies, built once from ``[engagement]``."""

from __future__ import annotations

from infra.config import Config
from policy.links import LinkRules
from policy.unsubscribe import UnsubscribeRules


def link_rules(cfg: Config) -> LinkRules | None:
    """The rules, or None when ``[engagement]`` is off (nothing is done per task)."""
    e = cfg.engagement
    if not e.enabled:
        return None
    channels = frozenset(e.channels)
    # every provider's unsubscribe_url template: any of them may be the one that sends
    unsubscribe = {name: tuple({p.settings["unsubscribe_url"] for p in ch.providers
                                if isinstance(p.settings.get("unsubscribe_url"), str)})
                   for name, ch in cfg.channels.items() if name in channels}
    return LinkRules(secret=e.secret.encode(), base_url=e.base_url, opens=e.opens, clicks=e.clicks,
                     channels=channels, unsubscribe=unsubscribe)


def unsubscribe_rules(cfg: Config) -> UnsubscribeRules | None:
    """One-click unsubscribe URLs in email (``policy.unsubscribe``): on whenever the
    HTTP API's public URL and the link secret are set (``[engagement]`` base_url
    and secret), with or without the pixel and click tracking."""
    e = cfg.engagement
    if not (e.base_url and e.secret):
        return None
    return UnsubscribeRules(secret=e.secret.encode(), base_url=e.base_url)


__all__ = ["link_rules", "unsubscribe_rules"]
