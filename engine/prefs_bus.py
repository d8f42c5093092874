"""Preferences over NATS.

In: ``<prefix>.prefs.set.<user>`` on the JetStream stream ``<stream>_PREFS``,
a JSON body ``{"put": {...}}`` or ``{"patch": {...}}`` with an optional
``"if_match": <version>``. The engine process pulls them in batches, sends one
call per owning UserShard, and acks once the shard answered (committed, or
refused). A body that does not decode, a violation or a version conflict goes
to ``<prefix>.dlq`` with the reason (header ``Tidings-Reason``) and is acked.

Out: every committed change is published on ``<prefix>.prefs.changed.<user>``
(JSON: user, version, type, source, the new document). The change feed
(``preference_sync_log``) is the durable record; a row stays ``pending`` until
its publish went out, and ``relay`` publishes what a crash left pending.

``<user>`` is the user id when it is a plain token (letters, digits, ``_``,
``-``), else ``~`` and its unpadded base64url form.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from actors.user_prefs import PrefCommand, PrefResult
from infra import streams
from policy import wire
from policy.sharding import shard_of
from policy.subjects import token_user, user_token
from policy.types import UserId
from policy.validate import PreferencesDoc, PreferencesPatch
from stores import pii, prefs as prefs_store
from stores.prefs import Change

log = logging.getLogger(__name__)

FETCH = 200
RELAY_EVERY_S = 5.0


def set_subject(prefix: str, user_id: str) -> str:
    return f"{prefix}.prefs.set.{user_token(user_id)}"


def changed_subject(prefix: str, user_id: str) -> str:
    return f"{prefix}.prefs.changed.{user_token(user_id)}"


class SetMessage(msgspec.Struct, forbid_unknown_fields=True):
    put: PreferencesDoc | None = None
    patch: PreferencesPatch | None = None
    if_match: int | None = None


_set = msgspec.json.Decoder(SetMessage)


def event(c: Change) -> bytes:
    return msgspec.json.encode({"user_id": c.user_id, "version": c.version, "type": c.type, "source": c.source,
                                **prefs_store.doc_json(c)})


def nats_actor(headers: dict | None) -> str:
    """The audit log's actor for a change over NATS: the producer may name
    itself (``X-Actor``), labelled as a NATS claim: publishing there is trusted
    infrastructure, not an authenticated principal."""
    claimed = (headers or {}).get("X-Actor", "")
    return "nats:" + "".join(c for c in claimed[:64] if c.isprintable()) if claimed else "nats"


async def run_commands(engine, commands: list[PrefCommand]) -> list[PrefResult]:
    """Group by owning shard, one call each; publish the committed changes.
    Answers come grouped by shard (see ``results_in_order``)."""
    n = len(engine.actors.user_shards)
    groups: dict[int, list[PrefCommand]] = {}
    for c in commands:
        groups.setdefault(shard_of(c.user_id, n), []).append(c)
    replies = await asyncio.gather(*(engine.actors.user_shards[s].set_prefs.remote(wire.encode(g))
                                     for s, g in groups.items()))
    results = [r for reply in replies for r in wire.decode(reply, list[PrefResult])]
    await publish(engine, [r.change for r in results if r.change is not None])
    return results


async def publish(engine, changes: list[Change]) -> None:
    """Publish committed changes and mark them published in the change feed. A
    failure is logged, not raised: the change is committed, ``relay`` retries."""
    if not changes:
        return
    prefix = engine.cfg.nats.prefix
    try:
        for c in changes:
            await engine.nc.publish(changed_subject(prefix, c.user_id), event(c))
        await engine.nc.flush(timeout=5)
        async with engine.pool.acquire() as conn:
            await prefs_store.mark_published(conn, [(c.user_id, c.version) for c in changes])
    except Exception as e:  # noqa: BLE001 - the change is durable; the relay publishes it later
        log.warning("publishing %d preference changes failed (relay retries): %r", len(changes), e)


async def relay_once(engine, older_than_s: float = RELAY_EVERY_S) -> int:
    """Publish change-feed rows left pending (a crash between commit and publish)."""
    async with engine.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT user_id, version, sync_type, source, changes, sealed FROM preference_sync_log "
            "WHERE sync_status = 'pending' AND created_at < now() - make_interval(secs => $1) ORDER BY id LIMIT 1000",
            older_than_s)
        keys = await pii.data_keys(conn, engine.ring, {r[0] for r in rows if r[5] is not None}) if rows else {}
    prefix = engine.cfg.nats.prefix
    for r in rows:
        doc = prefs_store.open_feed(keys.get(r[0]), r[0], r[5], r[4])
        if not doc:  # the user was erased meanwhile (their key is gone): nothing left to tell
            continue
        body = msgspec.json.encode({"user_id": r[0], "version": r[1], "type": r[2], "source": r[3], **doc})
        await engine.nc.publish(changed_subject(prefix, r[0]), body)
    if rows:
        await engine.nc.flush(timeout=5)
        async with engine.pool.acquire() as conn:
            await prefs_store.mark_published(conn, [(r[0], r[1]) for r in rows])
    return len(rows)


async def ensure_stream(js, cfg) -> None:
    config = StreamConfig(name=streams.prefs_stream(cfg), subjects=[f"{cfg.prefix}.prefs.set.>"],
                          retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                          duplicate_window=cfg.duplicate_window_s, max_age=cfg.max_age_s,
                          num_replicas=cfg.replicas)
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
    else:
        await js.update_stream(config)  # a changed nats.replicas
    await js.add_consumer(config.name, ConsumerConfig(durable_name=f"{cfg.consumer}-prefs",
                                                      ack_policy=AckPolicy.EXPLICIT, ack_wait=cfg.ack_wait_s))


class Listener:
    """Pulls preference changes from JetStream and applies them (see the module doc)."""

    def __init__(self, engine):
        self.engine = engine
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        cfg = self.engine.cfg.nats
        await ensure_stream(self.engine.js, cfg)
        self.sub = await self.engine.js.pull_subscribe_bind(f"{cfg.consumer}-prefs", streams.prefs_stream(cfg))
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
            try:
                await self.sub.unsubscribe()  # else the connection's drain waits on it
            except Exception as e:  # noqa: BLE001 - stopping anyway
                log.debug("prefs unsubscribe: %r", e)

    async def _loop(self) -> None:
        idle = 0.0
        while True:
            try:
                msgs = await self.sub.fetch(FETCH, timeout=1)
            except (TimeoutError, nats.errors.TimeoutError):
                idle += 1
                if idle >= RELAY_EVERY_S:
                    idle = 0
                    await self._relay()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - reconnects are NATS's; keep pulling
                log.warning("prefs fetch failed: %r", e)
                await asyncio.sleep(1)
                continue
            try:
                await self.handle(msgs)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - unacked messages come back after ack_wait
                log.warning("applying %d preference messages failed: %r", len(msgs), e)

    async def _relay(self) -> None:
        try:
            await relay_once(self.engine)
        except Exception as e:  # noqa: BLE001
            log.warning("prefs relay failed: %r", e)

    async def handle(self, msgs) -> None:
        engine = self.engine
        prefix = f"{engine.cfg.nats.prefix}.prefs.set."
        commands, sources = [], []
        limit = engine.cfg.nats.dead_letter_after
        for m in msgs:
            if m.metadata.num_delivered > limit:
                await self._dead(m, f"processing.failed: not applied after {limit} deliveries")
                continue
            try:
                user_id = msgspec.convert(token_user(m.subject[len(prefix):]), UserId)
                body = _set.decode(m.data)
                if (body.put is None) == (body.patch is None):
                    raise ValueError("give exactly one of put and patch")
            except (msgspec.ValidationError, msgspec.DecodeError, ValueError, UnicodeDecodeError) as e:  # binascii.Error is a ValueError
                await self._dead(m, f"invalid: {e}")
                continue
            commands.append(PrefCommand(user_id=user_id, put=body.put, patch=body.patch, if_match=body.if_match,
                                        source="nats", actor=nats_actor(m.headers),
                                        source_id=f"{m.metadata.stream}:{m.metadata.sequence.stream}"))
            sources.append(m)
        if not commands:
            return
        results = await run_commands(engine, commands)
        for r, m in zip(results_in_order(results, commands), sources, strict=True):
            if r.status == "ok":
                await m.ack()
            elif r.status == "conflict":
                await self._dead(m, f"conflict: preferences are at version {r.version}")
            else:
                await self._dead(m, "invalid: " + "; ".join(f"{f}: {why}" for f, why in r.errors))

    async def _dead(self, m, reason: str) -> None:
        headers = {"Tidings-Reason": " ".join(reason.split())[:400], "Tidings-Subject": m.subject}
        await self.engine.js.publish(streams.dlq_subject(self.engine.cfg.nats), m.data, headers=headers)
        await m.ack()


def results_in_order(results: list[PrefResult], commands: list[PrefCommand]) -> list[PrefResult]:
    """run_commands answers grouped by shard; put the answers back in command order.
    Commands for one user keep their relative order within a shard."""
    queues: dict[str, list[PrefResult]] = {}
    for r in results:
        queues.setdefault(r.user_id, []).append(r)
    return [queues[c.user_id].pop(0) for c in commands]

