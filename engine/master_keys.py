"""Where the master keys come from (infra/pii.py, docs/privacy.md):
``privacy.master_keys`` (``TIDINGS_PRIVACY_MASTER_KEYS``), else
``<engine.home>/master.keys``, made the first time (0600) so the demo and a
first try run with nothing set. Production gives them in the environment (or
a secret manager that sets it) and keeps them out of the database's backups:
a backup together with its master keys is readable until a user's key is
destroyed, and never after."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import msgspec

from engine import secret_files
from infra.config import Config, ConfigError
from infra.pii import Keyring, PiiError, format_master_key, new_key, parse_master_keys

KEY_FILE = "master.keys"

log = logging.getLogger(__name__)


def generate(kid: str | None = None) -> str:
    """A new master key, ``id:base64`` (raises PiiError for a bad id)."""
    key = format_master_key(kid or f"m{secrets.token_hex(4)}", new_key())
    parse_master_keys(key)
    return key


def spec(cfg: Config) -> str:
    """The configured master keys, else the home file's (made if missing)."""
    if cfg.privacy.master_keys:
        return cfg.privacy.master_keys
    path = Path(cfg.engine.home).resolve() / KEY_FILE
    data, made = secret_files.read_or_create(path, lambda: (generate() + "\n").encode())
    if made:
        log.warning("made a master key for personal data in %s (mode 0600): fine for a demo; in production set "
                    "TIDINGS_PRIVACY_MASTER_KEYS, and losing this file makes every address unreadable", path)
    return data.decode().strip()


def with_master_keys(cfg: Config) -> Config:
    """``cfg`` with ``privacy.master_keys`` filled (the actors read it there), checked."""
    keys = spec(cfg)
    try:
        parse_master_keys(keys)
    except PiiError as e:
        raise ConfigError(str(e)) from None
    return msgspec.structs.replace(cfg, privacy=msgspec.structs.replace(cfg.privacy, master_keys=keys))


def keyring(cfg: Config) -> Keyring:
    """The master keys of a ``cfg`` from ``with_master_keys`` (no index key yet:
    ``stores.pii.keyring`` loads it)."""
    return Keyring.parse(cfg.privacy.master_keys)

