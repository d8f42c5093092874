"""Personal data sealed at rest (ARCHITECTURE invariant 11; docs/privacy.md).

Three kinds of key:
- **master keys** (``privacy.master_keys``: ``id:base64,…``, 32 bytes each; the
  first wraps, every one unwraps) never touch the database;
- one **data key per user** (32 random bytes), stored only wrapped by a master
  key (``user_keys``); destroying that row makes everything sealed under it
  unreadable, wherever a copy of the ciphertext went (crypto-shredding);
- the **index key**, wrapped like a data key (``pii_keys``), for the keyed blind
  index through which addresses are found without being readable
  (suppressions, bounces): HMAC-SHA256 of the normalised address.

A sealed value is ``0x01 | 12-byte nonce | AES-256-GCM(ciphertext + tag)``; the
associated data names what it is and whose (``users.state`` of user X), so a
ciphertext copied into another row or another user's row does not open.
Nothing here logs, and no error carries a key or a plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
FORMAT = b"\x01"
BLIND_BYTES = 16  # 128 bits: collisions are not a concern at any population
KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}\Z")
PHONE_SEPARATORS = re.compile(r"[\s().-]")


class PiiError(ValueError):
    """A key is missing or wrong, or a sealed value does not open. The message
    names the key id or the kind of value, never a key or a plaintext."""


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def aad(kind: str, user_id: str, extra: str = "") -> bytes:
    """What a sealed value is bound to: its kind, its user and (say) its channel."""
    return f"tidings/{kind}\x00{user_id}\x00{extra}".encode()


def seal(key: bytes | AESGCM, plaintext: bytes, bound: bytes) -> bytes:
    box = key if isinstance(key, AESGCM) else AESGCM(key)
    nonce = os.urandom(NONCE_BYTES)
    return FORMAT + nonce + box.encrypt(nonce, plaintext, bound)


def open_sealed(key: bytes | AESGCM, blob: bytes, bound: bytes) -> bytes:
    if len(blob) < 1 + NONCE_BYTES + 16 or blob[:1] != FORMAT:
        raise PiiError("not a sealed value")
    box = key if isinstance(key, AESGCM) else AESGCM(key)
    try:
        return box.decrypt(blob[1:1 + NONCE_BYTES], blob[1 + NONCE_BYTES:], bound)
    except InvalidTag:
        raise PiiError("a sealed value does not open under its key (changed, moved or the wrong key)") from None


def parse_master_keys(spec: str) -> dict[str, bytes]:
    """``id:base64[,id:base64…]`` → {id: key}, in order (the first wraps)."""
    keys: dict[str, bytes] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        kid, sep, encoded = part.partition(":")
        if not sep or not KEY_ID.match(kid):
            raise PiiError("privacy.master_keys: each entry is id:base64 (id: letters, digits, _ . -, at most 32)")
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise PiiError(f"privacy.master_keys: key {kid!r} is not base64") from None
        if len(key) != KEY_BYTES:
            raise PiiError(f"privacy.master_keys: key {kid!r} is {len(key)} bytes, not {KEY_BYTES}")
        if kid in keys:
            raise PiiError(f"privacy.master_keys: key id {kid!r} given twice")
        keys[kid] = key
    if not keys:
        raise PiiError("privacy.master_keys: no key")
    return keys


def format_master_key(kid: str, key: bytes) -> str:
    return f"{kid}:{base64.b64encode(key).decode()}"


def normalized(channel: str, address: str) -> str:
    """The form the blind index hashes: email case-insensitively (what mailbox
    providers do in practice), a phone number without its separators (spaces,
    dashes, dots, brackets: Twilio writes ``+14155552671`` whatever the person
    typed), everything else as given, outer spaces dropped."""
    address = address.strip()
    if channel == "email":
        return address.lower()
    if channel in ("sms", "voice"):
        return PHONE_SEPARATORS.sub("", address)
    return address


class Keyring:
    """The master keys and, once loaded (``with_index``), the index key."""

    def __init__(self, masters: Mapping[str, bytes], index_key: bytes | None = None):
        if not masters:
            raise PiiError("privacy.master_keys: no key")
        self._masters = {kid: AESGCM(k) for kid, k in masters.items()}
        self.current = next(iter(masters))
        self._index_key = index_key

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        return cls(parse_master_keys(spec))

    def with_index(self, index_key: bytes) -> Keyring:
        ring = Keyring.__new__(Keyring)
        ring._masters, ring.current, ring._index_key = self._masters, self.current, index_key
        return ring

    @property
    def master_ids(self) -> tuple[str, ...]:
        return tuple(self._masters)

    def wrap(self, key: bytes, bound: bytes) -> tuple[str, bytes]:
        """(master id, the key sealed under the current master key)."""
        return self.current, seal(self._masters[self.current], key, bound)

    def unwrap(self, master_id: str, wrapped: bytes, bound: bytes) -> bytes:
        box = self._masters.get(master_id)
        if box is None:
            raise PiiError(f"master key {master_id!r} is not configured (privacy.master_keys)")
        return open_sealed(box, wrapped, bound)

    def blind(self, channel: str, address: str) -> bytes:
        """The keyed blind index of an address on a channel."""
        if self._index_key is None:
            raise PiiError("the index key is not loaded")
        msg = f"{channel}\x00{normalized(channel, address)}".encode()
        return hmac.new(self._index_key, msg, hashlib.sha256).digest()[:BLIND_BYTES]


def user_key_aad(user_id: str) -> bytes:
    return aad("user-key", user_id)


INDEX_KEY_AAD = aad("index-key", "")

__all__ = ["BLIND_BYTES", "INDEX_KEY_AAD", "KEY_BYTES", "Keyring", "PiiError", "aad", "format_master_key",
           "new_key", "normalized", "open_sealed", "parse_master_keys", "seal", "user_key_aad"]
