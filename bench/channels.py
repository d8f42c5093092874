"""Each channel through the running engine to its loopback server, and the same
server's ceiling measured in the same run, as a ratio.

    tidings bench channels [--n 10000] [--only sendgrid,fcm] [--json PATH]

Per case (a provider type and the server that speaks its API, as in
``bench.providers``; plus ``smtp`` and ``in_app``):

1. The server starts in a child process (``bench.providers.child``), so it has
   its own GIL; both sides run uvloop.
2. ``ceiling/s``: the request the provider makes for one notification, captured
   once, replayed N times by a bare client (aiohttp; a minimal HTTP/2 client for
   APNs; aiosmtplib for SMTP), ``--concurrency`` in flight -- as many as the
   engine is allowed (channel shards x provider concurrency). For ``in_app``
   there is no server of its own: the ceiling is the provider's ``send_batch``
   driven directly against the same PostgreSQL and NATS, 100 per batch, as
   many batches in flight as the engine's ChannelShards can run (shards x the
   provider's ``pool_size``).
3. ``engine/s``: an engine with only that channel, one provider of that type
   pointed at the same server, ``--users`` users who have an address (and SMS or
   voice consent); N notifications published to JetStream first (a backlog, as
   ``bench e2e``), then the time from the first accepted notification to the
   last tracking row committed. Voice goes at priority critical (the default
   rules allow voice only for critical), so through the priority lane.
4. ``ratio`` = engine/s / ceiling/s: how much of that server's ceiling the
   whole engine reaches for that channel.

The server's counters are read before and after the engine run: ``server got``
is what it accepted in that time (it must equal N, or the row says so).
NATS and PostgreSQL: TIDINGS_NATS_URL / TIDINGS_DATABASE_URL, else embedded.
Every case is bounded by ``--timeout``; the child is always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import sys
import uuid
from contextlib import asynccontextmanager
from functools import partial

import aiosmtplib
import msgspec
import uvloop
from rich.console import Console
from rich.table import Table

from actors.user_prefs import PrefCommand
from bench import providers as bp
from bench.demo import watch_rows
from bench.e2e import STATS_SQL, drop, ms
from bench.report import write_json
from engine import settings as engine_settings
from engine.prefs_bus import run_commands
from engine.runtime import Engine
from infra import config, streams
from infra.config import ChannelConfig, ProviderConfig
from policy.types import Content, DeliveryTask, UserProfile
from policy.validate import PreferencesPatch
from sandbox.smtp import SmtpSink

console = Console(width=None if sys.stdout.isatty() else 160)
PREFIX = "ch-"
CONSENT = {"sms", "voice"}


class SmtpServer(SmtpSink):
    """The loopback SMTP server with the start/stop the child awaits."""

    async def start(self) -> None:  # type: ignore[override]
        super().start()

    async def stop(self) -> None:  # type: ignore[override]
        super().stop()


def smtp() -> bp.Case:
    return bp.Case(partial(SmtpServer, "127.0.0.1", 0, keep_messages=False), "smtp", "email", lambda info: {
        "host": "127.0.0.1", "port": info["port"], "sender": "Tidings <noreply@tidings.test>"},
        lambda info: "user@example.com")


def smtp_signed() -> bp.Case:
    """SMTP as production sends it: DKIM-signed (RSA 2048) with a VERP bounce address."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return bp.Case(partial(SmtpServer, "127.0.0.1", 0, keep_messages=False), "smtp", "email", lambda info: {
        "host": "127.0.0.1", "port": info["port"], "sender": "Tidings <noreply@tidings.test>",
        "dkim_private_key": key, "dkim_selector": "bench", "bounce_domain": "bounces.tidings.test",
        "bounce_secret": "bench-bounce-secret"}, lambda info: "user@example.com")


CASES = {"smtp": smtp, "smtp_signed": smtp_signed, **bp.CASES, "in_app": None}


# -- the ceilings ----------------------------------------------------------------

@asynccontextmanager
async def bare_smtp(provider, task: DeliveryTask, info: dict, connections: int):
    """A ``send(i)`` that sends the provider's message for ``task`` over a pool of
    ``connections`` plain aiosmtplib connections."""
    raw = provider.build_message(task).as_bytes()
    idle: asyncio.Queue = asyncio.Queue()
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=info["port"], local_hostname="bench.test")
               for _ in range(connections)]
    await asyncio.gather(*(c.connect() for c in clients))
    for c in clients:
        idle.put_nowait(c)

    async def send(_: int) -> bool:
        c = await idle.get()
        try:
            await c.sendmail(provider.envelope_from, [task.address], raw)
            return True
        finally:
            idle.put_nowait(c)
    try:
        yield send
    finally:
        await asyncio.gather(*(c.quit() for c in clients), return_exceptions=True)


async def ceiling(name: str, case: bp.Case, conn, info: dict, args) -> dict:
    """The bare client's rate against the server, replaying the provider's request."""
    pool = {"max_connections": args.concurrency, "pool_size": smtp_pool(args), "timeout_s": 10}
    provider = case.provider(name, info, pool)
    await provider.start()
    make_task = case.task_maker(info)
    try:
        await bp.drive(args.warmup, args.concurrency, lambda i: _send(provider, make_task(i)))
        one = make_task(10**9)
        if case.type == "smtp":
            bare_cm, in_flight = bare_smtp(provider, one, info, smtp_pool(args)), smtp_pool(args)
        elif case.type == "apns":
            bare_cm, in_flight = bp.bare_h2(await bp.capture_h2(conn, provider, one), info, args.concurrency), \
                args.concurrency
        else:
            bare_cm, in_flight = bp.bare_http(await bp.capture_http(provider, one), info, args.concurrency), \
                args.concurrency
    finally:
        await provider.close()
    async with bare_cm as bare:
        await bp.drive(args.warmup, in_flight, bare)
        rate, errors, first = await bp.drive(args.n, in_flight, bare)
    return {"per_s": round(rate), "errors": errors, "first_error": first, "in_flight": in_flight}


async def _send(provider, task: DeliveryTask) -> bool:
    await provider.send(task)
    return True


def smtp_pool(args) -> int:
    """SMTP connections: one send each at a time; aiosmtpd is happiest with few."""
    return min(args.concurrency, 16)


async def inapp_ceiling(engine: Engine, args) -> dict:
    """The in-app provider alone (``send_batch``) against the engine's PostgreSQL and NATS."""
    from engine.runtime import with_service_urls
    from providers.inapp.provider import InAppProvider
    cfg = with_service_urls(engine.cfg, engine.nats_url, engine.database_url)
    settings = cfg.channels["in_app"].providers[0].settings
    provider = InAppProvider("inapp-bare", settings)
    await provider.start()
    batch = min(provider.max_batch, args.n)
    notes = notifications("in_app", args.n, args.users)  # the engine run's contents, one per notification
    tasks = [DeliveryTask(str(uuid.uuid4()), n["user_id"], "in_app", n["category"], "", Content(**n["content"]))
             for n in notes]
    batches = [tasks[i:i + batch] for i in range(0, len(tasks) - batch + 1, batch)]

    async def send(i: int) -> bool:
        await provider.send_batch(batches[i])
        return True
    try:
        # as many transactions at once as the engine's ChannelShards can run: each
        # holds one provider whose pool_size bounds its transactions
        in_flight = args.shards * min(provider.pool_size, max(1, args.concurrency // args.shards))
        rate, errors, first = await bp.drive(len(batches), in_flight, send)
    finally:
        await provider.close()
    return {"per_s": round(rate * batch), "errors": errors, "first_error": first, "in_flight": in_flight,
            "batch": batch}


# -- the engine --------------------------------------------------------------------

def engine_config(name: str, channel: str, ptype: str, settings: dict, args) -> config.Config:
    run = uuid.uuid4().hex[:8]
    cfg = engine_settings.load(profile="bench", overrides={
        "nats": {"prefix": f"chan{run}", "stream": f"CHAN{run}", "consumer": f"chan{run}"},
        "database": {"schema": f"chan_{run}"},
        "engine": {"user_shards": args.shards},
    })
    per_shard = max(1, args.concurrency // args.shards)
    pool = {} if ptype in ("smtp", "inapp") else {"max_connections": per_shard}
    if ptype == "smtp":
        pool = {"pool_size": max(1, smtp_pool(args) // args.shards)}
    provider = ProviderConfig(name=name, type=ptype, concurrency=per_shard, settings={**settings, **pool})
    return msgspec.structs.replace(cfg, channels={channel: ChannelConfig(shards=args.shards, providers=[provider])})


def notifications(channel: str, n: int, users: int) -> list[dict]:
    priority = "critical" if channel == "voice" else "normal"
    return [{"user_id": f"{PREFIX}{i % users:06d}", "category": "messages", "channels": [channel],
             "priority": priority,
             "content": {"subject": f"Update #{i}", "text": f"A recruiter wrote to you ({i}).",
                         "html": f"<p>A recruiter wrote to you (<b>{i}</b>).</p>", "data": {"n": str(i)}}}
            for i in range(n)]


async def publish(engine: Engine, notes: list[dict]) -> None:
    enc = msgspec.json.Encoder()
    futures = []
    for body in notes:
        body["id"] = str(uuid.uuid4())
        subject = streams.subject_for(engine.cfg.nats, body["category"], body["priority"])
        futures.append(await engine.js.publish_async(subject, enc.encode(body)))
    await asyncio.gather(*futures)


async def through_engine(cfg: config.Config, channel: str, address: str, args, conn=None) -> dict:
    """Start the engine, seed users, publish N, wait for N rows; the engine's figures
    (and, for in_app, the ceiling, measured on the engine's own services)."""
    engine = await Engine(cfg).start()
    out: dict = {}
    try:
        where = {channel: address} if address else {}  # in-app needs no address
        people = [UserProfile(user_id=f"{PREFIX}{i:06d}", addresses=where) for i in range(args.users)]
        for i in range(0, len(people), 2000):
            await engine.save_profiles(people[i:i + 2000], "bench")
        if channel in CONSENT:
            grants = [PrefCommand(user_id=p.user_id, patch=PreferencesPatch(consent={channel: "granted"}),
                                  source="bench", actor="bench") for p in people]
            for i in range(0, len(grants), 1000):
                await run_commands(engine, grants[i:i + 1000])
        if channel == "in_app":
            out["ceiling"] = await inapp_ceiling(engine, args)
        notes = notifications(channel, args.n, args.users)
        await asyncio.sleep(1.0)  # every actor has finished starting before the clock runs
        before = await bp.ask(conn, "stats") if conn else {}
        await publish(engine, notes)
        done = await watch_rows(engine.pool, args.n, args.timeout, console, label=f"{channel} through the engine")
        after = await bp.ask(conn, "stats") if conn else {}
        s = await engine.pool.fetchrow(STATS_SQL)
        statuses = dict(await engine.pool.fetch(
            "SELECT status || '/' || reason, count(*) FROM delivery_tracking GROUP BY 1"))
    finally:
        await engine.stop()
        await drop(cfg)
    wall = float(s["wall_s"] or 0)
    out.update({"per_s": round(args.n / wall) if wall else 0, "rows": done, "wall_s": round(wall, 2),
                "sent_rows": s["sent_rows"], "statuses": statuses,
                "p50_ms": ms(s["durable"][0]), "p99_ms": ms(s["durable"][2])})
    if conn:
        out["server_got"] = accepted(after) - accepted(before)
    return out


def accepted(stats: dict) -> int:
    """Requests the server took, from its counters (each names them its own way:
    webhook "received", SMTP "count", Twilio "messages" and "calls", …)."""
    return sum(stats.get(k, 0) for k in ("received", "count", "requests", "messages", "calls", "accepted"))


# -- one case ------------------------------------------------------------------------

async def run_case(name: str, args) -> dict:
    if name == "in_app":
        cfg = engine_config("inbox", "in_app", "inapp", {}, args)
        eng = await through_engine(cfg, "in_app", "", args)
        ceil = eng.pop("ceiling")
        return {"channel": "in_app", "ceiling": ceil, "engine": eng,
                "ratio": round(eng["per_s"] / ceil["per_s"], 3) if ceil["per_s"] else None}
    case = CASES[name]()
    async with bp.sink_child(case.make_sink, name) as conn:
        info = await bp.ask(conn, None)
        ceil = await ceiling(name, case, conn, info, args)
        cfg = engine_config(name, case.channel, case.type, case.settings(info), args)
        eng = await through_engine(cfg, case.channel, case.address(info), args, conn)
        return {"channel": case.channel, "ceiling": ceil, "engine": eng,
                "ratio": round(eng["per_s"] / ceil["per_s"], 3) if ceil["per_s"] else None}


async def run(args) -> dict:
    return await bp.run_cases([n for n in args.only.split(",") if n], CASES, lambda name: run_case(name, args),
                              args.timeout + 120, args.deadline,
                              lambda r: f"engine {r['engine']['per_s']:,}/s vs ceiling {r['ceiling']['per_s']:,}/s")


def complete(r: dict, n: int) -> bool:
    e = r["engine"]
    return e["rows"] == n and e["sent_rows"] == n and e.get("server_got", n) == n and not r["ceiling"]["errors"]


def table(out: dict, args) -> Table:
    t = Table(title=f"channels through the engine vs. the server's ceiling: n={args.n}, {args.concurrency} in flight, "
                    f"{args.shards} user + {args.shards} channel shards, {os.cpu_count()} cores")
    for col in ("case", "channel", "engine/s", "ceiling/s", "ratio", "engine p50 / p99 ms", "sent", "server got"):
        t.add_column(col, justify="left" if col in ("case", "channel") else "right")
    for name, r in out["results"].items():
        e, c = r["engine"], r["ceiling"]
        t.add_row(name, r["channel"], f"{e['per_s']:,}", f"{c['per_s']:,}", f"{r['ratio']:.2f}",
                  f"{e['p50_ms']:,.0f} / {e['p99_ms']:,.0f}", f"{e['sent_rows']:,}",
                  f"{e['server_got']:,}" if "server_got" in e else "(inbox)")
    return t


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tidings bench channels", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="notifications per case (and bare sends for the ceiling)")
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight, engine and bare client alike")
    p.add_argument("--shards", type=int, default=2, help="UserShards, and ChannelShards for the channel")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--only", default="", help=f"comma-separated, of: {','.join(CASES)}")
    p.add_argument("--timeout", type=float, default=300, help="seconds one engine run may take to drain")
    p.add_argument("--deadline", type=float, default=3600, help="seconds for the whole run")
    p.add_argument("--json", help="write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = uvloop.run(run(args))
    console.print(table(out, args))
    for name, r in out["results"].items():
        if r["ceiling"]["first_error"]:
            console.print(f"[yellow]{name} ceiling[/yellow]: {r['ceiling']['errors']} errors, "
                          f"first: {r['ceiling']['first_error']}")
        if not complete(r, args.n):
            console.print(f"[red]{name} incomplete[/red]: {r['engine']['statuses']}")
    for name, why in out["dropped"].items():
        console.print(f"[red]dropped {name}[/red]: {why}")
    if args.json:
        doc = {"command": "tidings bench channels " + " ".join(sys.argv[1:] if argv is None else argv),
               "date": datetime.date.today().isoformat(), "n": args.n, "users": args.users,
               "concurrency": args.concurrency, "shards": args.shards,
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, **out}
        write_json(args.json, doc)
    ok = not out["dropped"] and all(complete(r, args.n) for r in out["results"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
