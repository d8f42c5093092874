"""Provider credentials kept in PostgreSQL (table ``provider_credentials``), encrypted.

The key: ``TIDINGS_CREDENTIALS_KEY`` holds one or more Fernet keys, comma-separated.
The first encrypts; every one decrypts (``MultiFernet``). To rotate: put a new key
first, run ``tidings credentials rotate`` (every row re-encrypted with it), then
drop the old key.

A row's ciphertext is a Fernet token (AES-128-CBC with HMAC-SHA256) over the name
and the value together; decryption checks the name, so a ciphertext copied under
another row's name is refused, which is what associated data would give with
AES-GCM. Neither values nor keys are ever logged or put in an error message: errors
name the credential, the provider, or ``TIDINGS_CREDENTIALS_KEY``.

Provider settings written ``"secret:NAME"`` are filled from this table when the
engine starts (``for_config``, then ``fill`` per channel); see docs/credentials.md.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import os
import re
from collections.abc import Mapping

import asyncpg
import msgspec
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from infra.config import ChannelConfig, Config, ConfigError

log = logging.getLogger(__name__)

KEY_ENV = "TIDINGS_CREDENTIALS_KEY"
PREFIX = "secret:"
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}\Z")  # the same check as the table's


class CredentialError(ConfigError):
    """A credential cannot be stored or read; ``name`` is the credential's name
    (None when the key itself is the problem). The message never holds a value."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


class _Sealed(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """What a token encrypts: the value bound to its name."""

    name: str
    value: str


_seal = msgspec.msgpack.Encoder()
_unseal = msgspec.msgpack.Decoder(_Sealed)


def key_id(key: bytes | str) -> str:
    """A fingerprint of a Fernet key, safe to show and store (not the key)."""
    raw = base64.urlsafe_b64decode(key)
    return hashlib.sha256(b"tidings-credentials-key:" + raw).hexdigest()[:16]


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise CredentialError(f"credential name {name!r}: use 1-200 of A-Z a-z 0-9 _ . -", name)
    return name


class Keyring:
    """The operator's keys: the first encrypts, all decrypt."""

    def __init__(self, keys: list[bytes | str]):
        if not keys:
            raise CredentialError(f"{KEY_ENV} is not set: it holds the key that encrypts provider credentials "
                                  "(make one with `tidings credentials gen-key`)")
        fernets = []
        for i, k in enumerate(keys, 1):
            try:
                fernets.append(Fernet(k))
            except (ValueError, TypeError):
                raise CredentialError(f"{KEY_ENV}: key {i} of {len(keys)} is not a Fernet key "
                                      "(32 url-safe base64-encoded bytes; `tidings credentials gen-key`)") from None
        self._fernet = MultiFernet(fernets)
        self.key_ids = [key_id(k) for k in keys]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring:
        raw = (os.environ if environ is None else environ).get(KEY_ENV, "")
        return cls([k.strip() for k in raw.split(",") if k.strip()])

    @property
    def key_id(self) -> str:
        """The fingerprint of the key new ciphertexts are made with."""
        return self.key_ids[0]

    def encrypt(self, name: str, value: str) -> bytes:
        check_name(name)
        if not isinstance(value, str) or not value:
            raise CredentialError(f"credential {name!r}: the value must be a non-empty string", name)
        return self._fernet.encrypt(_seal.encode(_Sealed(name, value)))

    def decrypt(self, name: str, token: bytes, stored_key_id: str | None = None) -> str:
        """The value sealed under ``name``; CredentialError when no configured key
        opens ``token``, when it was altered, or when it was sealed for another name."""
        try:
            sealed = _unseal.decode(self._fernet.decrypt(bytes(token)))
        except InvalidToken:
            hint = ""
            if stored_key_id and stored_key_id not in self.key_ids:
                hint = f" (it was encrypted with key {stored_key_id}, which is not among the configured keys)"
            raise CredentialError(f"credential {name!r} does not decrypt with {KEY_ENV}: wrong key or altered "
                                  f"ciphertext{hint}", name) from None
        except msgspec.DecodeError:
            raise CredentialError(f"credential {name!r}: decrypts to something not made here", name) from None
        if sealed.name != name:
            raise CredentialError(f"credential {name!r} holds a ciphertext made for {sealed.name!r}; refused", name)
        return sealed.value


class Entry(msgspec.Struct, frozen=True):
    """A stored credential as listed: never its value."""

    name: str
    key_id: str
    created_at: dt.datetime
    updated_at: dt.datetime


async def put(conn: asyncpg.Connection | asyncpg.Pool, keyring: Keyring, name: str, value: str) -> None:
    """Store (or replace) credential ``name``, encrypted with the first key."""
    if value.startswith(("env:", PREFIX)):
        # Filled into a provider's settings, it would be read as a reference again.
        raise CredentialError(f"credential {name!r}: a value may not start with 'env:' or {PREFIX!r}", name)
    token = keyring.encrypt(name, value)
    await conn.execute(
        "INSERT INTO provider_credentials (name, ciphertext, key_id) VALUES ($1, $2, $3) "
        "ON CONFLICT (name) DO UPDATE SET ciphertext = EXCLUDED.ciphertext, key_id = EXCLUDED.key_id, "
        "updated_at = now()", name, token, keyring.key_id)
    log.info("credential %s stored (key %s)", name, keyring.key_id)


async def get_many(conn: asyncpg.Connection | asyncpg.Pool, keyring: Keyring, names: list[str]) -> dict[str, str]:
    """The values of those of ``names`` that are stored (missing ones are left out)."""
    rows = await conn.fetch("SELECT name, ciphertext, key_id FROM provider_credentials WHERE name = ANY($1)",
                            list(names))
    return {r["name"]: keyring.decrypt(r["name"], r["ciphertext"], r["key_id"]) for r in rows}


async def get(conn: asyncpg.Connection | asyncpg.Pool, keyring: Keyring, name: str) -> str:
    found = await get_many(conn, keyring, [name])
    if name not in found:
        raise CredentialError(f"credential {name!r} is not stored", name)
    return found[name]


async def entries(conn: asyncpg.Connection | asyncpg.Pool) -> list[Entry]:
    """Every stored credential's name, key fingerprint and times, by name."""
    rows = await conn.fetch("SELECT name, key_id, created_at, updated_at FROM provider_credentials ORDER BY name")
    return [Entry(**dict(r)) for r in rows]


async def delete(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> bool:
    """Remove credential ``name``; False when there was none."""
    done = await conn.execute("DELETE FROM provider_credentials WHERE name = $1", name)
    return done != "DELETE 0"


async def rotate(conn: asyncpg.Connection, keyring: Keyring) -> int:
    """Re-encrypt every row with the first key, in one transaction: if any row
    does not decrypt, nothing changes and the error names it. Returns the rows
    rewritten."""
    async with conn.transaction():
        rows = await conn.fetch("SELECT name, ciphertext, key_id FROM provider_credentials ORDER BY name FOR UPDATE")
        new = [(r["name"], keyring.encrypt(r["name"], keyring.decrypt(r["name"], r["ciphertext"], r["key_id"])),
                keyring.key_id) for r in rows]
        await conn.executemany("UPDATE provider_credentials SET ciphertext = $2, key_id = $3, updated_at = now() "
                               "WHERE name = $1", new)
    log.info("credentials rotated to key %s: %d rows", keyring.key_id, len(new))
    return len(new)


def references(cfg: Config) -> list[tuple[str, str, str, str]]:
    """``(channel, provider, setting, credential)`` for every ``"secret:NAME"``
    setting of a provider the engine will build (enabled, in an enabled channel)."""
    out = []
    for channel in sorted(cfg.enabled_channels()):
        for p in cfg.channels[channel].providers:
            if not p.enabled:
                continue
            for key, value in p.settings.items():
                if isinstance(value, str) and value.startswith(PREFIX):
                    out.append((channel, p.name, key, value[len(PREFIX):]))
    return out


async def for_config(pool: asyncpg.Pool, cfg: Config, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The values of every credential ``cfg``'s providers name, decrypted. Needs no
    key when none is named. A credential that is missing or does not decrypt is a
    CredentialError naming each provider and credential at fault (all of them)."""
    users: dict[str, list[str]] = {}
    for channel, provider, key, name in references(cfg):
        users.setdefault(name, []).append(f"provider {provider!r} (channel {channel}, setting {key!r})")
    if not users:
        return {}
    try:
        keyring = Keyring.from_env(environ)
    except CredentialError as e:
        named = ", ".join(f"{PREFIX}{n}" for n in users)
        raise CredentialError(f"provider settings name stored credentials ({named}), but {e}") from None
    rows = {r["name"]: r for r in await pool.fetch(
        "SELECT name, ciphertext, key_id FROM provider_credentials WHERE name = ANY($1)", list(users))}
    problems, values = [], {}
    for name, where in users.items():
        row = rows.get(name)
        try:
            if row is None:
                raise CredentialError(f"credential {name!r} is not stored (`tidings credentials set {name}`)", name)
            values[name] = keyring.decrypt(name, row["ciphertext"], row["key_id"])
        except CredentialError as e:
            problems.append((name, f"{', '.join(where)}: {e}"))
    if problems:
        raise CredentialError("; ".join(text for _, text in problems), problems[0][0])
    return values


def fill(ch: ChannelConfig, values: Mapping[str, str]) -> ChannelConfig:
    """``ch`` with each ``"secret:NAME"`` setting replaced by ``values[NAME]``
    (left as it is when NAME is not there: the provider registry then refuses it)."""
    if not values:
        return ch
    providers = []
    for p in ch.providers:
        settings = {k: values.get(v[len(PREFIX):], v) if isinstance(v, str) and v.startswith(PREFIX) else v
                    for k, v in p.settings.items()}
        providers.append(msgspec.structs.replace(p, settings=settings))
    return msgspec.structs.replace(ch, providers=providers)
