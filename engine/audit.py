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


def signing_key(home: str | Path, environ: dict | None = None, create: bool = True) -> Ed25519PrivateKey | None:
    """The checkpoint signing key: the environment's, else the one in ``home``,
    made there (0600, never through a link) if ``create`` and there is none."""
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV):
        return _private(env[KEY_ENV].encode())
    path = Path(home).resolve() / KEY_FILE
    try:
        return _private(path.read_bytes())
    except FileNotFoundError:
        if not create:
            return None
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return _private(path.read_bytes())
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def _private(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"the audit signing key is not an Ed25519 key ({KEY_ENV} or {KEY_FILE})")
    return key


async def checkpoint(conn: asyncpg.Connection, key: Ed25519PrivateKey) -> dict:
    """Sign and store the heads of every chain now. Returns what was stored."""
    async with conn.transaction(isolation="repeatable_read"):  # the heads and max_id of one moment
        max_id, heads = await audit.current_heads(conn)
        digest = audit.heads_digest(max_id, heads)
        cid = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('audit_checkpoints', 'id'))")
        signature = key.sign(audit.signed_payload(cid, max_id, len(heads), digest))
        await conn.execute(
            "INSERT INTO audit_checkpoints (id, max_id, chains, digest, key_id, signature) "
            "VALUES ($1, $2, $3, $4, $5, $6)", cid, max_id, len(heads), digest, key_id(key.public_key()), signature)
        await conn.copy_records_to_table("audit_checkpoint_heads", columns=(
            "checkpoint_id", "user_id", "head_id", "head_hash"), records=[(cid, u, i, h) for u, i, h in heads])
    return {"id": cid, "max_id": max_id, "chains": len(heads), "key_id": key_id(key.public_key())}


async def verify(conn: asyncpg.Connection, public: Ed25519PublicKey | None,
                 user_id: str | None = None) -> audit.Report:
    """Every chain (or one user's), against the newest checkpoint when there is a
    key to check it with. A checkpoint that does not verify is itself reported."""
    heads, problem, row = None, None, None
    if public is not None:
        row = await conn.fetchrow("SELECT id, max_id, chains, digest, key_id, signature, created_at "
                                  "FROM audit_checkpoints ORDER BY id DESC LIMIT 1")
    if row is not None:
        stored = [(r[0], r[1], r[2]) for r in await conn.fetch(
            "SELECT user_id, head_id, head_hash FROM audit_checkpoint_heads WHERE checkpoint_id = $1", row["id"])]
        digest = audit.heads_digest(row["max_id"], stored)
        try:
            public.verify(row["signature"], audit.signed_payload(row["id"], row["max_id"], row["chains"],
                                                                  row["digest"]))
        except InvalidSignature:
            problem = "its signature does not verify with this key (the checkpoint was altered or made by another key)"
        else:
            if digest != row["digest"] or len(stored) != row["chains"]:
                problem = "its heads are not the ones signed (the heads table was altered)"
            else:
                heads = {u: (i, h) for u, i, h in stored}
    report = await audit.verify(conn, user_id, heads)
    if row is not None:
        report.checkpoint = {"id": row["id"], "max_id": row["max_id"], "chains": row["chains"],
                             "key_id": row["key_id"], "at": row["created_at"].timestamp(), "valid": problem is None}
    if problem is not None:
        report.broken.insert(0, audit.Break("*", None, f"checkpoint {row['id']}: {problem}"))
    return report
