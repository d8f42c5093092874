"""Preference benchmarks: ``tidings bench prefs [decide|memory|load|import|all]``.

- decide: ``policy.decide`` per (request, user), median and p99 of single calls,
  on a realistic mix (90% of users on the defaults; the rest with 1-4 rows:
  opt-outs, digests, quiet hours, contextual rows, a template); then the same with
  two fatigue caps checked for each send as ``policy.plan`` does (``FATIGUE``, half
  the users with a send counted today).
- memory: resident memory of 1M users' state held as a UserShard holds it (a
  ``UserCache``), in a fresh process (RSS after minus before), and the figure
  for 10M; then the fatigue counts of as many people (a ``Ledger``, two caps).
- load: ``UserShard.preload`` (one pass over ``users.state``) in two processes
  at once, as two shards run; users/s. Cold (states not computed yet, as after
  a bulk import: assembled from the tables and written back) and warm.
- import: a bulk NDJSON import (parse + validate, then the one-transaction write).

Targets from the issue: decide <= 10 us median, 10M users <= 2 GiB, load >= 500k
users/s. PostgreSQL: TIDINGS_DATABASE_URL, else the embedded one.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid

import orjson

from engine import migrations
from policy.choice import ChoiceConfig, choose
from policy.decide import decide, zone
from policy.experiments import Live, Variant, apply as apply_variant, route
from policy.fatigue import Cap, Fatigue, FatigueConfig, Ledger
from policy.prefs import Preference, ordered
from policy.rules import Policy, PolicyConfig, Rule
from policy.types import Content, NotificationRequest, UserState
from policy.windows import Window

CATEGORIES = ("job_alerts", "application_updates", "messages", "marketing", "security", "account")
AVAILABLE = frozenset({"email", "sms", "push", "in_app", "webhook"})
POLICY = Policy(PolicyConfig(categories=CATEGORIES, rules=(
    Rule(name="security_mandatory", kind="mandatory", category="security"),
    Rule(name="sms_consent", kind="consent_required", channel="sms"),
    Rule(name="critical_passes_quiet", kind="bypass_quiet_hours", priorities=("critical",)),
    Rule(name="voice_critical_only", kind="channel_priority", channel="voice", priorities=("critical",)),
), defaults=(Preference(category="marketing", frequency="weekly"),)))
# a daily cap on everything and an hourly one on push (configs/default.toml shows the form)
FATIGUE = Fatigue(FatigueConfig(caps=(Cap(name="daily", window="day", limit=5),
                                      Cap(name="push_hourly", window="hour", limit=2, channels=("push",)))))
ZONES = ("Europe/Berlin", "America/New_York", "Asia/Kolkata", "UTC", "America/Sao_Paulo")
TEMPLATE = (("jobseeker", ordered([Preference(category="job_alerts", frequency="daily"),
                                   Preference(channel="sms", enabled=False)])),)


def rows_for(rng: random.Random) -> list[Preference]:
    """1-4 override rows, the kinds users set."""
    pool = [
        Preference(channel="email", category="marketing", enabled=False),
        Preference(category="job_alerts", frequency="daily"),
        Preference(quiet_hours=[Window(start="22:00", end="07:00")]),
        Preference(channel="push", context={"device": "watch"}, enabled=False),
        Preference(channel="sms", enabled=False),
        Preference(category="messages", content_type="chat", frequency="hourly"),
    ]
    return rng.sample(pool, rng.randint(1, 4))


def population(n: int, seed: int = 7, start: int = 0) -> dict[str, UserState]:
    rng = random.Random(seed + start)
    users = {}
    for i in range(start, start + n):
        uid = f"user-{i:08d}"
        addresses = {"email": f"{uid}@example.com"}
        if rng.random() < 0.3:
            addresses["sms"] = f"+1555{i:07d}"
        state = UserState(user_id=uid, addresses=addresses, timezone=rng.choice(ZONES))
        if rng.random() < 0.1:
            state.prefs = ordered(rows_for(rng))
            if rng.random() < 0.3:
                state.template, state.templates = "jobseeker", TEMPLATE
        users[uid] = state
    return users


def requests(n: int, seed: int = 11) -> list[NotificationRequest]:
    rng = random.Random(seed)
    content = Content(subject="New jobs for you", text="…")
    return [NotificationRequest(user_id="x", category=rng.choice(CATEGORIES),
                                channels=rng.choice([["email"], ["email", "push"], ["push", "in_app"], ["sms"]]),
                                priority=rng.choice(["normal"] * 8 + ["high", "critical"]), content=content)
            for _ in range(n)]


def bench_decide(calls: int = 200_000) -> dict:
    users = list(population(20_000).values())
    reqs = requests(1000)
    now = time.time()
    samples = []
    clock = time.perf_counter_ns
    for i in range(calls):
        r, u = reqs[i % 1000], users[(i * 7919) % len(users)]
        t0 = clock()
        decide(r, u, AVAILABLE, POLICY, now=now)
        samples.append(clock() - t0)
    samples.sort()
    overhead = min(_empty_call() for _ in range(5))
    # as a shard does it: the user read from its packed cache, then decided
    from actors.user_cache import UserCache
    cache = UserCache({"jobseeker": TEMPLATE})
    cache.update({u.user_id: u for u in users})
    ids = [u.user_id for u in users]
    with_read = []
    for i in range(calls):
        r, uid = reqs[i % 1000], ids[(i * 7919) % len(ids)]
        t0 = clock()
        decide(r, cache.get(uid), AVAILABLE, POLICY, now=now)
        with_read.append(clock() - t0)
    with_read.sort()
    # with two fatigue caps, each send checked and counted as policy.plan does it
    ledger = Ledger(FATIGUE, len(users))
    ledger.seed({u.user_id: [("email", "job_alerts", "normal", now - 60)] for u in users[::2]},
                {u.user_id: zone(u.timezone) for u in users}, now)
    with_fatigue = []
    for i in range(calls):
        r, u = reqs[i % 1000], users[(i * 7919) % len(users)]
        t0 = clock()
        tally: dict = {}
        for d in decide(r, u, AVAILABLE, POLICY, now=now):
            if d.action == "send":
                tz = zone(u.timezone)
                if FATIGUE.over(ledger.get(u.user_id), tally, u.user_id, d.channel, r.category, r.priority,
                                tz, now) is None:
                    FATIGUE.plan(tally, u.user_id, d.channel, r.category, r.priority, tz, now)
        with_fatigue.append(clock() - t0)
    with_fatigue.sort()
    # "channel_strategy": "best" (policy/choice.py) and an A/B experiment (policy/experiments.py), each
    # what the plan or the shard adds per request: a choice among the request's sendable channels, the
    # variant's assignment and application
    stats = {u.user_id: {"email": (12, 3), "push": (20, 9), "sms": (3, 1)} for u in users[::3]}
    population_counts = {"email": (5000, 700), "push": (6000, 1400), "sms": (900, 250)}
    cfg = ChoiceConfig()
    with_choice = []
    for i in range(calls):
        r, u = reqs[i % 1000], users[(i * 7919) % len(users)]
        t0 = clock()
        sendable = [d.channel for d in decide(r, u, AVAILABLE, POLICY, now=now) if d.action == "send"]
        if len(sendable) > 1:
            choose(sendable, stats.get(u.user_id, {}), population_counts, cfg, f"n{i}")
        with_choice.append(clock() - t0)
    with_choice.sort()
    live = {r.category: Live("exp", r.category, (Variant(name="a"), Variant(name="b", content=Content(
        subject="Hi", text="short"))), "running") for r in reqs}
    routing = []
    for i in range(calls // 4):
        r, u = reqs[i % 1000], users[(i * 7919) % len(users)]
        t0 = clock()
        routed = route(r.category, r.priority, u.user_id, live)
        if routed is not None:
            apply_variant(r, routed[1], now)
        routing.append(clock() - t0)
    routing.sort()
    return {"calls": calls, "median_us": round(statistics.median(samples) / 1e3, 2),
            "p99_us": round(samples[int(len(samples) * 0.99)] / 1e3, 2),
            "with_cache_read_median_us": round(statistics.median(with_read) / 1e3, 2),
            "with_cache_read_p99_us": round(with_read[int(len(with_read) * 0.99)] / 1e3, 2),
            "with_fatigue_median_us": round(statistics.median(with_fatigue) / 1e3, 2),
            "with_fatigue_p99_us": round(with_fatigue[int(len(with_fatigue) * 0.99)] / 1e3, 2),
            "with_channel_choice_median_us": round(statistics.median(with_choice) / 1e3, 2),
            "with_channel_choice_p99_us": round(with_choice[int(len(with_choice) * 0.99)] / 1e3, 2),
            "experiment_routing_median_us": round(statistics.median(routing) / 1e3, 2),
            "experiment_routing_p99_us": round(routing[int(len(routing) * 0.99)] / 1e3, 2),
            "timer_overhead_us": round(overhead / 1e3, 3),
            "mix": "90% defaults; 10% with 1-4 rows (30% of those on a template); 1-2 channels per request"}


def _empty_call() -> int:
    clock = time.perf_counter_ns
    best = 10**9
    for _ in range(1000):
        t0 = clock()
        best = min(best, clock() - t0)
    return best


def bench_memory(n: int = 1_000_000) -> dict:
    """In a child process, so the RSS delta is the state's and nothing else's."""
    out = subprocess.run([sys.executable, "-c", f"import bench.prefs as b; b._memory_child({n})"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    out = subprocess.run([sys.executable, "-c", f"import bench.prefs as b; b._ledger_child({n})"],
                         capture_output=True, text=True, check=True)
    result["fatigue"] = json.loads(out.stdout.strip().splitlines()[-1])
    out = subprocess.run([sys.executable, "-c", f"import bench.prefs as b; b._engagement_child({n})"],
                         capture_output=True, text=True, check=True)
    result["engagement"] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _engagement_child(n: int) -> None:
    """What a UserShard holds per person with engagement, as it holds it: the user's
    state (``population``) in the user cache, and with it a send-time profile (when
    read, 24 bytes, zone) and channel counts on two channels (when read, channel →
    (sent, engaged)); the bytes per person all told, and how fast fed events are
    counted into them (``UserShard.engaged``'s work, one event at a time)."""
    import psutil
    proc = psutil.Process()
    from actors.user_cache import ChannelCounts, Profiles, UserCache
    from policy.timing import add_event, profile_of
    tz = zone("Europe/Berlin")
    now = time.time()
    gc.collect()
    before = proc.memory_info().rss
    users = UserCache({"jobseeker": TEMPLATE})
    profiles, stats = Profiles(users), ChannelCounts(users)
    for start in range(0, n, 10_000):
        users.update(population(min(10_000, n - start), start=start))
        for i in range(start, min(start + 10_000, n)):
            uid = f"user-{i:08d}"
            profiles.put(uid, now, profile_of([now - 3600 * (i % 24)], tz), tz.key)
            stats.put(uid, now, {"email": (i % 50, i % 7), "push": (i % 30, i % 5)})
    gc.collect()
    per_user = (proc.memory_info().rss - before) / n
    # the feed: events counted into held profiles and channel counts
    ids = [f"user-{(i * 7919) % n:08d}" for i in range(200_000)]
    t0 = time.perf_counter()
    for uid in ids:  # as UserShard.engaged and _count_engaged do it: each half updated
        eng = users.engagement(uid)
        eng.profile = add_event(eng.profile, now, zone(eng.zone))
        users.set_engagement(uid, eng)
        eng = users.engagement(uid)
        sent, engaged = eng.stats.get("push", (0, 0))
        eng.stats["push"] = (sent, engaged + 1)
        users.set_engagement(uid, eng)
    rate = len(ids) / (time.perf_counter() - t0)
    print(json.dumps({"people": n, "bytes_per_person": round(per_user),
                      "projected_10m_gib": round(per_user * 10_000_000 / 2**30, 2),
                      "what": "user state and engagement (send-time profile, counts on two channels), one entry",
                      "feed_events_per_s": round(rate)}))


def _ledger_child(n: int) -> None:
    """The fatigue counts of ``n`` people, each with a send counted under both caps."""
    import psutil
    proc = psutil.Process()
    now = time.time()
    tz = zone("Europe/Berlin")
    gc.collect()
    before = proc.memory_info().rss
    ledger = Ledger(FATIGUE, n)
    for start in range(0, n, 10_000):
        ids = [f"user-{i:08d}" for i in range(start, min(start + 10_000, n))]
        ledger.seed({uid: [("push", "job_alerts", "normal", now - 60)] for uid in ids}, dict.fromkeys(ids, tz), now)
    gc.collect()
    per_user = (proc.memory_info().rss - before) / n
    print(json.dumps({"people": n, "caps": len(FATIGUE.caps), "bytes_per_person": round(per_user),
                      "projected_10m_gib": round(per_user * 10_000_000 / 2**30, 2)}))


def _memory_child(n: int) -> None:
    import psutil
    proc = psutil.Process()
    from actors.user_cache import UserCache
    templates = {"jobseeker": TEMPLATE}
    gc.collect()
    before = proc.memory_info().rss
    users = UserCache(templates)
    for start in range(0, n, 10_000):  # as a shard fills it: a batch at a time
        users.update(population(min(10_000, n - start), start=start))
    gc.collect()
    after = proc.memory_info().rss
    per_user = (after - before) / n
    print(json.dumps({"users": n, "rss_mib": round((after - before) / 2**20, 1), "bytes_per_user": round(per_user),
                      "projected_10m_gib": round(per_user * 10_000_000 / 2**30, 2), "held": len(users)}))


async def _seed(conn, n: int, master_keys: str) -> None:
    users = population(n)
    from infra.pii import Keyring
    from policy.sharding import stable_hash
    from stores import pii
    await conn.copy_records_to_table("users", columns=("user_id", "timezone", "locale", "shard_key"),
                                     records=[(u.user_id, u.timezone, u.locale, stable_hash(u.user_id))
                                              for u in users.values()])
    ring = await pii.keyring(conn, Keyring.parse(master_keys))
    keys = await pii.copy_new_keys(conn, ring, list(users))
    await conn.copy_records_to_table("user_addresses", columns=pii.ADDRESS_COLUMNS, records=pii.address_records(
        ring, keys, [(u.user_id, ch, a) for u in users.values() for ch, a in u.addresses.items()]))
    from stores.prefs import INSERT_PREFS, pref_record
    await conn.executemany(INSERT_PREFS, [pref_record(u.user_id, p, keys[u.user_id])
                                          for u in users.values() for p in u.prefs])


async def bench_load(url: str, n: int, shards: int = 2) -> dict:
    """Seed n users, then ``UserShard.preload`` in ``shards`` processes at once
    (as Ray runs shards: one process each); time from a common start."""
    import asyncpg

    from engine import master_keys
    schema = f"bench_load_{uuid.uuid4().hex[:6]}"
    keys = master_keys.generate("bench")
    await migrations.migrate_url(url, schema)
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        t0 = time.perf_counter()
        await _seed(conn, n, keys)
        seeded_s = time.perf_counter() - t0
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    # cold: seeded by COPY, no users.state yet (as after a bulk import): the first
    # preload assembles and writes it back; warm: every later start
    cold = _preload_all(url, schema, shards, keys)
    warm = _preload_all(url, schema, shards, keys)
    await _drop(url, schema)
    return {"users": n, "shards": shards, "seed_seconds": round(seeded_s, 1), "cold": cold, "warm": warm,
            "users_per_s": warm["users_per_s"]}


def _preload_all(url: str, schema: str, shards: int, keys: str) -> dict:
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(shards + 1), ctx.Queue()
    procs = [ctx.Process(target=_preload_child, args=(url, schema, i, shards, keys, barrier, results))
             for i in range(shards)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    got = [results.get() for _ in procs]
    took = time.perf_counter() - t0
    for p in procs:
        p.join()
    loaded = sum(g["users"] for g in got)
    return {"loaded": loaded, "seconds": round(took, 2), "users_per_s": round(loaded / took), "per_shard": got}


def _preload_child(url, schema, index, shards, keys, barrier, results) -> None:
    from actors.user_shard import UserShard
    from engine import settings
    from infra import config
    cfg = config.encode(settings.load("development", env={}, overrides={
        "database": {"url": url, "schema": schema}, "engine": {"user_shards": shards, "preload_users": False},
        "privacy": {"master_keys": keys}}))
    shard = UserShard(index, cfg, url, {}, None)  # preload timed below, not started by _ready

    async def run() -> dict:
        await shard._ready()
        barrier.wait()
        t0 = time.perf_counter()
        n = await shard.preload()
        return {"index": index, "users": n, "seconds": round(time.perf_counter() - t0, 2)}

    results.put(asyncio.run(run()))


async def bench_import(url: str, n: int) -> dict:
    import asyncpg

    from engine import master_keys
    from infra.pii import Keyring
    from stores import bulk, pii
    schema = f"bench_import_{uuid.uuid4().hex[:6]}"
    await migrations.migrate_url(url, schema)
    rng = random.Random(3)
    lines = []
    for i in range(n):
        row = {"user_id": f"imp-{i:08d}", "channel": rng.choice(["email", "push", "sms", "*"]),
               "category": rng.choice(CATEGORIES[:4]), "frequency": rng.choice(["immediate", "daily", "weekly"])}
        lines.append(orjson.dumps(row))
    data = b"\n".join(lines) + b"\n"
    marks: dict[str, float] = {}
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        t0 = time.perf_counter()
        # streamed as the HTTP import is: parsed, checked and staged a chunk at a time
        ring = await pii.keyring(conn, Keyring.parse(master_keys.generate("bench")))
        rows, users = await bulk.import_rows(conn, ring, bulk.parse_ndjson(io.BytesIO(data)), POLICY, "bench",
                                             progress=lambda phase, k: marks.__setitem__(phase, time.perf_counter()),
                                             statement_timeout_s=0)
        total = time.perf_counter() - t0
    finally:
        await conn.close()
    await _drop(url, schema)
    staged_s = marks.get("staged", t0) - t0  # until the last chunk was staged; the rest is writing
    return {"rows": rows, "users": len(users), "bytes": len(data), "parse_validate_s": round(staged_s, 2),
            "write_s": round(total - staged_s, 2), "rows_per_s": round(n / total)}


async def _drop(url: str, schema: str) -> None:
    import asyncpg
    c = await asyncpg.connect(url)
    try:
        await c.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await c.close()


def database_url() -> tuple[str, object]:
    url = os.environ.get("TIDINGS_DATABASE_URL")
    if url:
        return url, None
    from engine.embedded import EmbeddedPostgres
    server = EmbeddedPostgres(".tidings/bench-pg")
    return server.start(), server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tidings bench prefs", description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="all", choices=("decide", "memory", "load", "import", "all"))
    p.add_argument("--users", type=int, default=1_000_000, help="memory and load: users")
    p.add_argument("--rows", type=int, default=100_000, help="import: rows")
    p.add_argument("--calls", type=int, default=200_000, help="decide: calls timed")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    out: dict = {}
    if args.what in ("decide", "all"):
        out["decide"] = bench_decide(args.calls)
        print("decide", out["decide"], flush=True)
    if args.what in ("memory", "all"):
        out["memory"] = bench_memory(args.users)
        print("memory", out["memory"], flush=True)
    if args.what in ("load", "import", "all"):  # PostgreSQL from here on
        url, server = database_url()
        try:
            if args.what in ("load", "all"):
                out["load"] = asyncio.run(bench_load(url, args.users))
                print("load", out["load"], flush=True)
            if args.what in ("import", "all"):
                out["import"] = asyncio.run(bench_import(url, args.rows))
                print("import", out["import"], flush=True)
        finally:
            if server is not None:
                server.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
