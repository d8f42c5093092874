"""Small helpers to derive a Config from another (frozen Structs: copy, never mutate)."""

from __future__ import annotations

from typing import Any

import msgspec

from infra.config import Config


def with_provider_settings(cfg: Config, channel: str, **settings: Any) -> Config:
    """Every provider of ``channel`` gets ``settings`` merged into its settings."""
    ch = cfg.channels[channel]
    providers = [msgspec.structs.replace(p, settings={**p.settings, **settings}) for p in ch.providers]
    channels = {**cfg.channels, channel: msgspec.structs.replace(ch, providers=providers)}
    return msgspec.structs.replace(cfg, channels=channels)


def with_section(cfg: Config, section: str, **values: Any) -> Config:
    """``with_section(cfg, "engine", user_shards=4)``."""
    return msgspec.structs.replace(cfg, **{section: msgspec.structs.replace(getattr(cfg, section), **values)})
