"""The fault bench's scenarios (bench/faults.py): each injects one fault into a
``Stage`` while its load is in flight and returns once the fault has ended.

``run(stage, name)`` publishes the load, waits for ``fault_at`` of it to be
terminal, injects the fault, then waits for the rest and counts.
``release_while_killed`` builds its own stage: its engine runs in a child
process that it SIGKILLs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.demo import requests as make_requests
from bench.fault_stage import PREFIX, Options, Servers, Stage

ACTOR_KINDS = ("Ingestor", "UserShard", "ChannelShard", "Recorder", "Scheduler")


@dataclass
class Injected:
    """What a fault left behind. ``window``: what was in flight at a kill — ids
    with no tracking row at the kill that the receiver had been asked for by the
    time the killed actor was back (sends under way, the one allowed cause of a
    repeat); ``strict``: of those, the ones the receiver had accepted before
    the kill. ``more``: ids published after the fault."""

    window: set[str] | None = None
    strict: set[str] | None = None
    more: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)


Fault = Callable[[Stage], Awaitable[Injected]]


async def postgres_down(st: Stage) -> Injected:
    st.servers.stop_postgres()
    await asyncio.sleep(st.opts.outage_s)
    st.servers.start_postgres()
    return Injected(notes={"outage_s": st.opts.outage_s})


async def postgres_restart(st: Stage) -> Injected:
    st.servers.stop_postgres()
    st.servers.start_postgres()
    return Injected()


async def nats_restart(st: Stage) -> Injected:
    st.servers.restart_nats()
    return Injected()


def actor_of(st: Stage, kind: str):
    """The one actor of ``kind`` a kill scenario kills: the first of its kind (the
    bulk lane's Ingestor, UserShard 0, the webhook's ChannelShard 0)."""
    a = st.engine.actors
    return {"Ingestor": a.ingestors[0], "UserShard": a.user_shards[0], "ChannelShard": a.channel_shards["webhook"][0],
            "Recorder": a.recorder, "Scheduler": a.scheduler}[kind]


def _pid(_) -> int:
    return os.getpid()


def kill(kind: str) -> Fault:
    async def fault(st: Stage) -> Injected:
        actor = actor_of(st, kind)
        pid = await actor.__ray_call__.remote(_pid)
        os.kill(pid, signal.SIGKILL)  # Ray restarts it (max_restarts in engine/runtime.py)
        killed = time.monotonic()
        open_, answered = await st.uncommitted(), set(await st.accepted())
        back = await restarted(actor, pid)
        asked = await st.asked()
        return Injected(window=open_ & (asked | answered), strict=open_ & answered,
                        notes={"pid": pid, "restart_s": round(back - killed, 1)})
    return fault


async def restarted(actor, pid: int, timeout_s: float = 120) -> float:
    """When ``actor`` answered again from a process other than ``pid``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if await asyncio.wait_for(actor.__ray_call__.remote(_pid), 5) != pid:
                break
        except Exception:  # noqa: BLE001 - restarting: unavailable, or the call timed out
            await asyncio.sleep(0.1)
    return time.monotonic()


async def provider_flaky(st: Stage) -> Injected:
    """30% answered 503, 10% held past the provider's timeout, for ``flaky_s``."""
    timeout = st.cfg.channels["webhook"].providers[0].timeout_s
    await st.set_faults(fail_ratio=0.3, hang_ratio=0.1, hang_s=timeout + 0.5)
    await asyncio.sleep(st.opts.flaky_s)
    await st.set_faults()
    return Injected(notes={"flaky_s": st.opts.flaky_s})


async def provider_garbage(st: Stage) -> Injected:
    """Garbage bodies (NUL bytes, not UTF-8, not JSON) on every answer, 40% of
    them 5xx, for ``flaky_s``."""
    await st.set_faults(garbage=True, fail_ratio=0.4)
    await asyncio.sleep(st.opts.flaky_s)
    await st.set_faults()
    return Injected(notes={"garbage_s": st.opts.flaky_s})


async def provider_down(st: Stage) -> Injected:
    """The receiver down (connection refused) for ``provider_outage_s``; once it
    is back, a tenth of the load more, published evenly over two of the breaker's
    recovery times and a second: the breakers have to half-open and close for
    them to be delivered, and at least a recovery time of them come after that."""
    await st.stop_sink()
    await asyncio.sleep(st.opts.provider_outage_s)
    await st.start_sink()
    notes = load(st.opts, max(1, st.opts.n // 10), seed=st.opts.seed + 1)
    spread = 2 * st.cfg.channels["webhook"].providers[0].breaker_recovery_s + 1
    more = []
    for i in range(0, len(notes), step := max(1, len(notes) // 20)):
        more += await st.publish(notes[i:i + step])
        await asyncio.sleep(spread * step / len(notes))
    return Injected(more=more, notes={"outage_s": st.opts.provider_outage_s, "after": more, "after_spread_s": spread})


async def baseline(st: Stage) -> Injected:
    return Injected()


FAULTS: dict[str, Fault] = {
    "baseline": baseline,
    "postgres-down": postgres_down,
    "postgres-restart": postgres_restart,
    "nats-restart": nats_restart,
    **{f"kill-{kind}": kill(kind) for kind in ACTOR_KINDS},
    "provider-flaky": provider_flaky,
    "provider-garbage": provider_garbage,
    "provider-down": provider_down,
}


def load(opts: Options, count: int, seed: int | None = None) -> list[dict]:
    """``count`` webhook notifications over the population (bench/demo.py's mix of categories)."""
    return make_requests(count, opts.users, f"faults-{time.time_ns()}", seed=opts.seed if seed is None else seed,
                         prefix=PREFIX, channels=("webhook",))


async def seed_digests(st: Stage) -> None:
    """An hourly webhook digest of job alerts for ``digest_share`` of the users."""
    count = round(st.opts.users * st.opts.digest_share)
    if count:
        await st.set_prefs({u: [{"channel": "webhook", "category": "job_alerts", "frequency": "hourly"}]
                            for u in st.users(count)})


async def run(st: Stage, name: str) -> dict:
    """One scenario on an open stage (one whose digest users are seeded)."""
    fault, opts = FAULTS[name], st.opts
    ids = st.ids = await st.publish(load(opts, opts.n))
    at_fault = await st.wait_terminal(ids, opts.fault_at, opts.timeout_s)
    started = time.monotonic()
    injected = await fault(st)
    ended = time.monotonic()
    ids += injected.more
    terminal, recovery = await st.settle(ids, ended)
    return await result(st, name, ids, terminal, recovery, injected,
                        terminal_at_fault=at_fault, fault_s=round(ended - started, 1))


async def result(st: Stage, name: str, ids: list[str], terminal: int, recovery: float | None, injected: Injected,
                 **extra) -> dict:
    counts = await st.counts(ids, injected.window, injected.strict)
    notes = dict(injected.notes)
    after = notes.pop("after", None)
    if after:
        notes["after_delivered"] = (await st.counts(after, None))["delivered"]
        notes["after_submitted"] = len(after)
    return {"scenario": name, "submitted": len(ids), "delivered": counts.pop("delivered"),
            "lost": len(ids) - terminal, "sent_twice": counts.pop("sent_twice"), "window": counts.pop("window"),
            "terminal": terminal, "recovery_s": None if recovery is None else round(recovery, 1),
            "in_flight_at_kill": None if injected.window is None else len(injected.window),
            **extra, **counts, "notes": notes}


# -- a release due while the engine is killed ------------------------------------


def quiet_window(now: float, lead_s: float = 20) -> tuple[dict, float]:
    """A UTC quiet-hours window from this minute to the next minute boundary at
    least ``lead_s`` away (minutes are the windows' grain); and when it ends."""
    start = dt.datetime.fromtimestamp(now, dt.UTC).replace(second=0, microsecond=0)
    end = start + dt.timedelta(minutes=1)
    if end.timestamp() - now < lead_s:
        end += dt.timedelta(minutes=1)
    return {"quiet_hours": [{"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}]}, end.timestamp()


async def release_while_killed(servers: Servers, opts: Options) -> dict:
    """Notifications held in hourly digests (and, with ``opts.quiet``, for quiet
    hours) are committed as held; the engine's process is SIGKILLed; they fall
    due while it is down (the digests' due time is moved to now, the quiet
    hours end); a new engine process releases each exactly once."""
    st = await Stage(servers, opts, child=True, digest_clock=False).open()
    try:
        users = st.users()
        half = len(users) // 2 if opts.quiet else len(users)
        prefs = {u: [{"channel": "webhook", "frequency": "hourly"}] for u in users[:half]}
        quiet_end = None
        if opts.quiet:
            rows, quiet_end = quiet_window(time.time())
            prefs.update({u: [rows] for u in users[half:]})
        await st.set_prefs(prefs)
        ids = st.ids = await st.publish(load(opts, opts.n))
        held = await held_all(st, ids, opts.timeout_s)
        at_kill = len(await st.terminal(ids))
        started = time.monotonic()
        await st.kill_engine()  # its actors too: nothing is sent from here until the next engine
        open_ = await st.uncommitted()
        window, strict = open_ & await st.asked(), open_ & set(await st.accepted())
        await st.pool.execute("UPDATE digest_buckets SET due_at = now() WHERE status <> 'sent'")
        if quiet_end is not None:
            await asyncio.sleep(max(0.0, quiet_end + 1 - time.time()))
        ended = time.monotonic()  # the engine is started again: recovery counts its start-up
        await st.start_engine()
        terminal, recovery = await st.settle(ids, ended)
        injected = Injected(window=window, strict=strict, notes={"held": held, "quiet_hours": opts.quiet})
        return await result(st, "release-while-killed", ids, terminal, recovery, injected,
                            terminal_at_fault=at_kill, fault_s=round(ended - started, 1))
    finally:
        await st.close()


async def held_all(st: Stage, ids: list[str], timeout_s: float) -> int:
    """Wait until every notification has its tracking row (held or sent) and
    nothing is left unacked; returns how many were held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(await st.recorded(ids)) == len(ids) and await st.acked():
            break
        await asyncio.sleep(0.1)
    return await st.pool.fetchval("SELECT count(*) FROM delivery_tracking WHERE notification_id = ANY($1::uuid[]) "
                                  "AND status IN ('deferred', 'digested')", ids)
