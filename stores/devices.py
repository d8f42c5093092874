"""Users' devices in PostgreSQL (``user_devices``, policy/devices.py): tokens
sealed under each user's key, with a blind index so a token registered by a new
user leaves the old one (one device, one owner: a phone that changes hands).
Writers are the owning UserShard (the devices are part of the user's state), in
the transaction that refreshes ``users.state``."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import asyncpg

from infra import db
from infra.pii import Keyring, PiiError, aad, open_sealed, seal
from policy.types import CHANNEL_OF, Device

# a suppressed token (POST /v1/suppressions, on the device's channel) is left out
LOAD = ("SELECT user_id, device_id, service, platform, app, kind, sealed, extract(epoch FROM last_seen_at) "
        f"FROM user_devices d WHERE user_id = {db.keys(1, 'text')} AND NOT EXISTS (SELECT 1 FROM suppressions s "
        "WHERE s.channel = CASE d.service WHEN 'webpush' THEN 'web' ELSE 'push' END AND s.blind = d.blind) "
        "ORDER BY user_id, device_id")


def blind_of(ring: Keyring, d: Device) -> bytes:
    """The token's blind index, in its channel's domain: the same as a suppression
    of that token on the channel (``stores.users.suppress``)."""
    return ring.blind(CHANNEL_OF[d.service], d.token)


async def lock_blind(conn: asyncpg.Connection, blind: bytes) -> None:
    """Serialize every write about one token (transaction-scoped): a registration,
    a suppression. Two users registering the same phone at once cannot both keep
    it, and a suppression sees who holds it."""
    key = int.from_bytes(hashlib.blake2b(blind, digest_size=8).digest(), "big", signed=True)
    await conn.execute("SELECT pg_advisory_xact_lock($1)", key)


async def lock_token(conn: asyncpg.Connection, ring: Keyring, d: Device) -> None:
    await lock_blind(conn, blind_of(ring, d))


async def unchanged(conn: asyncpg.Connection, ring: Keyring, user_id: str, d: Device) -> float | None:
    """When ``d`` is stored as it is (same token and fields), when it was last
    seen (seconds since the epoch); else None."""
    r = await conn.fetchrow("SELECT extract(epoch FROM last_seen_at) FROM user_devices WHERE user_id = $1 "
                            "AND device_id = $2 AND service = $3 AND platform = $4 AND app = $5 AND kind = $6 "
                            "AND blind = $7", user_id, d.device_id, d.service, d.platform, d.app, d.kind,
                            blind_of(ring, d))
    return None if r is None else float(r[0])


def _aad(user_id: str, device_id: str) -> bytes:
    return aad("device", user_id, device_id)


async def load(conn: asyncpg.Connection, keys: Mapping[str, bytes], user_ids: Sequence[str]) -> dict[str, list[Device]]:
    """Each user's devices, tokens opened (one that does not open is left out)."""
    out: dict[str, list[Device]] = {}
    for uid, did, service, platform, app, kind, sealed, seen in await conn.fetch(LOAD, list(user_ids)):
        key = keys.get(uid)
        if key is None:
            continue
        try:
            token = open_sealed(key, sealed, _aad(uid, did)).decode()
        except PiiError:
            continue
        out.setdefault(uid, []).append(Device(device_id=did, service=service, token=token, platform=platform,
                                              app=app, kind=kind, last_seen=float(seen)))
    return out


async def holders(conn: asyncpg.Connection, ring: Keyring, user_id: str, d: Device) -> list[str]:
    """The other users with a device of ``d``'s token (``put`` takes it from them)."""
    rows = await conn.fetch("SELECT DISTINCT user_id FROM user_devices WHERE service = $1 AND blind = $2 "
                            "AND user_id <> $3", d.service, blind_of(ring, d), user_id)
    return sorted(r[0] for r in rows)


async def touch(conn: asyncpg.Connection, user_id: str, device_id: str) -> None:
    """A device seen again, nothing else changed: its last seen now."""
    await conn.execute("UPDATE user_devices SET last_seen_at = now() WHERE user_id = $1 AND device_id = $2",
                       user_id, device_id)


async def put(conn: asyncpg.Connection, ring: Keyring, key: bytes, user_id: str, d: Device) -> list[str]:
    """Register or refresh ``d`` (last seen now); the same token on another
    device (another user's, or another id of this user's) is taken from it.
    Returns the other users it was taken from. The caller holds every one's
    user row locked (``holders`` first) and refreshes their states."""
    blind = blind_of(ring, d)
    taken = await conn.fetch("DELETE FROM user_devices WHERE service = $1 AND blind = $2 "
                             "AND NOT (user_id = $3 AND device_id = $4) RETURNING user_id", d.service, blind, user_id,
                             d.device_id)
    await conn.execute(
        "INSERT INTO user_devices (user_id, device_id, service, platform, app, kind, sealed, blind) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (user_id, device_id) DO UPDATE SET "
        "service = EXCLUDED.service, platform = EXCLUDED.platform, app = EXCLUDED.app, kind = EXCLUDED.kind, "
        "sealed = EXCLUDED.sealed, blind = EXCLUDED.blind, last_seen_at = now()",
        user_id, d.device_id, d.service, d.platform, d.app, d.kind, seal(key, d.token.encode(), _aad(user_id, d.device_id)),
        blind)
    return sorted({r[0] for r in taken if r[0] != user_id})


async def keep_newest(conn: asyncpg.Connection, user_id: str, most: int) -> int:
    """Remove a user's devices beyond the ``most`` seen most recently; how many."""
    rows = await conn.fetch("DELETE FROM user_devices WHERE user_id = $1 AND device_id IN (SELECT device_id FROM "
                            "user_devices WHERE user_id = $1 ORDER BY last_seen_at DESC, device_id OFFSET $2) "
                            "RETURNING device_id", user_id, most)
    return len(rows)


async def remove(conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Remove (user, device) pairs; those that were there."""
    if not pairs:
        return []
    rows = await conn.fetch("DELETE FROM user_devices d USING unnest($1::text[], $2::text[]) AS p(u, i) "
                            "WHERE d.user_id = p.u AND d.device_id = p.i RETURNING d.user_id, d.device_id",
                            [u for u, _ in pairs], [i for _, i in pairs])
    return [(r[0], r[1]) for r in rows]


__all__ = ["blind_of", "holders", "keep_newest", "load", "lock_blind", "lock_token", "put", "remove", "touch",
           "unchanged"]
