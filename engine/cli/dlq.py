"""``tidings dlq list|show|replay``: the dead letters (messages the engine could
not process, or could never decode), and replaying them onto the work stream.

A replay is once per dead letter (claimed in ``dead_letter_replays`` in the
transaction that republishes it, which is also its audit record: who, when)
and keeps the notification's id (``infra.dead_letters``), so channels the
engine had recorded are not sent again. The engine need not be running: what
is replayed waits in the work stream.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import time
from collections.abc import AsyncIterator

import nats
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine import migrations
from infra import db, dead_letters, streams
from infra.config import Config
from infra.dead_letters import DeadLetter
from stores import replays

console = Console()


def add_parser(sub) -> None:
    p = sub.add_parser("dlq", help="dead letters: list, show one, replay (once each, audited)")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    ls = verbs.add_parser("list", help="the dead letters, oldest first: reason, subject, replayed or not")
    ls.add_argument("--reason", help="only those dead-lettered for this reason (e.g. processing.failed)")
    ls.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    ls.add_argument("--json", action="store_true", help="JSON lines, one per dead letter")
    ls.set_defaults(run=cmd_list)
    show = verbs.add_parser("show", help="one dead letter with its payload")
    show.add_argument("seq", type=_seq, help="its sequence in the dead-letter stream (from `dlq list`)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=cmd_show)
    replay = verbs.add_parser("replay", help="publish dead letters again on their subjects, each once")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("seqs", nargs="*", type=_seq, default=[], metavar="SEQ", help="these dead letters")
    which.add_argument("--reason", help="every dead letter with this reason")
    which.add_argument("--all", action="store_true", help="every dead letter")
    replay.add_argument("--dry-run", action="store_true", help="say what would be replayed; replay nothing")
    replay.add_argument("--json", action="store_true", help="print the counts as JSON")
    replay.set_defaults(run=cmd_replay)


def _seq(text: str) -> int:
    """A dead letter's sequence: stream sequences start at 1."""
    try:
        seq = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a sequence number: {text!r}") from None
    if seq < 1:
        raise argparse.ArgumentTypeError(f"sequences start at 1, not {seq}")
    return seq


@contextlib.asynccontextmanager
async def connected(cfg: Config) -> AsyncIterator[tuple]:
    """(JetStream, PostgreSQL connection), embedded servers started if configured so."""
    from engine.embedded import Services

    services = Services(cfg.engine.home, cfg.nats.url, cfg.database.url, cfg.nats.embedded_port).start()
    try:
        await migrations.migrate_url(services.database_url, cfg.database.schema, cfg.database)
        nc = await nats.connect(services.nats_url, name="tidings-dlq", max_reconnect_attempts=2)
        try:
            conn = await db.connect(services.database_url, cfg.database, cfg.database.schema, app="tidings-dlq")
            try:
                yield nc.jetstream(), conn
            finally:
                await conn.close()
        finally:
            await nc.close()
    finally:
        services.stop()


def _row(letter: DeadLetter, replayed: tuple[str, float] | None) -> dict:
    return {"seq": letter.seq, "at": letter.at.timestamp() if letter.at else None, "reason": letter.reason,
            "subject": letter.subject, "origin_seq": letter.origin_seq, "error": letter.error,
            "replayed_by": replayed[0] if replayed else None, "replayed_at": replayed[1] if replayed else None}


async def cmd_list(cfg: Config, args) -> int:
    if args.limit < 1:
        raise SystemExit("tidings dlq list: --limit must be at least 1")
    async with connected(cfg) as (js, conn):
        letters = []
        async for letter in dead_letters.scan(js, cfg.nats, args.reason):
            letters.append(letter)
            if len(letters) >= args.limit:
                break
        done = await replays.replayed(conn, streams.dlq_stream(cfg.nats), [(x.seq, x.at) for x in letters])
    rows = [_row(x, done.get(x.seq)) for x in letters]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    t = Table(title=f"dead letters{f' ({args.reason})' if args.reason else ''}: {len(rows)} shown")
    for col in ("seq", "dead-lettered", "reason", "subject", "origin seq", "replayed", "error"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(str(r["seq"]), _when(r["at"]), r["reason"], r["subject"], str(r["origin_seq"]),
                  f"{r['replayed_by']} {_when(r['replayed_at'])}" if r["replayed_by"] else "-",
                  escape(r["error"][:120]))
    console.print(t)
    return 0


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) if at else "-"


async def cmd_show(cfg: Config, args) -> int:
    async with connected(cfg) as (js, conn):
        letter = await dead_letters.get(js, cfg.nats, args.seq)
        if letter is None:
            raise SystemExit(f"tidings dlq show: no dead letter {args.seq}")
        done = await replays.replayed(conn, streams.dlq_stream(cfg.nats), [(letter.seq, letter.at)])
    row = _row(letter, done.get(letter.seq))
    payload = letter.data.decode("utf-8", "replace")
    if args.json:
        print(json.dumps({**row, "payload": payload}))
        return 0
    for k, v in row.items():
        console.print(f"[bold]{k}[/bold]: {escape(str(_when(v) if k.endswith('_at') or k == 'at' else v))}",
                      highlight=False)
    console.print("[bold]payload[/bold]:", highlight=False)
    console.print(escape(payload), highlight=False, soft_wrap=True)
    return 0


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # a container's uid with no passwd entry and no USER
        return f"cli:uid-{os.getuid()}"


async def cmd_replay(cfg: Config, args) -> int:
    actor = _actor()
    counts = {"replayed": 0, "already_replayed": 0, "refused": 0, "missing": 0}
    async with connected(cfg) as (js, conn):
        stream = streams.dlq_stream(cfg.nats)
        async for letter in _selected(js, cfg, args, counts):
            why = dead_letters.replayable(cfg.nats, letter)
            if why is not None:
                counts["refused"] += 1
                console.print(f"dead letter {letter.seq} not replayed: {escape(why)}", highlight=False)
                continue
            if args.dry_run:
                done = await replays.replayed(conn, stream, [(letter.seq, letter.at)])
                counts["already_replayed" if done else "replayed"] += 1
                continue
            # claimed (committed) first, so the audit record cannot be lost to a failure
            # after the publish; a claim left unpublished is published by the next replay
            if not await replays.claim(conn, stream, letter.seq, letter.at, letter.reason, letter.subject,
                                       letter.origin_seq, actor):
                counts["already_replayed"] += 1
                continue
            new_seq = await dead_letters.republish(js, cfg.nats, letter)
            await replays.published(conn, stream, letter.seq, letter.at, new_seq)
            counts["replayed"] += 1
    if args.json:
        print(json.dumps(counts))
    else:
        verb = "would replay" if args.dry_run else "replayed"
        console.print(f"{verb} {counts['replayed']}; already replayed {counts['already_replayed']}; "
                      f"refused {counts['refused']}; not found {counts['missing']}", highlight=False)
    return 0


async def _selected(js, cfg: Config, args, counts: dict[str, int]) -> AsyncIterator[DeadLetter]:
    """The letters asked for, one at a time (``--all`` need not fit in memory)."""
    if args.seqs:
        for seq in args.seqs:
            letter = await dead_letters.get(js, cfg.nats, seq)
            if letter is None:
                counts["missing"] += 1
            else:
                yield letter
        return
    async for letter in dead_letters.scan(js, cfg.nats, None if args.all else args.reason):
        yield letter
