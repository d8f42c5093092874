"""``tidings``: run the engine, send notifications, look one up, cancel one, migrate; bulk
preferences, credentials, retention and analytics from their own modules.

More commands come from installed packages through the entry-point group
``tidings.commands`` (the demo and the load harness in ``bench``): each entry
point is a function that adds its subparsers, so the engine never imports them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import quote

import msgspec
import uvloop
from rich.markup import escape
from rich.table import Table

from engine import children, settings
from engine.cli import analytics, audit, credentials, dlq, keys, prefs, retention
from engine.cli.common import api_headers, console, serving
from engine.client import Client, TidingsError
from infra import logs
from infra.config import ConfigError

COMMAND_GROUP = "tidings.commands"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tidings", description="Tidings notification delivery engine")
    p.add_argument("--profile", help="config profile: development (default), production, bench, …")
    p.add_argument("--config", help="a TOML file layered over the profile")
    p.add_argument("-v", "--verbose", action="store_true", help="log more, and show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the engine (embedded NATS/PostgreSQL/Ray when none is configured)")
    up.add_argument("--port", type=int, help="HTTP port (default from config: 8080)")
    up.set_defaults(run=cmd_up)

    send = sub.add_parser("send", help="send one notification, or a file of them (JSON lines or a JSON array)")
    send.add_argument("--via", choices=("http", "nats"), default="http")
    send.add_argument("--url", default="http://127.0.0.1:8080", help="engine HTTP address (--via http)")
    send.add_argument("--file", help="file with notifications")
    send.add_argument("--user")
    send.add_argument("--category")
    send.add_argument("--channel", action="append", dest="channels", help="repeat for several channels")
    send.add_argument("--subject")
    send.add_argument("--text")
    send.add_argument("--html")
    send.add_argument("--key", help="idempotency key")
    send.add_argument("--priority", default="normal")
    send.set_defaults(run=cmd_send)

    status = sub.add_parser("status", help="per-channel status, reason and attempts of a notification")
    status.add_argument("id")
    status.add_argument("--url", default="http://127.0.0.1:8080")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)

    cancel = sub.add_parser("cancel", help="cancel a notification's channels still held (deferred, digested, "
                                           "a fallback check); those sent stay sent")
    cancel.add_argument("id", nargs="?", help="the notification id")
    cancel.add_argument("--key", help="the idempotency key it was sent with (instead of the id)")
    cancel.add_argument("--url", default="http://127.0.0.1:8080")
    cancel.set_defaults(run=cmd_cancel)

    migrate = sub.add_parser("migrate", help="apply the SQL migrations (or reverse them with --down-to N)")
    migrate.add_argument("--down-to", type=int, metavar="N", help="reverse every migration above N (0: all)")
    migrate.set_defaults(run=cmd_migrate)
    for module in (keys, prefs, credentials, retention, analytics, dlq, audit):
        module.add_parser(sub)
    for ep in entry_points(group=COMMAND_GROUP):
        ep.load()(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Commands set ``run`` (an ``async (cfg, args) -> int``, run on uvloop with
    the configuration loaded) or ``main`` (``(args) -> int``: it loads and runs
    what it needs itself). Errors are one line; ``-v`` shows the traceback."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with children.command_scope():  # nothing the command starts outlives it, SIGTERM included
            return _run(args)
    except ConfigError as e:  # a bad setting, or found at start: a stored credential missing
        console.print(f"[red]configuration error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except TidingsError as e:  # the engine's answer, or none: its own words, one line
        if args.verbose:
            raise
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 1
    except Exception as e:
        if args.verbose:
            raise
        # one line however long (soft_wrap): the terminal wraps it, a log keeps it whole
        console.print(f"[red]error:[/red] {type(e).__name__}: {escape(str(e))}", highlight=False, soft_wrap=True)
        return 1


def _run(args) -> int:
    if getattr(args, "main", None) is not None:
        return args.main(args) or 0
    cfg = settings.load(args.profile, args.config)
    logs.setup(cfg.logging, "engine", level=logging.INFO if args.verbose else None)
    return uvloop.run(args.run(cfg, args)) or 0


async def cmd_up(cfg, args) -> int:
    async with serving(cfg, args.port) as s:
        console.print("Serving; Ctrl-C to stop.")
        await s.stop.wait()
        if s.engine.lost:
            console.print("stopped: this instance lost its place in the deployment (see the log); start it again")
            return 1
    return 0


def notifications_from(args) -> list[dict]:
    if args.file:
        text = Path(args.file).read_text()
        stripped = text.lstrip()
        if stripped.startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    missing = [f"--{n}" for n in ("user", "category", "channel") if not getattr(args, n + ("s" if n == "channel" else ""))]
    if missing:
        raise SystemExit(f"tidings send: give --file, or {' '.join(missing)}")
    n = {"user_id": args.user, "category": args.category, "channels": args.channels, "priority": args.priority,
         "content": {k: v for k, v in (("subject", args.subject), ("text", args.text), ("html", args.html)) if v}}
    if args.key:
        n["idempotency_key"] = args.key
    return [n]


async def cmd_send(cfg, args) -> int:
    items = notifications_from(args)
    if args.via == "http":
        async with Client(args.url, headers=api_headers(cfg, args.url)) as tidings:
            accepted = await tidings.send(*items)
        for n in accepted:
            console.print(n.id + ("  (duplicate)" if n.duplicate else ""))
        return 0
    return await _send_nats(cfg, items)


async def _send_nats(cfg, items: list[dict]) -> int:
    """Publish straight to JetStream; the engine validates (bad ones go to the DLQ)."""
    import nats

    from engine.embedded import EmbeddedNats
    from infra import streams

    url = cfg.nats.url
    if not url:
        embedded = EmbeddedNats(Path(cfg.engine.home).resolve(), cfg.nats.embedded_port)
        if not embedded.find_running():
            console.print("[red]no NATS to publish to[/red]: start the engine (`tidings up`) or set TIDINGS_NATS_URL")
            return 1
        url = embedded.url
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for n in items:
            n.setdefault("id", str(uuid.uuid4()))
            try:
                ack = await js.publish(streams.notify_subject(cfg.nats, n.get("category", "unknown")),
                                       msgspec.json.encode(n), headers={"Nats-Msg-Id": n["id"]})
            except Exception as e:
                if not streams.is_stream_full(e):
                    raise
                console.print(f"[red]{n['id']}: not accepted, the work stream is full[/red] (nats.max_msgs / "
                              "max_bytes): the engine is behind; send it again later")
                return 1
            console.print(f"{n['id']}  stream seq {ack.seq}" + ("  (duplicate)" if ack.duplicate else ""))
    finally:
        await nc.drain()
    return 0


async def cmd_status(cfg, args) -> int:
    async with Client(args.url, headers=api_headers(cfg, args.url)) as tidings:
        if args.json:  # the engine's document as it is, fields this client does not know included
            print(json.dumps(await tidings.request("GET", f"/v1/notifications/{quote(args.id, safe='')}"),
                             indent=2))
            return 0
        status = await tidings.notification(args.id)
    table = Table(title=f"notification {status.id}")
    for col in ("channel", "status", "reason", "provider", "attempts"):
        table.add_column(col)
    for ch in status.channels:
        table.add_row(ch.channel, ch.status, ch.reason, ch.provider or "-", str(ch.attempts))
    console.print(table)
    return 0


async def cmd_cancel(cfg, args) -> int:
    if (args.id is None) == (args.key is None):
        raise SystemExit("tidings cancel: give a notification id or --key, not both")
    async with Client(args.url, headers=api_headers(cfg, args.url)) as tidings:
        done = await tidings.cancel(args.id, idempotency_key=args.key)
    table = Table(title=f"notification {done.id}")
    for col in ("channel", "result", "status"):
        table.add_column(col)
    for ch in done.channels:
        table.add_row(ch.channel, ch.result, ch.status or "-")
    console.print(table)
    return 0


async def cmd_migrate(cfg, args) -> int:
    from engine import migrations
    from engine.embedded import Services

    services = Services(cfg.engine.home, cfg.nats.url or "unused", cfg.database.url).start()
    try:
        if args.down_to is None:
            applied = await migrations.migrate_url(services.database_url, cfg.database.schema, cfg.database)
            console.print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
            return 0
        conn = await migrations.connect(services.database_url, cfg.database)
        try:
            done = await migrations.rollback(conn, args.down_to, cfg.database.schema)
        finally:
            await conn.close()
        console.print("reversed: " + (", ".join(done) if done else "nothing"))
        return 0
    finally:
        services.stop()


if __name__ == "__main__":
    sys.exit(main())
