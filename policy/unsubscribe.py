"""One-click unsubscribe (RFC 8058): the token in ``{base}/u/{token}``.

A token names one person, one category and one channel, and is sealed with
AES-SIV (RFC 5297, from ``cryptography``) under a key derived from the
engagement secret. SIV is authenticated encryption without a nonce:
- the URL shows nothing of the user id, which a plain HMAC-signed token would carry
  in the clear;
- a token cannot be forged or altered (its synthetic IV is a CMAC over the
  contents);
- sealing is deterministic, so the planner needs no randomness or clock, and one
  person's link for one category is always the same.

Tokens do not expire: a message stays in a mailbox, and RFC 8058 expects its link
to work for as long.
"""

from __future__ import annotations

import binascii
import functools

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from policy.links import b64url, unb64url

DOMAIN = b"tidings.unsubscribe.v1"  # bound into every token: no other use of the key opens one
MAX_TOKEN = 1024  # characters; longer is not ours (ids and categories are bounded)


class Target(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """What a token opts out of."""

    user_id: str
    category: str
    channel: str


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Target).decode


@functools.lru_cache(maxsize=8)
def _cipher(secret: bytes) -> AESSIV:
    key = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=DOMAIN).derive(secret)
    return AESSIV(key)  # AES-256-SIV


def _seal(secret: bytes, value: msgspec.Struct, domain: bytes) -> str:
    return b64url(_cipher(secret).encrypt(_encode(value), [domain]))


def _open(secret: bytes, token: str, domain: bytes, decode):
    """What a token sealed under ``secret`` for ``domain`` holds, else None
    (whatever is wrong with it)."""
    if not token or len(token) > MAX_TOKEN:
        return None
    try:
        return decode(_cipher(secret).decrypt(unb64url(token), [domain]))
    except (InvalidTag, ValueError, binascii.Error, msgspec.DecodeError):
        return None


def seal(secret: bytes, user_id: str, category: str, channel: str) -> str:
    return _seal(secret, Target(user_id, category, channel), DOMAIN)


def open_token(secret: bytes, token: str) -> Target | None:
    """The target of a token sealed under ``secret``, else None."""
    return _open(secret, token, DOMAIN, _decode)


CENTER = b"tidings.center.v1"  # the preference center's links: a token of one kind never opens as the other


class CenterLink(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """Whose preference center a link opens, and until when (epoch seconds)."""

    user_id: str
    expires_at: int


_decode_center = msgspec.msgpack.Decoder(CenterLink).decode


def seal_center(secret: bytes, user_id: str, expires_at: int) -> str:
    return _seal(secret, CenterLink(user_id, expires_at), CENTER)


def open_center(secret: bytes, token: str, now: float) -> CenterLink | None:
    """The link's person while it has not expired at ``now``, else None."""
    link = _open(secret, token, CENTER, _decode_center)
    return link if link is not None and now < link.expires_at else None


class UnsubscribeRules(msgspec.Struct, frozen=True):
    """How the planner makes an email's one-click unsubscribe URL
    (``policy.plan``): the public base of the HTTP API and the secret."""

    secret: bytes
    base_url: str

    center_days: int = 30  # how long a preference center link opens

    def url(self, user_id: str, category: str, channel: str) -> str:
        return f"{self.base_url.rstrip('/')}/u/{seal(self.secret, user_id, category, channel)}"

    def center_url(self, user_id: str, now: float) -> str:
        """The person's preference center until ``center_days`` after ``now``
        (rounded up to the day: one link per person per day)."""
        expires = (int(now) // 86400 + 1 + self.center_days) * 86400
        return f"{self.base_url.rstrip('/')}/p/{seal_center(self.secret, user_id, expires)}"


__all__ = ["CenterLink", "Target", "UnsubscribeRules", "open_center", "open_token", "seal", "seal_center"]
