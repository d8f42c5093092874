"""Where the configuration comes from, general to specific:
``configs/default.toml`` → ``configs/<profile>.toml`` (profile from ``--profile``
or ``TIDINGS_ENV``, default ``development``) → a file given with ``--config`` or
``TIDINGS_CONFIG`` → ``TIDINGS_<SECTION>_<KEY>`` environment variables →
``RAY_ADDRESS``. The sections and their checks are ``infra.config``'s."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infra.config import Config, ConfigError, convert, env_overrides, merge

CONFIG_DIR = Path(os.environ.get("TIDINGS_CONFIG_DIR", Path(__file__).resolve().parent.parent / "configs"))


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None


def load(profile: str | None = None, path: str | Path | None = None,
         env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Build the Config for this process (see the module docstring for the order)."""
    env = os.environ if env is None else env
    profile = profile or env.get("TIDINGS_ENV", "development")
    data = read_toml(CONFIG_DIR / "default.toml")
    profile_file = CONFIG_DIR / f"{profile}.toml"
    if profile != "default":
        if not profile_file.exists():
            raise ConfigError(f"profile {profile!r}: no file {profile_file}")
        data = merge(data, read_toml(profile_file))
    path = path or env.get("TIDINGS_CONFIG")
    if path:
        data = merge(data, read_toml(Path(path)))
    data = merge(data, env_overrides(env))
    if overrides:
        data = merge(data, overrides)
    return convert(data)
