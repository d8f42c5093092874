"""The UserShard's side of our own open pixel and click redirect: the rules
``policy.links.track`` applies, built once from ``[engagement]``."""

from __future__ import annotations

from infra.config import Config
from policy.links import LinkRules


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


__all__ = ["link_rules"]
