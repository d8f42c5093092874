"""Several engine instances on one deployment (docs/design.md "Several instances").

A deployment is a database schema and a stream. Its actors are one set, shared by
every ``tidings up`` on the same Ray cluster: one owner per user whichever front door
a request came through, one Scheduler, one EventSender, one Recorder. The actors are
detached and named with their generation's token (``Layout``); the generation is a
row of ``engine_deployment``.

Who starts them and who ends them is settled by two PostgreSQL advisory locks, held
on a connection of the instance's own for its life:

- *setup*, exclusive and brief: instances join and leave one at a time;
- *members*: every running instance holds it shared. An instance that gets it
  exclusively is alone. Joining alone, it starts a new generation (killing the
  actors a previous one left, when every instance of it died); leaving alone, it
  ends the generation.

An instance that dies without leaving loses its locks with its session: the others
carry on with the actors, and the next one to leave alone ends them.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import logging
import time
import uuid

import asyncpg
import msgspec

from actors import handles
from infra import db
from infra.config import Config, ConfigError, DatabaseConfig, HttpConfig, encode as encode_config

log = logging.getLogger(__name__)

SETUP_LOCK = 0x74646573  # "tdes": one instance joins or leaves at a time
MEMBERS_LOCK = 0x7464656D  # "tdem": held shared by every running instance
LEAD_LOCK = 0x7464656C  # "tdel": held by the one member that does what one must do at a time
PING_S = 5.0  # the longest the claim's session may take to answer before it counts as lost
CALL_S = 10.0  # the longest any call on the claim's session may take
# a member seen this recently is still there, lock or not: more than a supervisor turn
# (5 s) and its ping (PING_S), so a member taking its lock again after PostgreSQL came
# back is never mistaken for gone
GRACE_S = 20.0
JOIN_WAIT_S = 300.0  # the longest a start waits for another instance's start or stop (a first start warms every actor)
LEAVE_WAIT_S = 30.0  # the longest a stop waits for another's; then it leaves the actors to the others


class Layout(msgspec.Struct, forbid_unknown_fields=True):
    """The names of a generation's actors, by role: what an instance joining it looks up."""

    recorder: str
    users: list[str]
    channels: dict[str, list[str]]
    urgent: dict[str, list[str]]  # a channel's high/critical shards, numbered after its others
    ingestors: list[str]  # the bulk lanes' Ingestors, then the priority lane's
    scheduler: str
    events: str | None  # None: status events are off

    @classmethod
    def of(cls, cfg: Config, run: str) -> Layout:
        enabled = {name: ch for name, ch in cfg.channels.items() if name in cfg.enabled_channels()}
        # a channel's name is free text in the config: its actors' kind is prefixed, never "user" or "recorder"
        return cls(
            recorder=handles.name(run, "recorder", 0),
            users=[handles.name(run, "user", i) for i in range(cfg.engine.user_shards)],
            channels={name: [handles.name(run, f"channel.{name}", i) for i in range(ch.shards)]
                      for name, ch in enabled.items()},
            urgent={name: [handles.name(run, f"channel.{name}", ch.shards + i) for i in range(ch.urgent_shards)]
                    for name, ch in enabled.items() if ch.urgent_shards},
            ingestors=[handles.name(run, "ingestor", i) for i in range(cfg.engine.ingestors)]
            + [handles.name(run, "ingestor", "priority")],
            scheduler=handles.name(run, "scheduler", 0),
            events=handles.name(run, "events", 0) if cfg.events.enabled else None,
        )

    def every(self) -> list[str]:
        return [self.recorder, *self.users, *(n for ns in self.channels.values() for n in ns),
                *(n for ns in self.urgent.values() for n in ns), *self.ingestors, self.scheduler,
                *([self.events] if self.events else [])]


class Generation(msgspec.Struct):
    run: str
    layout: Layout
    shared_ray: bool
    fingerprint: str


def fingerprint(cfg: Config) -> str:
    """The engine's version and the configuration an instance's actors would be
    made with, but for what is each instance's own (its HTTP listener, how it
    reaches Ray and its dashboard): instances whose fingerprints differ would
    each expect actors the other did not make."""
    try:
        version = importlib.metadata.version("tidings")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    ray = msgspec.structs.replace(cfg.ray, address="", dashboard=False, dashboard_port=0, metrics_port=0,
                                  num_cpus=None)
    shared = msgspec.structs.replace(cfg, http=HttpConfig(), ray=ray)
    return hashlib.sha256(version.encode() + b"\0" + encode_config(shared)).hexdigest()[:32]


_layout = msgspec.json.Decoder(Layout)


async def connect(database_url: str, limits: DatabaseConfig) -> asyncpg.Connection:
    """The claim's own session: every call bounded on this side (a half-open
    connection never answers), and TCP keepalives on the server's, so a backend
    cut off from its instance ends within ~25 s and its locks with it."""
    keepalives = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}
    return await asyncio.wait_for(db.connect(database_url, limits, limits.schema, app="tidings-instance",
                                             settings=keepalives, command_timeout=CALL_S), CALL_S)


class Claim:
    """This instance's place in the deployment: ``join`` at start, ``leave`` at stop.

    Besides the locks, each member has a row in ``engine_members`` whose
    ``seen_at`` its supervisor renews every turn (``keep``). The locks say who
    holds a session now; the rows say who was there a moment ago. After
    PostgreSQL restarts (or fails over), every member is without its lock until
    its next turn: an instance that finds the members lock free while others
    were seen within ``GRACE_S`` on the server before is not alone, it waits for
    them (a start) or leaves the actors to them (a stop)."""

    def __init__(self, conn: asyncpg.Connection, cfg: Config, database_url: str):
        self.conn = conn
        self.database_url = database_url
        self.limits = cfg.database
        self.stream = cfg.nats.stream
        self.key = f"{cfg.database.schema}:{cfg.nats.stream}"
        self.legacy = f"tidings:engine:{cfg.database.schema}:{cfg.nats.stream}"
        self.instance = uuid.uuid4()
        # "alone" while it holds the members lock exclusively, then "member"; "lost" once
        # its session was away and it could not be sure its generation still runs
        self.mode: str | None = None
        self.setup_held = False
        self.run: str | None = None  # the generation it started or joined, once it did
        self.leading = False  # holds the lead lock (``lead``)

    @classmethod
    async def join(cls, database_url: str, cfg: Config, wait_s: float = JOIN_WAIT_S) -> Claim:
        """Take the setup lock (waiting for another instance's start or stop) and
        find out whether this instance is alone. ``joined`` ends the setup."""
        claim = cls(await connect(database_url, cfg.database), cfg, database_url)
        try:
            if not await claim._wait_for_setup(wait_s):
                raise ConfigError(f"another engine instance has been starting or stopping for over {wait_s:.0f} s "
                                  f"on database schema {cfg.database.schema!r} and stream {cfg.nats.stream!r}")
            claim.setup_held = True
            # an engine from before several instances holds this lock exclusively for its
            # life and knows no other: held shared here, neither starts beside the other
            if not await claim._hold_legacy():
                raise ConfigError("an engine of an earlier version runs on database schema "
                                  f"{cfg.database.schema!r} and stream {cfg.nats.stream!r}: stop it first")
            while True:
                if not await claim.conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", MEMBERS_LOCK,
                                                 claim.key):
                    break  # members hold it: join them
                if not await claim._others_seen():
                    claim.mode = "alone"
                    await claim.conn.execute("DELETE FROM engine_members WHERE stream = $1", claim.stream)  # stale
                    break
                # members seen a moment ago, none holding the lock: PostgreSQL came back and
                # they have not yet taken it again. Wait for them (their rows age out otherwise)
                await claim.conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", MEMBERS_LOCK, claim.key)
                await asyncio.sleep(1.0)
        except BaseException:
            await claim.close()  # the session's locks go with it
            raise
        return claim

    @property
    def alone(self) -> bool:
        return self.mode == "alone"

    async def previous(self) -> Generation | None:
        """The generation on record: running (another instance holds the members
        lock) or left by instances that all died."""
        return await recorded(self.conn, self.stream)

    async def record(self, gen: Generation) -> None:
        """The new generation, written by the instance that starts it (alone),
        before its actors are made: whatever a failed start leaves is named here."""
        assert self.alone
        await self.conn.execute(
            "INSERT INTO engine_deployment (stream, generation, actors, shared_ray, fingerprint) "
            "VALUES ($1, $2, $3::jsonb, $4, $5) "
            "ON CONFLICT (stream) DO UPDATE SET generation = EXCLUDED.generation, actors = EXCLUDED.actors, "
            "shared_ray = EXCLUDED.shared_ray, fingerprint = EXCLUDED.fingerprint, started_at = now()",
            self.stream, gen.run, msgspec.json.encode(gen.layout).decode(), gen.shared_ray, gen.fingerprint)
        self.run = gen.run

    async def joined(self, run: str) -> None:
        """A member of generation ``run`` from now on: its row written, the
        members lock held shared, the setup lock let go."""
        await self._seen(run)
        await self.conn.execute("SELECT pg_advisory_lock_shared($1, hashtext($2))", MEMBERS_LOCK, self.key)
        if self.mode == "alone":
            await self.conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", MEMBERS_LOCK, self.key)
        self.mode, self.run = "member", run
        await self._let_go_of_setup()

    def holds(self) -> bool:
        """A member whose session (and so its lock) is open."""
        return self.mode == "member" and not self.conn.is_closed()

    async def leave(self, wait_s: float = LEAVE_WAIT_S) -> bool:
        """Whether this instance is the last: then it ends the generation on
        record (and ``forget``s it); the setup lock stays held until ``close``, so
        no one joins a generation ending. A start that failed before ``joined`` is
        the last if no member is left (the others may have stopped while it
        joined); a member that cannot get the setup lock in time leaves the
        actors to the others, as does one that finds others seen a moment ago
        (they are taking their locks again)."""
        if self.mode == "alone":
            return True
        if self.conn.is_closed():
            return False
        if self.mode is None and self.setup_held:
            return await self._alone_now()
        if self.mode != "member":
            return False
        if not await self._wait_for_setup(wait_s):
            log.warning("another instance's start or stop held the deployment for %.0f s: this one leaves the "
                        "actors running for the others", wait_s)
            return False
        self.setup_held = True
        await self.conn.execute("DELETE FROM engine_members WHERE instance = $1", self.instance)
        await self.conn.execute("SELECT pg_advisory_unlock_shared($1, hashtext($2))", MEMBERS_LOCK, self.key)
        self.mode = None
        if await self._alone_now():
            return True
        await self._let_go_of_setup()
        return False

    async def lead(self) -> bool:
        """Whether this instance leads: one of the members does what must be done
        by one at a time (the preference writes over NATS, in order). Tried again
        each supervisor turn; another takes it within one when the leader dies."""
        if not self.leading and self.holds():
            self.leading = bool(await self.conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))",
                                                         LEAD_LOCK, self.key))
        return self.leading and self.holds()

    async def keep(self) -> bool:
        """Each supervisor turn: the member's row renewed. A member whose session
        ended (PostgreSQL restarted, failed over, or the connection dropped) lost
        its locks with it: a new session takes the members lock shared again, if
        its generation is still the one on record. False when it is not (an
        instance found itself alone meanwhile: it ended this one's actors or
        started new ones); then for good."""
        if self.mode == "lost":
            return False
        if self.mode != "member":
            return True
        if not self.conn.is_closed():
            try:  # a half-open connection (a failover) looks open until it is used
                await asyncio.wait_for(self._seen(self.run), PING_S)
                return True
            except Exception:  # noqa: BLE001 - any failure: the session is gone
                self.conn.terminate()
        self.leading = False
        conn = await connect(self.database_url, self.limits)
        try:
            ours = (await conn.fetchval("SELECT pg_try_advisory_lock_shared($1, hashtext($2))", MEMBERS_LOCK,
                                        self.key)
                    and await conn.fetchval("SELECT pg_try_advisory_lock_shared(hashtext($1))", self.legacy)
                    and await conn.fetchval("SELECT generation FROM engine_deployment WHERE stream = $1",
                                            self.stream) == self.run)
        except BaseException:
            conn.terminate()
            raise
        if not ours:
            conn.terminate()
            self.mode = "lost"  # for good: its handles are on a generation that ended
            return False
        self.conn = conn
        await self._seen(self.run)
        log.warning("the deployment's session was lost and taken again: this instance is still a member")
        return True

    async def forget(self, run: str) -> None:
        """The generation ended: its row and its members' go (unless a newer one replaced it)."""
        await self.conn.execute("DELETE FROM engine_deployment WHERE stream = $1 AND generation = $2",
                                self.stream, run)
        await self.conn.execute("DELETE FROM engine_members WHERE stream = $1 AND generation = $2", self.stream, run)

    async def close(self) -> None:
        """The session ends, and its advisory locks with it (bounded: a half-open
        connection is dropped on this side; its backend ends by keepalive)."""
        if self.conn.is_closed():
            return
        try:
            await asyncio.wait_for(self.conn.close(), PING_S)
        except Exception:  # noqa: BLE001 - any failure: drop it
            self.conn.terminate()

    async def _seen(self, run: str | None) -> None:
        await self.conn.execute(
            "INSERT INTO engine_members (instance, stream, generation, backend_pid, server_started) "
            "VALUES ($1, $2, $3, pg_backend_pid(), pg_postmaster_start_time()) "
            "ON CONFLICT (instance) DO UPDATE SET seen_at = now(), backend_pid = EXCLUDED.backend_pid, "
            "server_started = EXCLUDED.server_started", self.instance, self.stream, run)

    async def _others_seen(self) -> bool:
        """Another member may still be there without its lock: seen within
        ``GRACE_S``, and either its session is still open or the server has
        restarted (failed over) since (it is taking its lock again). One whose
        session ended on this same server is gone: it died."""
        return bool(await self.conn.fetchval(
            "SELECT count(*) FROM engine_members WHERE stream = $1 AND instance <> $2 "
            "AND seen_at > now() - make_interval(secs => $3) "
            "AND (server_started <> pg_postmaster_start_time() OR backend_pid IN (SELECT pid FROM pg_stat_activity))",
            self.stream, self.instance, GRACE_S))

    async def _hold_legacy(self) -> bool:
        return bool(await self.conn.fetchval("SELECT pg_try_advisory_lock_shared(hashtext($1))", self.legacy))

    async def _alone_now(self) -> bool:
        """The members lock taken exclusively, and no other member seen within ``GRACE_S``."""
        if not await self.conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", MEMBERS_LOCK, self.key):
            return False
        if await self._others_seen():
            await self.conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", MEMBERS_LOCK, self.key)
            log.warning("other instances were seen %.0f s ago and hold no lock now (PostgreSQL came back?): "
                        "the actors are left to them", GRACE_S)
            return False
        self.mode = "alone"
        return True

    async def _let_go_of_setup(self) -> None:
        await self.conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", SETUP_LOCK, self.key)
        self.setup_held = False

    async def _wait_for_setup(self, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while not await self.conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", SETUP_LOCK, self.key):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True


async def recorded(conn: asyncpg.Connection, stream: str) -> Generation | None:
    """The generation on record for ``stream``, if any (a row of a layout this
    version cannot read counts as none: the instance alone replaces it)."""
    row = await conn.fetchrow(
        "SELECT generation, actors::text, shared_ray, fingerprint FROM engine_deployment WHERE stream = $1", stream)
    if row is None:
        return None
    try:
        return Generation(row[0], _layout.decode(row[1]), row[2], row[3])
    except msgspec.ValidationError:
        log.warning("the recorded generation %s has a layout this version cannot read: left as it is", row[0])
        return None
