"""The fault bench's stage (bench/faults.py): the servers it stops and starts
itself, and one engine with its webhook sink, load and counts.

- ``Servers``: an embedded nats-server (JetStream file storage) and an embedded
  PostgreSQL under one folder, on free ports, never the machine's own.
- ``Stage``: one engine on them with its own schema and streams — in this
  process, or (``child=True``) in a child process the bench can SIGKILL — a
  webhook sink in its own process (sandbox/) whose faults change while it runs,
  and this process's own connections to publish and to watch.

``python -m bench.fault_stage CONFIG READY`` is that child: it runs an engine
for the msgpack config in CONFIG until SIGTERM, and writes the pids of its
actors to READY once it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import nats
import psutil

from engine import raybox, settings
from engine.children import die_with_parent
from engine.embedded import EmbeddedNats, EmbeddedPostgres
from engine.prefs_bus import set_subject
from engine.runtime import Engine, kill_recorded
from infra import config, streams
from infra.config import ChannelConfig, Config, ProviderConfig
from sandbox import SinkProcess

SECRET = "faults-secret"
PREFIX = "f-"
FINAL = "status NOT IN ('deferred', 'pending', 'processing')"
# Every channel row final; a digested one only once its digest's row is final too.
TERMINAL_SQL = f"""
SELECT t.notification_id::text FROM delivery_tracking t
LEFT JOIN delivery_tracking g ON g.notification_id = t.digest_id AND g.channel = t.channel
WHERE t.notification_id = ANY($1::uuid[])
GROUP BY t.notification_id
HAVING bool_and(t.{FINAL} AND (t.status <> 'digested' OR coalesce(g.{FINAL}, false)))
"""
PENDING_SQL = ("SELECT (SELECT count(*) FROM scheduled_notifications WHERE status = 'pending') + "
               "(SELECT count(*) FROM digest_buckets WHERE status <> 'sent')")
QUIET_FOR_S = 3.0  # nothing pending anywhere for this long: nothing more will happen


@dataclass
class Options:
    n: int = 2000  # notifications per scenario
    outage_s: float = 30.0  # postgres-down: how long PostgreSQL is stopped
    provider_outage_s: float = 60.0  # provider-down: how long the receiver is down
    flaky_s: float = 10.0  # provider-flaky / -garbage: how long the receiver misbehaves
    timeout_s: float = 300.0  # longest wait, from the fault's end, for every notification to be terminal
    fault_at: float = 0.3  # the fault starts once this share of the load is terminal
    drain_s: float = 3.0  # the provider's concurrency is set so the load takes about this long unhurt
    sink_delay_s: float = 0.02  # every answer of the receiver takes this long
    ack_wait_s: float = 10.0  # JetStream's ack wait: when a killed Ingestor's batches come back
    digest_share: float = 0.1  # users with an hourly webhook digest (released by the Scheduler)
    quiet: bool = True  # release-while-killed also holds notifications for quiet hours
    seed: int = 1

    @property
    def users(self) -> int:
        return max(10, self.n // 4)

    def concurrency(self, shards: int) -> int:
        """Calls in flight per ChannelShard for a drain of about ``drain_s``."""
        return max(2, round(self.n * self.sink_delay_s / (shards * self.drain_s)))


class Servers:
    """Embedded nats-server and PostgreSQL under ``home``, ours to stop and start.
    Started and stopped on the calling thread: the servers die with that thread."""

    def __init__(self, home: str | Path):
        self.home = Path(home).resolve()
        self.nats = EmbeddedNats(self.home, port=0)
        self.postgres = EmbeddedPostgres(self.home)
        self.nats_url = self.database_url = ""

    def start(self) -> Servers:
        try:
            self.nats_url = self.nats.start()
            self.database_url = self.postgres.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self.postgres.stop()
        finally:
            self.nats.stop()

    def stop_postgres(self) -> None:
        self.postgres.stop()

    def start_postgres(self) -> None:
        url = self.postgres.start()
        assert url == self.database_url, f"PostgreSQL came back at {url}, not {self.database_url}"

    def restart_nats(self) -> None:
        """Same port, same store folder: JetStream's file storage survives."""
        self.nats.stop()
        assert self.nats.start() == self.nats_url


def stage_config(servers: Servers, opts: Options, sink_url: str) -> Config:
    """The bench profile on ``servers``, its own schema and streams, only the
    webhook channel (two ChannelShards) pointed at the sink."""
    run = uuid.uuid4().hex[:8]
    cfg = settings.load(profile="bench", env={}, overrides={
        "engine": {"home": str(servers.home), "user_shards": 2, "ingest_batch": 100, "fetch_timeout_s": 0.02},
        "nats": {"url": servers.nats_url, "prefix": f"faults{run}", "stream": f"FAULTS{run}",
                 "consumer": f"faults{run}", "ack_wait_s": opts.ack_wait_s},
        "database": {"url": servers.database_url, "schema": f"faults_{run}"},
        "ratelimit": {"enabled": False},
        "ray": {"dashboard": False},
        # a claim whose release failed comes back after lease_s: short, so a repeat shows within a run
        "scheduler": {"interval_s": 0.5, "lease_s": 15},
        "retention": {"interval_s": 0},
    })
    c = opts.concurrency(2)
    provider = ProviderConfig(name="faults-sink", type="webhook", concurrency=c, timeout_s=1.0, max_attempts=3,
                              backoff_base_s=0.05, backoff_max_s=0.5, breaker_failures=5, breaker_recovery_s=3.0,
                              settings={"url": sink_url, "secret": SECRET, "max_connections": max(8, 2 * c)})
    return msgspec.structs.replace(cfg, channels={"webhook": ChannelConfig(shards=2, providers=[provider])})


class Stage:
    """One engine on ``servers``, its sink, load and counts; ``open`` then ``close``."""

    def __init__(self, servers: Servers, opts: Options, *, child: bool = False, digest_clock: bool = True):
        self.servers, self.opts, self.child = servers, opts, child
        self.sink: SinkProcess | None = None
        self.carried: Counter[str] = Counter()  # accepted by sink processes since stopped
        self.engine: Engine | None = None
        self.proc: subprocess.Popen | None = None
        self.child_pids: list[int] = []
        self.pool: asyncpg.Pool | None = None
        self.nc: nats.NATS | None = None
        self.clock: asyncio.Task | None = None
        self.digest_clock = digest_clock
        self.ids: list[str] = []  # the load in flight (what ``uncommitted`` looks at)
        self.cfg: Config | None = None  # made once the sink's port is known

    async def open(self) -> Stage:
        try:
            self.sink = SinkProcess("webhook", secret=SECRET).start()
            await self.set_faults()
            self.cfg = stage_config(self.servers, self.opts, self.sink.url)
            await self.start_engine()
            self.pool = await asyncpg.create_pool(self.servers.database_url, min_size=1, max_size=2,
                                                  server_settings={"search_path": self.cfg.database.schema})
            self.nc = await nats.connect(self.servers.nats_url, max_reconnect_attempts=-1, name="faults-bench",
                                         error_cb=_expected)
            self.js = self.nc.jetstream()
            if self.digest_clock:
                self.clock = asyncio.get_running_loop().create_task(self._digest_clock())
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Stop everything this stage started and drop its schema and streams."""
        if self.clock is not None:
            self.clock.cancel()
            await asyncio.gather(self.clock, return_exceptions=True)
        try:
            await self.stop_engine()
        finally:
            if self.sink is not None:
                await asyncio.to_thread(self.sink.stop)
                self.sink = None
            await self._drop()

    async def _drop(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        if self.cfg is None:
            return
        conn = await asyncpg.connect(self.servers.database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.cfg.database.schema}" CASCADE')
        finally:
            await conn.close()
        if self.nc is not None:
            for name in streams.every_stream(self.cfg.nats):
                with contextlib.suppress(Exception):  # one not made yet
                    await self.js.delete_stream(name)
            await self.nc.drain()

    # -- the engine ---------------------------------------------------------------

    async def start_engine(self) -> None:
        if not self.child:
            self.engine = await Engine(self.cfg).start()
            return
        gcs = raybox.init(self.cfg.ray)["gcs_address"]  # the child joins this process's Ray
        cfg = msgspec.structs.replace(self.cfg, ray=msgspec.structs.replace(self.cfg.ray, address=gcs))
        base = self.servers.home / f"child-{self.cfg.database.schema}"
        Path(f"{base}.cfg").write_bytes(config.encode(cfg))
        ready = Path(f"{base}.ready")
        ready.unlink(missing_ok=True)
        with open(f"{base}.log", "ab") as log:  # the child's output, Ray's included
            self.proc = subprocess.Popen([sys.executable, "-m", "bench.fault_stage", f"{base}.cfg", str(ready)],
                                         stdout=log, stderr=log, preexec_fn=die_with_parent())
        deadline = time.monotonic() + 120
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the engine child did not start; see {base}.log")
            await asyncio.sleep(0.1)
        self.child_pids = json.loads(ready.read_text())

    async def kill_engine(self) -> None:
        """SIGKILL the engine child and its actors (detached, they would outlive
        it), and wait until Ray has ended them."""
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait)
        self.proc = None
        await kill_recorded(self.servers.database_url, self.cfg)
        procs = [p for p in map(_process, self.child_pids) if p is not None]
        await asyncio.to_thread(psutil.wait_procs, procs, 60)

    async def stop_engine(self) -> None:
        if self.engine is not None:
            engine, self.engine = self.engine, None
            await engine.stop()
        if self.proc is not None:
            proc, self.proc = self.proc, None
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- the sink -----------------------------------------------------------------

    async def set_faults(self, **faults) -> None:
        """The receiver's faults from now on (sandbox/faults.py); none but its delay by default."""
        body = {"delay_s": self.opts.sink_delay_s, "seed": self.opts.seed, **faults}
        async with aiohttp.ClientSession() as s, s.put(f"{self.sink.base_url}/_sink/faults", json=body) as r:
            assert r.status == 200, await r.text()

    async def accepted(self) -> Counter[str]:
        """Notification id -> requests the receiver answered 2xx, over every sink process."""
        return self.carried + Counter((await self._sink_ids())["accepted"])

    async def asked(self) -> set[str]:
        """Notification ids the (current) receiver got a request for, answered or not."""
        return set((await self._sink_ids())["attempts"])

    async def _sink_ids(self) -> dict:
        async with aiohttp.ClientSession() as s, s.get(f"{self.sink.base_url}/_sink/ids") as r:
            return await r.json()

    async def stop_sink(self) -> None:
        await self.set_faults(fail_ratio=1.0)  # it accepts nothing from here: the count below is final
        self.carried = await self.accepted()
        port = self.sink.port
        await asyncio.to_thread(self.sink.stop)
        self.sink = SinkProcess("webhook", secret=SECRET, port=port)  # not started: the port refuses

    async def start_sink(self) -> None:
        self.sink.start()
        await self.set_faults()

    # -- the load -----------------------------------------------------------------

    def users(self, count: int | None = None) -> list[str]:
        return [f"{PREFIX}{i:06d}" for i in range(count or self.opts.users)]

    async def set_prefs(self, rows: dict[str, list[dict]], timeout_s: float = 60) -> None:
        """Preference rows over NATS (engine/prefs_bus.py); returns once committed."""
        prefix = self.cfg.nats.prefix
        for uid, prefs in rows.items():
            await self.js.publish(set_subject(prefix, uid), msgspec.json.encode({"patch": {"set": prefs}}))
        deadline = time.monotonic() + timeout_s
        while await self._value("SELECT count(DISTINCT user_id) FROM preference_sync_log "
                                "WHERE user_id = ANY($1)", list(rows)) != len(rows):
            if time.monotonic() > deadline:
                raise RuntimeError("preferences were not committed in time")
            await asyncio.sleep(0.1)

    async def publish(self, notes: list[dict], timeout_s: float = 120) -> list[str]:
        """Publish, 64 at a time, each with its id as Nats-Msg-Id (a publish
        tried again is one message); a failed one is tried again until
        JetStream acks it. Returns the ids."""
        gate = asyncio.Semaphore(64)
        deadline = time.monotonic() + timeout_s

        async def one(note: dict) -> None:
            subject, body = streams.notify_subject(self.cfg.nats, note["category"]), msgspec.json.encode(note)
            while True:
                try:
                    async with gate:
                        await self.js.publish(subject, body, timeout=5, headers={"Nats-Msg-Id": note["id"]})
                    return
                except Exception:  # NATS may be the fault: tried again until the deadline
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)

        for note in notes:
            note.setdefault("id", str(uuid.uuid4()))
        await asyncio.gather(*(one(n) for n in notes))
        return [n["id"] for n in notes]

    async def _digest_clock(self) -> None:
        """Digest buckets fall due at once instead of at the end of the hour, so
        the Scheduler's release path runs within every scenario."""
        while True:
            with contextlib.suppress(Exception):  # PostgreSQL may be the fault
                await self.pool.execute("UPDATE digest_buckets SET due_at = now() "
                                        "WHERE status <> 'sent' AND due_at > now()")
            await asyncio.sleep(0.5)

    # -- watching -----------------------------------------------------------------

    async def _value(self, sql: str, *args):
        """One value; None while PostgreSQL does not answer (it may be the fault)."""
        try:
            return await self.pool.fetchval(sql, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return None

    async def terminal(self, ids: list[str]) -> set[str]:
        try:
            return {r[0] for r in await self.pool.fetch(TERMINAL_SQL, ids)}
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return set()

    async def recorded(self, ids: list[str]) -> set[str]:
        rows = await self.pool.fetch("SELECT DISTINCT notification_id::text FROM delivery_tracking "
                                     "WHERE notification_id = ANY($1::uuid[])", ids)
        return {r[0] for r in rows}

    async def uncommitted(self) -> set[str]:
        """The load's ids (``self.ids``), and its digests' ids, without a tracking row now."""
        digests = await self.pool.fetch("SELECT DISTINCT digest_id::text FROM delivery_tracking "
                                        "WHERE notification_id = ANY($1::uuid[]) AND digest_id IS NOT NULL", self.ids)
        ids = [*self.ids, *(r[0] for r in digests)]
        return set(ids) - await self.recorded(ids)

    async def acked(self) -> bool:
        """No message pending or unacked in any lane of the engine's stream."""
        try:
            for lane in streams.LANES:
                info = await self.js.consumer_info(self.cfg.nats.stream, streams.consumer_name(self.cfg.nats, lane))
                if info.num_pending or info.num_ack_pending:
                    return False
        except Exception:  # noqa: BLE001 - NATS may be the fault
            return False
        return True

    async def quiet(self) -> bool:
        """Nothing pending: every message acked, no held row or digest bucket left."""
        return await self.acked() and await self._value(PENDING_SQL) == 0

    async def wait_terminal(self, ids: list[str], share: float, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while len(done := await self.terminal(ids)) < share * len(ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return len(done)

    async def settle(self, ids: list[str], since: float) -> tuple[int, float | None]:
        """Wait for every notification to be terminal, then for nothing to be
        pending; gives up when nothing has been pending for QUIET_FOR_S (the
        rest will never be terminal) or at the timeout. Returns the terminal
        count and the seconds from ``since`` to all terminal (None if never)."""
        deadline = since + self.opts.timeout_s
        recovery, quiet_since = None, None
        while time.monotonic() < deadline:
            done = len(await self.terminal(ids))
            if recovery is None and done == len(ids):
                recovery = time.monotonic() - since
            if await self.quiet():
                quiet_since = quiet_since or time.monotonic()
                if recovery is not None or time.monotonic() - quiet_since >= QUIET_FOR_S:
                    break
            else:
                quiet_since = None
            await asyncio.sleep(0.1)
        return len(await self.terminal(ids)), recovery

    async def counts(self, ids: list[str], window: set[str] | None, strict: set[str] | None = None) -> dict:
        """What the receiver and the tracking rows say about ``ids`` (bench/faults.py);
        ``window``: ids allowed to repeat (sent at a kill, not committed), of which
        ``strict`` were answered before the kill."""
        accepted = await self.accepted()
        digest_of = {r[0]: r[1] for r in await self.pool.fetch(
            "SELECT notification_id::text, digest_id::text FROM delivery_tracking "
            "WHERE notification_id = ANY($1::uuid[]) AND digest_id IS NOT NULL", ids)}
        rows = await self.pool.fetch("SELECT status, reason, count(*) FROM delivery_tracking "
                                     "WHERE notification_id = ANY($1::uuid[]) GROUP BY status, reason", ids)
        statuses, failed = Counter(), Counter()
        for status, reason, n in rows:
            statuses[status] += n
            if status == "failed":
                failed[reason] += n
        sent = set(ids) | set(digest_of.values())
        twice = {i for i in sent if accepted[i] > 1}
        in_window = twice & (window or set())
        try:
            dead = (await self.js.stream_info(streams.dlq_stream(self.cfg.nats))).state.messages
        except Exception:  # noqa: BLE001 - none made yet
            dead = 0
        return {
            "delivered": sum(1 for i in ids if accepted[i] or accepted[digest_of.get(i, "")]),
            "sent_twice": len(twice), "window": len(in_window), "window_answered_before": len(twice & (strict or set())),
            "extra_sends": sum(accepted[i] - 1 for i in twice), "most_sends": max((accepted[i] for i in sent), default=0),
            "digests": len(set(digest_of.values())), "statuses": dict(statuses), "failed_reasons": dict(failed),
            "dead_lettered": dead,
            "twice_ids": sorted(twice - in_window)[:10],
        }


async def _expected(error: Exception) -> None:
    """NATS going away is what some scenarios do: not worth a traceback."""


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def child(path: str, ready: str) -> int:
    """An engine for the config in ``path`` until SIGTERM (the bench's child);
    the pids of its actors are written to ``ready`` once it runs."""
    import ray
    import uvloop

    cfg = config.decode(Path(path).read_bytes())

    async def serve() -> None:
        stop = asyncio.Event()
        engine = await Engine(cfg).start()
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
            pids = [await a.__ray_call__.remote(lambda _: os.getpid()) for a in engine.actors.all()]
            Path(f"{ready}.tmp").write_text(json.dumps(pids))
            os.replace(f"{ready}.tmp", ready)  # whole, or not there
            await stop.wait()
        finally:
            await engine.stop()

    try:
        uvloop.run(serve())
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[1], sys.argv[2]))
