"""``tidings``: run the engine, send notifications, look one up, migrate, demo,
bulk preferences."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import uuid
from pathlib import Path

import aiohttp
import msgspec
import uvloop
from rich.console import Console
from rich.table import Table

from engine import cli_analytics, cli_credentials, cli_prefs, cli_retention, config as configuration

console = Console()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tidings", description="Tidings notification delivery engine")
    p.add_argument("--profile", help="config profile: development (default), production, bench, …")
    p.add_argument("--config", help="a TOML file layered over the profile")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the engine (embedded NATS/PostgreSQL/Ray when none is configured)")
    up.add_argument("--port", type=int, help="HTTP port (default from config: 8080)")
    up.add_argument("--demo", action="store_true", help="start loopback sinks and run the demo load, then keep serving")
    up.add_argument("--sinks", action="store_true", help="start the loopback SMTP server and webhook receiver")
    _demo_args(up)

    demo = sub.add_parser("demo", help="like `up --demo`, but stop after the summary")
    demo.add_argument("--port", type=int)
    _demo_args(demo)

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

    status = sub.add_parser("status", help="per-channel status, reason and attempts of a notification")
    status.add_argument("id")
    status.add_argument("--url", default="http://127.0.0.1:8080")
    status.add_argument("--json", action="store_true")

    migrate = sub.add_parser("migrate", help="apply the SQL migrations (or reverse them with --down-to N)")
    migrate.add_argument("--down-to", type=int, metavar="N", help="reverse every migration above N (0: all)")
    cli_prefs.add_parser(sub)
    cli_credentials.add_parser(sub)
    cli_retention.add_parser(sub)
    cli_analytics.add_parser(sub)

    bench = sub.add_parser("bench", help="load harness: `bench e2e …`, `bench capacity --rate R --p99 MS`, "
                                         "`bench prefs`, `bench channels`")
    bench.add_argument("what", choices=("e2e", "capacity", "prefs", "channels"))
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of that harness (see `tidings bench e2e -h`)")
    return p


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=20_000, help="demo notifications")
    p.add_argument("--users", type=int, default=5_000, help="demo users")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "bench":  # the harnesses parse their own options and run their own loop
        from bench import capacity, channels, e2e, prefs
        return {"e2e": e2e.main, "capacity": capacity.main, "prefs": prefs.main,
                "channels": channels.main}[args.what](args.rest)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = configuration.load(args.profile, args.config)
    except configuration.ConfigError as e:
        console.print(f"[red]configuration error:[/red] {e}")
        return 2
    commands = {"up": cmd_up, "demo": cmd_up, "send": cmd_send, "status": cmd_status, "migrate": cmd_migrate,
                "prefs": cli_prefs.cmd_prefs, "credentials": cli_credentials.cmd_credentials,
                "retention": cli_retention.cmd_retention, "analytics": cli_analytics.cmd_analytics}
    try:
        return uvloop.run(commands[args.command](cfg, args)) or 0
    except configuration.ConfigError as e:  # found at start, e.g. a stored credential missing
        console.print(f"[red]configuration error:[/red] {e}")
        return 2
    except KeyboardInterrupt:
        return 130


async def cmd_up(cfg, args) -> int:
    from engine import http
    from engine.demo import Sinks, run
    from engine.runtime import Engine

    demo = args.command == "demo" or args.demo
    sinks = Sinks(cfg) if demo or getattr(args, "sinks", False) else None
    engine = runner = None
    try:
        if sinks is not None:
            cfg = await sinks.start()
        engine = Engine(cfg)
        console.print("Starting: NATS, PostgreSQL (migrations), Ray, actors …")
        await engine.start()
        runner = await http.serve(engine, port=args.port)
        url = f"http://{cfg.http.host}:{http.bound_port(runner)}"
        console.print(f"[green]Tidings is up[/green]: HTTP {url}  NATS {engine.nats_url}  "
                      f"Ray dashboard {engine.ray_info.get('dashboard') or '(off)'}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if demo:
            summary = await until_stopped(
                run(engine, url, sinks, count=args.count, users=args.users, console=console), stop)
            if summary is None:
                return 130
            if summary["rows"] < summary["expected_rows"]:
                console.print("[red]demo did not finish: some outcomes were not recorded in time[/red]")
                return 1
        if args.command == "up":
            console.print("Serving; Ctrl-C to stop.")
            await stop.wait()
        return 0
    finally:
        console.print("Stopping …")
        if runner is not None:
            await runner.cleanup()
        if engine is not None:
            await engine.stop()  # after a failed start too: it stops what it started
        if sinks is not None:
            await sinks.stop()


async def until_stopped(coro, stop: asyncio.Event):
    """Run ``coro`` unless ``stop`` is set first (then cancel it and return None)."""
    work = asyncio.ensure_future(coro)
    halt = asyncio.ensure_future(stop.wait())
    await asyncio.wait({work, halt}, return_when=asyncio.FIRST_COMPLETED)
    halt.cancel()
    if work.done():
        return work.result()
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)
    return None


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
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{args.url}/v1/notifications", json=items) as r:
                body = await r.json()
                if r.status != 202:
                    console.print(f"[red]{r.status}[/red] {json.dumps(body, indent=2)}")
                    return 1
        for n in body["notifications"]:
            console.print(n["id"] + ("  (duplicate)" if n["duplicate"] else ""))
        return 0
    return await _send_nats(cfg, items)


async def _send_nats(cfg, items: list[dict]) -> int:
    """Publish straight to JetStream; the engine validates (bad ones go to the DLQ)."""
    import nats

    from engine import streams
    from engine.embedded import EmbeddedNats

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
            ack = await js.publish(streams.notify_subject(cfg.nats, n.get("category", "unknown")),
                                   msgspec.json.encode(n), headers={"Nats-Msg-Id": n["id"]})
            console.print(f"{n['id']}  stream seq {ack.seq}" + ("  (duplicate)" if ack.duplicate else ""))
    finally:
        await nc.drain()
    return 0


async def cmd_status(cfg, args) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"{args.url}/v1/notifications/{args.id}") as r:
        body = await r.json()
    if args.json or r.status != 200:
        print(json.dumps(body, indent=2))
        return 0 if r.status == 200 else 1
    table = Table(title=f"notification {body['id']}")
    for col in ("channel", "status", "reason", "provider", "attempts"):
        table.add_column(col)
    for ch in body["channels"]:
        table.add_row(ch["channel"], ch["status"], ch["reason"], ch["provider"] or "-", str(ch["attempts"]))
    console.print(table)
    return 0


async def cmd_migrate(cfg, args) -> int:
    from engine import db
    from engine.embedded import Services

    import asyncpg

    services = Services(cfg.engine.home, cfg.nats.url or "unused", cfg.database.url).start()
    try:
        if args.down_to is None:
            applied = await db.migrate_url(services.database_url, cfg.database.schema)
            console.print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
            return 0
        conn = await asyncpg.connect(services.database_url)
        try:
            done = await db.rollback(conn, args.down_to, cfg.database.schema)
        finally:
            await conn.close()
        console.print("reversed: " + (", ".join(done) if done else "nothing"))
        return 0
    finally:
        services.stop()


if __name__ == "__main__":
    sys.exit(main())
