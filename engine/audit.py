"""Signed checkpoints of the audit log, and verifying the log against them.

A chain walk (``stores.audit.verify``) proves each chain is intact from its first
row to its last; it cannot tell that the last rows, or a whole chain, were
removed. A checkpoint records every chain's last row at one moment and signs
the digest of them all with an Ed25519 key that lives outside the database:
whoever can write to PostgreSQL can rewrite the heads table but cannot sign a
new digest. Verifying checks the newest checkpoint's signature, that its heads
are the ones signed, then that each head is still a row of its chain.

The signing key is ``TIDINGS_AUDIT_SIGNING_KEY`` (a PEM private key) or
``<engine.home>/audit-signing.key``, made (mode 0600) the first time a checkpoint
is taken. An auditor needs only the public key (``tidings audit public-key``),
given to ``tidings audit verify --public-key FILE``. Rows after the newest
checkpoint are covered by the chains alone: take checkpoints as often as a
silently cut tail would matter (``audit.checkpoint_every_s``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import asyncpg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engine import secret_files
from stores import audit

KEY_FILE = "audit-signing.key"
KEY_ENV = "TIDINGS_AUDIT_SIGNING_KEY"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


class KeyMismatch(ValueError):
    """The checkpoints so far were signed by another key."""


def signing_key(home: str | Path, environ: dict | None = None, create: bool = True) -> Ed25519PrivateKey | None:
    """The checkpoint signing key: the environment's, else the one in ``home``,
    made there (``engine.secret_files``) if ``create`` and there is none."""
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV):
        return _private(env[KEY_ENV].encode())
    path = Path(home).resolve() / KEY_FILE
    if not create:
        try:
            return _private(secret_files.read(path))
        except FileNotFoundError:
            return None
    pem, _ = secret_files.read_or_create(path, lambda: Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return _private(pem)


def _private(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"the audit signing key is not an Ed25519 key ({KEY_ENV} or {KEY_FILE})")
    return key


LOCK = "tidings:audit-checkpoint"


def max_age(cfg) -> float:
    """How old rows outside every checkpoint may be before verify says so: two
    checkpoint intervals and five minutes (0: checkpoints are not taken on a timer)."""
    every = cfg.audit.checkpoint_every_s
    return 2 * every + 300 if every > 0 else 0.0


CHECKPOINTS = ("SELECT id, created_at, max_id, chains, digest, prev_id, prev_digest, key_id, signature "
               "FROM audit_checkpoints ORDER BY id")


async def checkpoint(conn: asyncpg.Connection, key: Ed25519PrivateKey, rotate: bool = False) -> dict:
    """Sign and store the heads of every chain now, chained to the checkpoint
    before it; the older checkpoints' heads are dropped (verify reads the
    newest's). Refuses (``KeyMismatch``) a key other than the last checkpoint's
    unless ``rotate``: a forgotten ``TIDINGS_AUDIT_SIGNING_KEY`` would otherwise
    start a chain no verifier holds the key to."""
    kid = key_id(key.public_key())
    async with conn.transaction(isolation="repeatable_read"):  # the heads and max_id of one moment
        await conn.execute("SET LOCAL statement_timeout = '15min'")  # the heads of a big log take a while
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", LOCK)  # one at a time
        prev = await conn.fetchrow("SELECT id, digest, key_id FROM audit_checkpoints ORDER BY id DESC LIMIT 1")
        if prev is not None and prev["key_id"] != kid and not rotate:
            raise KeyMismatch(f"the checkpoints so far are signed by key {prev['key_id']}, this key is {kid} "
                              f"(set {KEY_ENV}, or rotate on purpose: tidings audit checkpoint --rotate-key)")
        max_id, heads = await audit.current_heads(conn)
        digest = audit.heads_digest(max_id, heads)
        cid = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('audit_checkpoints', 'id'))")
        prev_id, prev_digest = (prev["id"], prev["digest"]) if prev is not None else (None, None)
        signature = key.sign(audit.signed_payload(cid, max_id, len(heads), digest, prev_id, prev_digest))
        await conn.execute(
            "INSERT INTO audit_checkpoints (id, max_id, chains, digest, prev_id, prev_digest, key_id, signature) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", cid, max_id, len(heads), digest, prev_id, prev_digest, kid,
            signature)
        await conn.copy_records_to_table("audit_checkpoint_heads", columns=(
            "checkpoint_id", "user_id", "head_id", "head_hash"), records=[(cid, u, i, h) for u, i, h in heads])
        await conn.execute("DELETE FROM audit_checkpoint_heads WHERE checkpoint_id < $1", cid)
    return {"id": cid, "max_id": max_id, "chains": len(heads), "key_id": kid}


async def rows_since_checkpoint(conn: asyncpg.Connection) -> bool:
    """Whether the log has rows the newest checkpoint does not cover (none yet: any row)."""
    return await conn.fetchval("SELECT COALESCE(max(id), 0) > (SELECT COALESCE(max(max_id), 0) FROM "
                               "audit_checkpoints) FROM preference_audit_log")


def _sequence_problems(checkpoints: list, publics: dict[str, Ed25519PublicKey]) -> tuple[list[str], int]:
    """Each checkpoint following the one before it, and signed by the key it
    names. A checkpoint signed by a key not given (one from before a rotation) is
    not checked, except the newest; the signature of the first later checkpoint
    whose key is given covers its digest all the same. Returns (problems, unchecked)."""
    problems, unchecked = [], 0
    for i, cp in enumerate(checkpoints):
        before = checkpoints[i - 1] if i else None
        if before is None and cp["prev_id"] is not None:
            problems.append(f"checkpoint {cp['id']}: the checkpoints before it are gone")
        elif before is not None and (cp["prev_id"], cp["prev_digest"]) != (before["id"], before["digest"]):
            problems.append(f"checkpoint {cp['id']}: does not follow checkpoint {before['id']} "
                            "(checkpoints removed or inserted between them)")
        public = publics.get(cp["key_id"])
        if public is None:
            if i == len(checkpoints) - 1:
                problems.append(f"checkpoint {cp['id']} (the newest): signed by key {cp['key_id']}, "
                                f"not one given ({', '.join(publics)})")
            unchecked += 1
            continue
        try:
            public.verify(cp["signature"], audit.signed_payload(cp["id"], cp["max_id"], cp["chains"], cp["digest"],
                                                                cp["prev_id"], cp["prev_digest"]))
        except InvalidSignature:
            problems.append(f"checkpoint {cp['id']}: its signature does not verify (the checkpoint was altered)")
    return problems, unchecked


async def verify(conn: asyncpg.Connection, publics: list[Ed25519PublicKey], user_id: str | None = None,
                 max_age_s: float = 0.0) -> audit.Report:
    """Every chain (or one user's), against the checkpoints when there are
    ``publics`` (public keys) to check them with: every checkpoint in sequence and signed, the newest's
    heads the ones signed and each still its chain's row. ``max_age_s`` (twice the
    checkpoint interval): rows older than that not covered by any checkpoint are
    reported, since the newest checkpoints may have been removed."""
    heads, problems, newest, unchecked = None, [], None, 0
    if publics:
        checkpoints = list(await conn.fetch(CHECKPOINTS))
        problems, unchecked = _sequence_problems(checkpoints, {key_id(k): k for k in publics})
        newest = checkpoints[-1] if checkpoints else None
        if newest is not None and not problems:
            stored = [(r[0], r[1], r[2]) for r in await conn.fetch(
                "SELECT user_id, head_id, head_hash FROM audit_checkpoint_heads WHERE checkpoint_id = $1",
                newest["id"])]
            if audit.heads_digest(newest["max_id"], stored) != newest["digest"] or len(stored) != newest["chains"]:
                problems.append(f"checkpoint {newest['id']}: its heads are not the ones signed "
                                "(the heads table was altered)")
            else:
                heads = {u: (i, h) for u, i, h in stored}
        if max_age_s > 0:
            uncovered = await conn.fetchval(
                "SELECT min(created_at) FROM preference_audit_log WHERE id > $1", newest["max_id"] if newest else 0)
            if uncovered is not None and (await conn.fetchval("SELECT now()") - uncovered).total_seconds() > max_age_s:
                problems.append(f"rows since {uncovered.isoformat()} are in no checkpoint, older than "
                                f"{max_age_s:.0f} s: newer checkpoints were removed, or none are being taken")
    report = await audit.verify(conn, user_id, heads)
    if newest is not None:
        report.checkpoint = {"id": newest["id"], "max_id": newest["max_id"], "chains": newest["chains"],
                             "key_id": newest["key_id"], "at": newest["created_at"].timestamp(),
                             "valid": not problems, "unchecked_older": unchecked}
    report.broken[:0] = [audit.Break("*", None, p) for p in problems]
    return report
