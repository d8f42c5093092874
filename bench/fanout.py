"""Fan-out benchmark: one broadcast to a whole population, decided per user by the
UserShards, delivered through a batch-capable provider (SendGrid v3 mail/send,
1,000 recipients per request) to a loopback server speaking that API, and tracked
(one row per recipient).

    python -m bench.fanout --users 1000000

The population is written straight into PostgreSQL with COPY first (not timed):
~90% defaults, ~10% with marketing email off, ~2% without an email address. The
wall time runs from the broadcast's publish to the last tracking row's commit.
Two broadcasts go out in turn (``--broadcasts``): the first finds no stored
states (as after a bulk import or a migration) and assembles and stores them;
the second reads them, as it would for users written through the API.

``--audience topic`` sends to a topic's subscribers instead of everyone (every
user subscribed, or ``--subscribers N`` of them, chosen at random, COPYed into
``topic_subscribers``); ``--audience segment`` to a segment filter (those with
an email address that is not suppressed), evaluated on every user's state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid

import asyncpg
import msgspec
import uvloop
from rich.console import Console
from rich.table import Table

from bench.cpu import CpuSampler
from bench.demo import watch_rows
from bench.e2e import drop
from engine import settings
from engine.runtime import Engine
from infra import config, streams
from infra.tuning import with_section
from policy.sharding import stable_hash
from sandbox import SinkProcess
from stores import pii

console = Console()
API_KEY = "SG.bench-key"


def fanout_config(sink: SinkProcess, shards: int) -> config.Config:
    run = uuid.uuid4().hex[:8]
    cfg = settings.load(profile="bench", overrides={
        "nats": {"prefix": f"fan{run}", "stream": f"FAN{run}", "consumer": f"fan{run}"},
        "database": {"schema": f"fan_{run}"},
        "channels": {"email": {"shards": shards, "providers": [{
            "name": "sendgrid-sink", "type": "sendgrid", "concurrency": 16, "timeout_s": 30,
            "settings": {"api_key": API_KEY, "sender": "Jobs <jobs@bench.test>", "base_url": sink.base_url,
                         "max_batch": 1000, "max_connections": 16},
        }]}},
    })
    cfg = with_section(cfg, "engine", user_shards=shards)
    return msgspec.structs.replace(cfg, channels={"email": cfg.channels["email"]})


TOPIC = "bench-followers"
SEGMENT = {"where": {"field": "address", "op": "has", "value": "email"}}


def audience_of(args) -> dict | str:
    """The broadcast's ``audience`` for ``--audience``."""
    return {"all": "all", "topic": {"topic": TOPIC}, "segment": SEGMENT}[args.audience]


async def seed(pool: asyncpg.Pool, ring, users: int, seed: int = 3, audience: str = "all",
               subscribers: int | None = None) -> dict:
    """COPY the population in (users, their keys, sealed addresses, opt-outs, and
    for ``audience`` topic its subscribers); returns what was made and how many
    of the audience should be recorded (``recipients``) and sent."""
    rng = random.Random(seed)
    ids = [f"f{i:07d}" for i in range(users)]
    no_email = {u for u in ids if rng.random() < 0.02}
    opted_out = {u for u in ids if rng.random() < 0.10}
    reached = set(ids)
    if audience == "topic":
        reached = set(rng.sample(ids, users if subscribers is None else min(subscribers, users)))
    elif audience == "segment":
        reached -= no_email
    async with pool.acquire() as conn:
        await conn.copy_records_to_table("users", columns=("user_id", "shard_key"),
                                         records=((u, stable_hash(u)) for u in ids))
        keys = await pii.copy_new_keys(conn, ring, ids)
        await conn.copy_records_to_table(
            "user_addresses", columns=pii.ADDRESS_COLUMNS,
            records=pii.address_records(ring, keys, ((u, "email", f"{u}@bench.test") for u in ids if u not in no_email)))
        await conn.copy_records_to_table(
            "user_preferences", columns=("user_id", "preference_type", "channel", "category", "value"),
            records=((u, "category", "email", "marketing", '{"enabled": false}') for u in opted_out))
        if audience == "topic":
            await conn.copy_records_to_table("topic_subscribers", columns=("topic_id", "user_id", "shard_key"),
                                             records=((TOPIC, u, stable_hash(u)) for u in sorted(reached)))
    return {"users": users, "opted_out": len(opted_out), "no_email": len(no_email), "recipients": len(reached),
            "expected_sent": len(reached - no_email - opted_out)}


async def run(args) -> dict:
    sink = SinkProcess("sendgrid", secret=API_KEY).start()
    cfg = fanout_config(sink, args.shards)
    try:
        engine = await Engine(cfg).start()
    except BaseException:
        sink.stop()
        raise
    rounds: list[dict] = []
    try:
        started = time.perf_counter()
        made = await seed(engine.pool, engine.ring, args.users, audience=args.audience, subscribers=args.subscribers)
        seed_s = time.perf_counter() - started
        console.print(f"seeded {args.users:,} users with COPY in {seed_s:.1f}s; audience {args.audience}: "
                      f"{made['recipients']:,}")
        await asyncio.sleep(1.0)
        for i in range(args.broadcasts):
            label = "fan-out (states assembled)" if i == 0 else "fan-out (states stored)"
            rounds.append(await broadcast(engine, cfg, sink, args, label, made["recipients"]))
        dry = await dry_run(engine, sink, args) if args.dry_run else None
    finally:
        await engine.stop()
        received = sink.stop()
        await drop(cfg)
    first = rounds[0] if rounds else {}
    return {"users": args.users, "shards": args.shards, "audience": audience_of(args),
            "recipients": made["recipients"], **first, "expected_sent": made["expected_sent"],
            "seed_s": round(seed_s, 1), "sink": received, "rounds": rounds, "dry_run": dry, "cores": os.cpu_count()}


async def dry_run(engine: Engine, sink: SinkProcess, args) -> dict:
    """The same broadcast as a dry run (``?dry_run=true``'s path, without HTTP):
    every user decided, nothing sent or recorded; timed from the call to its answer."""
    from engine import dry_runs
    from policy.types import BroadcastRequest
    body = msgspec.convert({"category": "marketing", "channels": ["email"],
                            "content": {"subject": "Job fair next week", "text": "Come along.",
                                        "html": "<p>Come along.</p>"}, "audience": audience_of(args)},
                            BroadcastRequest)
    rows_before = await engine.pool.fetchval("SELECT count(*) FROM delivery_tracking")
    before = await received(sink)
    cpu = CpuSampler()
    cpu.start()
    t0 = time.perf_counter()
    answer = await dry_runs.broadcast(engine, body)
    wall = time.perf_counter() - t0
    busy = await cpu.stop()
    decided = {f"{d.channel} {d.action} {d.reason}": d.count for d in answer.decisions}
    console.print(f"dry run: {answer.recipients:,} users decided in {wall:.1f}s: {decided}")
    return {"wall_s": round(wall, 2), "recipients": answer.recipients, "decisions": decided,
            "would_send": sum(d.count for d in answer.decisions if d.action == "send"),
            "rows_added": await engine.pool.fetchval("SELECT count(*) FROM delivery_tracking") - rows_before,
            "sink_added": await received(sink) - before, "cpu_cores": busy}


async def broadcast(engine: Engine, cfg: config.Config, sink: SinkProcess, args, label: str,
                    recipients: int) -> dict:
    """One broadcast to everyone, timed from its publish to its last row's commit.
    The first after the COPY finds no stored states (``users.state`` NULL, as after
    a bulk import or a migration): each chunk assembles them from the tables and
    writes them back. Later ones read the stored states, as for users written
    through the API."""
    cpu = CpuSampler()
    bid = str(uuid.uuid4())
    body = {"id": bid, "category": "marketing", "channels": ["email"],
            "content": {"subject": "Job fair next week", "text": "Come along.", "html": "<p>Come along.</p>"},
            "audience": audience_of(args)}
    before = await received(sink)
    recorder = engine.actors.recorder
    rows_before = (await recorder.stats.remote())["rows_written"]

    async def written() -> int:
        return (await recorder.stats.remote())["rows_written"] - rows_before

    cpu.start()
    t0 = time.time()
    await engine.js.publish(streams.broadcast_subject(cfg.nats, "marketing"), msgspec.json.encode(body))
    done = await watch_rows(engine.pool, recipients, args.timeout, console, label=label, parent=bid, written=written)
    busy = await cpu.stop()
    s = await engine.pool.fetchrow(
        "SELECT extract(epoch FROM max(created_at)) AS last, count(*) FILTER (WHERE status = 'sent') AS sent, "
        "count(*) FILTER (WHERE status = 'suppressed') AS suppressed FROM delivery_tracking WHERE parent_id = $1",
        bid)
    wall = float(s["last"]) - t0 if s["last"] else 0.0
    # counted again after the rest of the harness's checks: a row for anyone beyond the
    # audience (recorded after the watch saw enough) makes rows exceed the audience
    sink_recipients = await received(sink) - before
    done = await engine.pool.fetchval("SELECT count(*) FROM delivery_tracking WHERE parent_id = $1", bid)
    stored = await engine.pool.fetchval("SELECT count(*) FROM users WHERE state IS NOT NULL")
    return {"rows": done, "states_stored": stored, "wall_s": round(wall, 2), "recipients_per_s": round(done / wall) if wall else 0,
            "sent": s["sent"], "suppressed": s["suppressed"],
            "sink_recipients": sink_recipients, "cpu_cores": busy}


async def received(sink: SinkProcess) -> int:
    """Recipients the sink has taken so far (its counts file is written every quarter second)."""
    await asyncio.sleep(0.6)
    return sink.stats().get("recipients", 0)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--broadcasts", type=int, default=2,
                    help="broadcasts in turn: the first assembles and stores the states, the next read them")
    ap.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=True,
                    help="after the broadcasts, the same one as a dry run (every user decided, nothing sent)")
    ap.add_argument("--audience", choices=("all", "topic", "segment"), default="all",
                    help="everyone; a topic's subscribers; or a segment (those with an email address)")
    ap.add_argument("--subscribers", type=int, help="--audience topic: this many subscribers (default: everyone)")
    ap.add_argument("--json")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    r = uvloop.run(run(args))
    t = Table(title=f"fan-out: {len(r['rounds'])} broadcasts in turn to {r['recipients']:,} of {r['users']:,} "
                    f"users ({args.audience}), {r['shards']} shards")
    t.add_column("measure")
    for i, _ in enumerate(r["rounds"]):
        t.add_column("states assembled" if i == 0 else "states stored", justify="right")
    for k in ("rows", "wall_s", "recipients_per_s", "sent", "suppressed", "sink_recipients"):
        t.add_row(k, *(f"{x[k]:,}" if isinstance(x[k], int) else str(x[k]) for x in r["rounds"]))
    console.print(t)
    for x in r["rounds"]:
        console.print(f"busiest: {list(x['cpu_cores'].items())[:5]}")
    console.print(f"expected sent per broadcast: {r['expected_sent']:,}  sink: {r['sink']}")
    if r["dry_run"]:
        d = r["dry_run"]
        console.print(f"dry run: {d['recipients']:,} decided in {d['wall_s']} s, {d['would_send']:,} would be sent, "
                      f"{d['rows_added']} rows and {d['sink_added']} sends added")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0 if complete(r) else 1


def complete(r: dict) -> bool:
    """Every broadcast: a row per user, the expected number sent, each one received
    once; the dry run: every user decided, the same number would be sent, nothing was."""
    d = r.get("dry_run")
    dry_ok = d is None or (d["recipients"] == r["recipients"] and d["would_send"] == r["expected_sent"]
                           and d["rows_added"] == 0 and d["sink_added"] == 0)
    return bool(r["rounds"]) and not r["sink"].get("duplicates") and dry_ok and all(
        x["rows"] == r["recipients"] and x["sent"] == r["expected_sent"] == x["sink_recipients"] for x in r["rounds"])


if __name__ == "__main__":
    sys.exit(main())
