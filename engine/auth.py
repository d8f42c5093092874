"""Who is calling: API keys with scopes, and short-lived end-user tokens.

An API key is ``tdk_<id>_<secret>``: ``id`` is public (it names the key in
lists, logs and the audit log), ``secret`` is 256 random bits of which only a
SHA-256 is stored (a fast hash is enough for a secret of that size: there is
nothing to brute-force). A key carries scopes; ``admin`` holds them all.

An end-user token is a JWT (HS256, PyJWT) for one user: ``sub`` the user id,
``aud`` ``tidings:user``, ``exp`` at most ``http.token_ttl_max_s`` ahead, signed
with the newest signing key (``kid`` in the header). Every signing key not
retired verifies, so rotating (``tidings keys rotate-signing``) invalidates no
token in flight; retire old keys once the longest token has expired.

The first start with no key at all creates an ``admin`` key and writes it to
``<engine.home>/admin.key`` (mode 0600); the CLI, the demo and the benchmarks
read it from there (or ``TIDINGS_API_KEY``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import asyncpg
import jwt
import msgspec
from aiohttp import web

from stores import keys as key_store

PREFIX = "tdk_"
AUDIENCE = "tidings:user"
ISSUER = "tidings"
ADMIN_FILE = "admin.key"
KEY_ENV = "TIDINGS_API_KEY"

SCOPES: dict[str, str] = {
    "notifications:send": "submit notifications",
    "notifications:read": "read notifications' and broadcasts' outcomes",
    "notifications:cancel": "cancel notifications' held channels (any notification's, by its id)",
    "broadcasts:send": "send one message to every user",
    "decisions:read": "dry runs (with the send's own scope): how sends would be decided, which shows users' "
                      "preferences, consent and suppressions",
    "events:write": "report opens and clicks of any user's notifications",
    "users:read": "read users' profiles",
    "users:write": "create and change users' profiles (addresses, time zone, opt-outs)",
    "users:erase": "erase a user for good (GDPR Art. 17): their key destroyed, their data deleted",
    "users:hold": "place and lift legal holds, which refuse erasure",
    "suppressions:write": "suppress an address",
    "topics:read": "read topics' subscribers and the topics any user follows",
    "topics:write": "subscribe and unsubscribe any user to and from topics",
    "segments:read": "read saved segments and count the users in an audience",
    "segments:write": "save and delete segments (audience filters)",
    "preferences:read": "read any user's preferences, their history and exports",
    "preferences:write": "change any user's preferences and consent, import, apply templates",
    "templates:read": "read and preview message and preference templates",
    "templates:write": "create message and preference templates",
    "inbox:read": "read any user's in-app inbox",
    "inbox:write": "mark any user's in-app messages read or seen",
    "analytics:read": "channel analytics",
    "experiments:read": "read A/B experiments and their results",
    "experiments:write": "start, stop and archive A/B experiments (they change what a category's notifications say, "
                         "when and where they go)",
    "subscriptions:read": "read webhook subscriptions to status events and their dead letters",
    "subscriptions:write": "create, change and delete webhook subscriptions to status events, replay dead letters",
    "tokens:issue": "mint end-user tokens",
    "ops:read": "/readyz and /metrics (when http.ops_access = \"scope\")",
    "admin": "everything",
}


class Principal(msgspec.Struct, frozen=True):
    """An authenticated caller: an API key (``kind`` "key", ``id`` the key id) or
    an end-user token (``kind`` "user", ``id`` the user id)."""

    kind: str
    id: str
    name: str = ""
    scopes: frozenset[str] = frozenset()
    owner: str = ""  # a key's rotation chain; a user's own id

    @property
    def scope_id(self) -> str:
        """What a caller's idempotency keys belong to: it survives key rotation."""
        return f"{self.kind}:{self.owner or self.id}"

    def allows(self, scope: str) -> bool:
        return self.kind == "key" and ("admin" in self.scopes or scope in self.scopes)

    @property
    def label(self) -> str:
        """How the audit log names it."""
        return f"key:{self.id}({self.name})" if self.kind == "key" else f"user:{self.id}"


# where the authorization middleware puts the caller on the request
PRINCIPAL = web.RequestKey("principal", Principal)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_key() -> tuple[str, str]:
    """(key id, the whole key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


_HEX = frozenset("0123456789abcdef")


def split(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None (no database is asked about
    anything that could not be a key)."""
    if not key.startswith(PREFIX) or len(key) > 128 or not key.isascii():
        return None
    key_id, sep, secret = key[len(PREFIX):].partition("_")
    if not sep or len(key_id) != 12 or not set(key_id) <= _HEX or not secret:
        return None
    return key_id, secret


def check_scopes(scopes: list[str]) -> list[str]:
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError("a key needs at least one scope")
    return sorted(set(scopes))


async def create_key(conn: asyncpg.Connection, name: str, scopes: list[str],
                     owner: str | None = None) -> tuple[str, str]:
    """Store a new key; returns (id, key). The key is not kept: show it once.
    ``owner``: the rotation chain it continues (a new key starts its own)."""
    scopes = check_scopes(scopes)
    key_id, key = new_key()
    _, secret = split(key)  # type: ignore[misc]  # a key new_key made always splits
    await key_store.insert(conn, key_id, name, digest(secret), scopes, owner)
    return key_id, key


async def rotate_key(conn: asyncpg.Connection, key_id: str) -> tuple[str, str] | None:
    """A new key with the old one's name and scopes; the old one revoked, in one
    transaction. None if there is no such active key."""
    async with conn.transaction():
        old = await key_store.get(conn, key_id)
        if old is None or old.revoked_at is not None:
            return None
        new_id, key = await create_key(conn, old.name, list(old.scopes), owner=old.owner)
        await key_store.revoke(conn, key_id, rotated_to=new_id)
    return new_id, key


async def ensure_admin_key(pool: asyncpg.Pool, home: str | Path) -> Path | None:
    """On a first start (no key at all): create an admin key and write it to
    ``<home>/admin.key`` with mode 0600. Returns the path when it did."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tidings:bootstrap-key'))")
        if await conn.fetchval("SELECT count(*) FROM api_keys") > 0:
            return None
        _, key = await create_key(conn, "bootstrap-admin", ["admin"])
        path = Path(home).resolve() / ADMIN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        # a file left from an older database (or a planted link) is replaced, never
        # followed: the key is written only into a file created here, 0600 from the start
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
    return path


def read_admin_key(home: str | Path, environ: dict | None = None) -> str | None:
    """``TIDINGS_API_KEY``, else the key a first start wrote under ``home``."""
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV):
        return env[KEY_ENV].strip()
    try:
        return (Path(home) / ADMIN_FILE).read_text().strip() or None
    except OSError:
        return None


def key_goes_to(url: str) -> bool:
    """Whether a key may be sent to ``url`` unasked: over https, or to a loopback
    address; never in clear text across a network."""
    parts = urllib.parse.urlsplit(url)
    try:
        loopback = parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        loopback = False
    return parts.scheme == "https" or loopback


async def ensure_signing_key(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tidings:signing-key'))")
        if not await key_store.signing_keys(conn):
            await key_store.add_signing_key(conn, secrets.token_hex(8), secrets.token_bytes(32))


async def rotate_signing_key(conn: asyncpg.Connection) -> str:
    kid = secrets.token_hex(8)
    await key_store.add_signing_key(conn, kid, secrets.token_bytes(32))
    return kid


class Authenticator:
    """Checks bearer credentials for the HTTP process. Key rows are cached for
    ``cache_s`` (a revocation bites within that); signing keys are re-read every
    ``SIGNING_REFRESH_S`` and when a token names a kid not seen yet (at most once
    a second)."""

    SIGNING_REFRESH_S = 30.0

    def __init__(self, pool: asyncpg.Pool, cache_s: float, ttl_max_s: float,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.pool, self.cache_s, self.ttl_max_s = pool, cache_s, ttl_max_s
        self.clock, self.wall = clock, wall
        self._keys: dict[str, tuple[float, key_store.KeyRow | None]] = {}
        self._unknown: dict[str, tuple[float, key_store.KeyRow | None]] = {}
        self._signing: list[tuple[str, bytes, float]] = []
        self._signing_at = -1e18
        self._unknown_kid_at = -1e18

    async def key(self, bearer: str) -> Principal | None:
        parts = split(bearer)
        if parts is None:
            return None
        key_id, secret = parts
        now = self.clock()
        cached = self._keys.get(key_id) or self._unknown.get(key_id)
        if cached is None or now - cached[0] > self.cache_s:
            cached = (now, await key_store.get(self.pool, key_id))
            # unknown ids go to their own bounded map: a flood of made-up ids
            # neither grows memory nor evicts the keys in use
            table = self._keys if cached[1] is not None else self._unknown
            if len(table) >= 10_000:
                table.pop(next(iter(table)))
            table[key_id] = cached
        row = cached[1]
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.hash, digest(secret)):
            return None
        return Principal("key", row.id, row.name, frozenset(row.scopes), row.owner)

    async def _signing_keys(self, want: str | None = None) -> list[tuple[str, bytes, float]]:
        now = self.clock()
        stale = now - self._signing_at > self.SIGNING_REFRESH_S
        unknown = want is not None and all(kid != want for kid, _, _ in self._signing) \
            and now - self._unknown_kid_at > 1.0
        if stale or unknown:
            if unknown:
                self._unknown_kid_at = now
            self._signing = await key_store.signing_keys(self.pool)
            self._signing_at = now
        return self._signing

    async def mint(self, user_id: str, ttl_s: float) -> tuple[str, float]:
        """A token for ``user_id`` valid ``ttl_s`` (capped at ``ttl_max_s``); (token, expiry)."""
        signing = await self._signing_keys()
        if not signing:
            raise RuntimeError("no token signing key: the engine creates one at start")
        kid, secret, _ = signing[0]
        now = self.wall()
        exp = now + min(ttl_s, self.ttl_max_s)
        token = jwt.encode({"sub": user_id, "aud": AUDIENCE, "iss": ISSUER, "iat": int(now), "exp": int(exp),
                            "jti": secrets.token_hex(8)}, secret, algorithm="HS256", headers={"kid": kid})
        return token, float(int(exp))

    async def token(self, token: str) -> Principal | None:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except (jwt.PyJWTError, ValueError):
            return None
        if not isinstance(kid, str):
            return None
        secret = next((s for k, s, _ in await self._signing_keys(kid) if k == kid), None)
        if secret is None:
            return None
        try:
            claims = jwt.decode(token, secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER,
                                options={"require": ["exp", "sub", "aud", "iss"]})
        except (jwt.PyJWTError, ValueError):
            return None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or float(claims["exp"]) - float(claims.get("iat", 0)) > \
                self.ttl_max_s + 1:
            return None
        return Principal("user", sub)

    async def authenticate(self, bearer: str) -> Principal | None:
        """A key or a token, whichever ``bearer`` is; None when it is neither valid
        (both are ASCII: anything else is refused before it is parsed)."""
        if not bearer.isascii() or len(bearer) > 4096:
            return None
        if bearer.startswith(PREFIX):
            return await self.key(bearer)
        return await self.token(bearer)


__all__ = ["AUDIENCE", "Authenticator", "KEY_ENV", "Principal", "SCOPES", "check_scopes", "create_key",
           "ensure_admin_key", "ensure_signing_key", "key_goes_to", "read_admin_key", "rotate_key", "rotate_signing_key"]
