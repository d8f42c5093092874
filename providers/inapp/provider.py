"""In-app delivery: the message goes into the user's inbox in PostgreSQL
(``inbox_messages``), then an event is published on NATS
``<prefix>.inbox.<user token>`` so whichever HTTP process holds the user's
WebSocket forwards it (``engine.http.inbox``). The task address is ignored.

Ordering: each write takes a transaction-level advisory lock per recipient
(``pg_advisory_xact_lock(LOCK_SPACE, hashtext(user_id))``, in key order) before
its rows get their ``seq`` and holds it until commit. So one user's rows commit
in ``seq`` order, whichever process or connection writes them, and a reader
that asks for "this user's rows after N" never later meets a row below what
it already read. Every writer of ``inbox_messages`` must go through here.

Idempotency: ``notification_id`` is unique; a redelivered send inserts nothing,
finds the stored row and publishes it again (readers skip a seq they sent).

Settings:

- ``database_url`` (required): PostgreSQL; ``schema`` ("public") is put on the
  connections' ``search_path``; ``pool_size`` (4) connections at most.
- ``nats_url`` (required): NATS (core publish, no JetStream); ``prefix``
  ("tidings", the engine's ``nats.prefix``).
- ``connect_timeout_s`` (5): connecting to either; the whole call is bounded by
  the ChannelShard, as for the other providers.
- ``statement_timeout_s`` (30), ``lock_timeout_s`` (5),
  ``idle_in_transaction_timeout_s`` (60): the connections' bounds (0: none); the
  engine fills in its ``[database]`` ones.
- ``max_batch`` (100, at most 1000): tasks per ``send_batch``; a batch takes
  one advisory lock per distinct user, and PostgreSQL's shared lock table is
  sized ``max_locks_per_transaction`` (64) per connection.

Stored: ``title`` = subject, ``body`` = text (html when there is no text),
``data`` = content data, ``category``, ``priority``.

Errors: PostgreSQL or NATS unreachable or dropping the connection:
NetworkError; other transient PostgreSQL errors (deadlock, out of resources):
ProviderError; a value PostgreSQL refuses (NUL in text, ``\\u0000`` in JSON):
InvalidMessage; bad credentials: AuthenticationError; a missing table (the
migrations were not applied): ConfigurationError. A failure to publish after
the commit is a NetworkError too: the retry finds the row and publishes again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Sequence

import asyncpg
import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from policy.types import DeliveryTask
from providers.base import BatchProvider, Receipt
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    InvalidMessage,
    NetworkError,
    ProviderError,
)
from providers.inapp.messages import Event, from_row, inbox_subject

log = logging.getLogger(__name__)

MAX_BATCH = 1000
LOCK_SPACE = 0x696E6278  # "inbx": the first key of the per-user advisory locks
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]*\Z")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")
_encoder = msgspec.json.Encoder()

# Locks in key order, so two batches for overlapping users cannot deadlock.
LOCK_SQL = """
SELECT pg_advisory_xact_lock($1, k)
FROM (SELECT DISTINCT hashtext(u) AS k FROM unnest($2::text[]) AS u ORDER BY 1) AS keys
"""

INSERT_SQL = """
INSERT INTO inbox_messages (user_id, notification_id, category, title, body, data, priority)
SELECT u, n, c, t, b, d::jsonb, p
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
     AS r(u, n, c, t, b, d, p)
ON CONFLICT (notification_id) DO NOTHING
"""

# The rows of the batch (new or stored before), each with the user's previous seq.
ROWS_SQL = """
SELECT m.user_id, m.seq, m.notification_id, m.category, m.title, m.body, m.data::text AS data, m.priority,
       m.created_at, m.seen_at, m.read_at,
       (SELECT max(p.seq) FROM inbox_messages p WHERE p.user_id = m.user_id AND p.seq < m.seq) AS prev
FROM inbox_messages m WHERE m.notification_id = ANY($1::uuid[]) ORDER BY m.seq
"""


def db_error(exc: BaseException, what: str) -> DeliveryError:
    """The delivery error for an asyncpg (or socket) failure; see the module doc."""
    text = f"in-app {what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
                        asyncpg.ProgramLimitExceededError)):
        return InvalidMessage(text)
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return AuthenticationError(text)
    if isinstance(exc, (asyncpg.exceptions.SyntaxOrAccessError, asyncpg.InvalidCatalogNameError)):
        return ConfigurationError(text)
    if isinstance(exc, asyncpg.PostgresError) and not isinstance(
            exc, (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError)):
        return ProviderError(text)
    return NetworkError(text)


class InAppProvider(BatchProvider):
    """Provider for ``channel = "in_app"``; see the module docstring.

    ``send`` returns ``Receipt(message_id=str(seq))``; ``send_batch`` writes all
    rows in one transaction (all or none) and returns the seq when the batch
    has one task, else no message id (each row is found by notification id).
    """

    channel = "in_app"
    mixed_content = True  # a batch stores each task's own content: ChannelShards batch any tasks together

    def __init__(self, name: str, settings: dict):
        self.name = name
        self.settings = dict(settings)
        for key in ("database_url", "nats_url"):
            if not settings.get(key) or not isinstance(settings[key], str):
                raise ConfigurationError(f"inapp provider {name!r}: {key!r} is required")
        self.database_url: str = settings["database_url"]
        self.nats_url: str = settings["nats_url"]
        self.schema = str(settings.get("schema", "public"))
        if not _SCHEMA.match(self.schema):
            raise ConfigurationError(f"inapp provider {name!r}: bad schema {self.schema!r}")
        self.prefix = str(settings.get("prefix", "tidings"))
        if not _PREFIX.match(self.prefix):
            raise ConfigurationError(f"inapp provider {name!r}: bad prefix {self.prefix!r}")
        self.pool_size = int(settings.get("pool_size", 4))
        self.connect_timeout_s = float(settings.get("connect_timeout_s", 5))
        self.max_batch = min(int(settings.get("max_batch", 100)), MAX_BATCH)
        self.bounds = {name: str(round(float(settings.get(key, default)) * 1000)) for name, key, default in (
            ("statement_timeout", "statement_timeout_s", 30), ("lock_timeout", "lock_timeout_s", 5),
            ("idle_in_transaction_session_timeout", "idle_in_transaction_timeout_s", 60))}
        if self.pool_size < 1 or self.max_batch < 1 or self.connect_timeout_s <= 0 or \
                min(int(v) for v in self.bounds.values()) < 0:
            raise ConfigurationError(f"inapp provider {name!r}: pool_size and max_batch must be >= 1, "
                                     "connect_timeout_s > 0, the other timeouts >= 0")
        self._pool: asyncpg.Pool | None = None
        self._nc: NATS | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect to PostgreSQL and NATS. A failure is logged, not raised: the
        next ``send`` connects again and raises the delivery error."""
        try:
            await self._ready()
        except DeliveryError as exc:
            log.warning("%s; connecting again on the next send", exc)

    async def close(self) -> None:
        """Flush what is published and release both connections."""
        async with self._lock:
            nc, self._nc = self._nc, None
            pool, self._pool = self._pool, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain()  # bounded by drain_timeout
            except Exception as exc:  # noqa: BLE001 - closing anyway
                log.debug("inapp %s: NATS drain: %r", self.name, exc)
                try:
                    await nc.close()
                except Exception as close_exc:  # noqa: BLE001
                    log.debug("inapp %s: NATS close: %r", self.name, close_exc)
        if pool is not None:
            await pool.close()

    async def send(self, task: DeliveryTask) -> Receipt:
        """Store ``task`` in its user's inbox and publish it; see the module doc."""
        return await self.send_batch([task])

    async def send_batch(self, tasks: Sequence[DeliveryTask]) -> Receipt:
        """Store every task (one transaction, one multi-row INSERT), then publish
        one event per message. InvalidMessage for an empty batch or one over
        ``max_batch``; any refused value refuses the whole batch."""
        if not tasks:
            raise InvalidMessage("inapp batch is empty")
        if len(tasks) > self.max_batch:
            raise InvalidMessage(f"inapp batch of {len(tasks)} exceeds max_batch {self.max_batch}")
        columns = self.columns(tasks)
        pool, nc = await self._ready()
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(LOCK_SQL, LOCK_SPACE, columns[0])
                await conn.execute(INSERT_SQL, *columns)
                rows = await conn.fetch(ROWS_SQL, columns[1])
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise db_error(exc, "insert") from exc
        await self._publish(nc, rows)
        if len(tasks) == 1 and rows:
            return Receipt(message_id=str(rows[0]["seq"]))
        return Receipt()

    @staticmethod
    def columns(tasks: Sequence[DeliveryTask]) -> tuple[list, ...]:
        """The INSERT's column arrays; InvalidMessage for a task that cannot be
        stored (no content at all, a notification id that is not a UUID, data
        that is not JSON)."""
        users, ids, categories, titles, bodies, datas, priorities = [], [], [], [], [], [], []
        for i, t in enumerate(tasks):
            c = t.content
            body = c.text if c.text is not None else c.html
            if not c.subject and not body and not c.data:
                raise InvalidMessage(f"inapp task {i}: needs a subject, text, html or data")
            try:
                ids.append(uuid.UUID(t.notification_id))
            except (ValueError, TypeError, AttributeError) as exc:
                raise InvalidMessage(f"inapp task {i}: notification id {t.notification_id!r} is not a UUID") from exc
            try:
                datas.append(_encoder.encode(c.data).decode())
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidMessage(f"inapp task {i}: data is not JSON-encodable: {exc}") from exc
            users.append(t.user_id)
            categories.append(t.category)
            titles.append(c.subject)
            bodies.append(body)
            priorities.append(t.priority)
        return users, ids, categories, titles, bodies, datas, priorities

    async def _publish(self, nc: NATS, rows) -> None:
        """One event per stored row; a message too big for NATS goes as a
        wake-up without the message (readers then read it from PostgreSQL)."""
        try:
            for r in rows:
                message = msgspec.Raw(_encoder.encode(from_row(r)))
                payload = _encoder.encode(Event(user_id=r["user_id"], seq=r["seq"], prev=r["prev"], message=message))
                if len(payload) > nc.max_payload:
                    payload = _encoder.encode(Event(user_id=r["user_id"], seq=r["seq"], prev=r["prev"]))
                await nc.publish(inbox_subject(self.prefix, r["user_id"]), payload)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise NetworkError(f"inapp publish to {self.nats_url}: {type(exc).__name__}: {exc}") from exc

    async def _ready(self) -> tuple[asyncpg.Pool, NATS]:
        pool, nc = self._pool, self._nc
        if pool is not None and nc is not None and not nc.is_closed:
            return pool, nc
        async with self._lock:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self.database_url, min_size=1, max_size=self.pool_size, timeout=self.connect_timeout_s,
                        server_settings={"search_path": self.schema, "application_name": f"tidings-inapp-{self.name}",
                                         **self.bounds})
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                    raise db_error(exc, "connect to PostgreSQL") from exc
            if self._nc is None or self._nc.is_closed:
                self._nc = await self._connect_nats()
            return self._pool, self._nc

    async def _connect_nats(self) -> NATS:
        nc = NATS()

        async def on_error(exc: Exception) -> None:
            log.warning("inapp %s: NATS: %s: %s", self.name, type(exc).__name__, exc)

        try:
            # Reconnect for ever once connected; the first connect is bounded here
            # (nats-py's own first connect never gives up with attempts = -1).
            await asyncio.wait_for(nc.connect(self.nats_url, name=f"tidings-inapp-{self.name}",
                                              max_reconnect_attempts=-1, connect_timeout=self.connect_timeout_s,
                                              drain_timeout=max(self.connect_timeout_s, 1.0), error_cb=on_error),
                                   self.connect_timeout_s)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            try:
                await nc.close()
            except Exception as close_exc:  # noqa: BLE001 - it never connected
                log.debug("inapp %s: closing the unconnected NATS client: %r", self.name, close_exc)
            raise NetworkError(f"inapp: cannot connect to NATS at {self.nats_url}: {type(exc).__name__}: {exc}") \
                from exc
        return nc


__all__ = ["LOCK_SPACE", "MAX_BATCH", "InAppProvider", "db_error"]
