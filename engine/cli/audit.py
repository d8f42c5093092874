"""``tidings audit verify|checkpoint|public-key``: check the preference audit
log's hash chains (and the newest signed checkpoint), sign a checkpoint now, or
print the public key an auditor verifies checkpoints with (engine/audit.py)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine import audit as signed, migrations
from infra import db

console = Console()


def add_parser(sub) -> None:
    p = sub.add_parser("audit", help="the audit log: verify its chains and checkpoints, sign a checkpoint")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    v = verbs.add_parser("verify", help="walk every chain, check the newest checkpoint; exit 1 if anything is broken")
    v.add_argument("--user", help="only this user's chain")
    v.add_argument("--public-key", type=Path, action="append", default=[],
                   help="PEM public key to check checkpoints with, again for each key used before a rotation "
                        "(default: the engine's own signing key)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(run=cmd_verify)
    c = verbs.add_parser("checkpoint", help="sign and store every chain's last row now")
    c.add_argument("--json", action="store_true")
    c.add_argument("--rotate-key", action="store_true",
                   help="sign with this key although the last checkpoint was signed by another")
    c.set_defaults(run=cmd_checkpoint)
    k = verbs.add_parser("public-key", help="print the checkpoint signing key's public half (PEM)")
    k.set_defaults(run=cmd_public_key)


async def _connect(cfg):
    from engine.embedded import Services

    services = Services(cfg.engine.home, cfg.nats.url or "unused", cfg.database.url).start()
    try:
        await migrations.migrate_url(services.database_url, cfg.database.schema, cfg.database)
        conn = await db.connect(services.database_url, cfg.database, cfg.database.schema, app="tidings-audit",
                                long=True)
    except BaseException:
        services.stop()
        raise
    return services, conn


async def cmd_verify(cfg, args) -> int:
    publics = []
    for path in args.public_key:
        try:
            publics.append(signed.load_public(path.read_bytes()))
        except (OSError, ValueError) as e:
            raise SystemExit(f"tidings audit verify: {path}: {e}") from None
    if not publics:
        key = signed.signing_key(cfg.engine.home, create=False)
        publics = [key.public_key()] if key is not None else []
    services, conn = await _connect(cfg)
    try:
        report = await signed.verify(conn, publics, args.user, signed.max_age(cfg))
    finally:
        await conn.close()
        services.stop()
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0 if report.ok else 1
    cp = report.checkpoint
    console.print(f"{report.chains:,} chains, {report.rows:,} rows; " + (
        f"checkpoint {cp['id']} (up to row {cp['max_id']:,}, {cp['chains']:,} chains, key {cp['key_id']})"
        if cp else "no checkpoint checked" + ("" if publics else " (no signing key here: --public-key)")))
    if report.ok:
        console.print("[green]every chain verifies[/green]")
        return 0
    t = Table(title=f"{len(report.broken)} broken")
    for col in ("user", "first bad row", "problem"):
        t.add_column(col, overflow="fold")
    for b in report.broken:
        t.add_row(escape(b.user_id), str(b.row_id) if b.row_id is not None else "-", b.problem)
    console.print(t)
    return 1


async def cmd_checkpoint(cfg, args) -> int:
    key = signed.signing_key(cfg.engine.home)
    services, conn = await _connect(cfg)
    try:
        done = await signed.checkpoint(conn, key, rotate=args.rotate_key)
    except signed.KeyMismatch as e:
        raise SystemExit(f"tidings audit checkpoint: {e}") from None
    finally:
        await conn.close()
        services.stop()
    if args.json:
        print(json.dumps(done))
    else:
        console.print(f"checkpoint {done['id']}: {done['chains']:,} chains up to row {done['max_id']:,}, "
                      f"signed with key {done['key_id']}")
    return 0


async def cmd_public_key(cfg, args) -> int:
    key = signed.signing_key(cfg.engine.home)
    print(signed.public_pem(key.public_key()), end="")
    return 0
