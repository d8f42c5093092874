"""JetStream layout: subjects, the work stream, the dead-letter stream and the
engine's durable pull consumer."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence

import msgspec
import nats
from nats.js import JetStreamContext, api
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError, NotFoundError

from infra.config import NatsConfig
from policy.types import URGENT


def notify_subject(cfg: NatsConfig, category: str) -> str:
    return f"{cfg.prefix}.notify.{category}"


def notify_wildcard(cfg: NatsConfig) -> str:
    return f"{cfg.prefix}.notify.>"


def priority_subject(cfg: NatsConfig, category: str) -> str:
    """The priority lane: high and critical notifications, consumed by their own
    Ingestor, so they never queue behind a bulk backlog in the stream."""
    return f"{cfg.prefix}.priority.{category}"


def priority_wildcard(cfg: NatsConfig) -> str:
    return f"{cfg.prefix}.priority.>"


def priority_busy_subject(cfg: NatsConfig) -> str:
    """Core NATS, in no stream: the priority lane's Ingestor says here that it has
    work, and the bulk lanes' Ingestors yield (``engine.priority_yield_s``)."""
    return f"{cfg.prefix}.lanes.priority_busy"


def subject_for(cfg: NatsConfig, category: str, priority: str) -> str:
    return priority_subject(cfg, category) if priority in URGENT else notify_subject(cfg, category)


def broadcast_subject(cfg: NatsConfig, category: str) -> str:
    return f"{cfg.prefix}.broadcast.{category}"


def broadcast_wildcard(cfg: NatsConfig) -> str:
    return f"{cfg.prefix}.broadcast.>"


def is_broadcast(cfg: NatsConfig, subject: str) -> bool:
    return subject.startswith(f"{cfg.prefix}.broadcast.")


def category_of(cfg: NatsConfig, subject: str) -> str:
    """The category a notify or broadcast subject carries ("" for another subject)."""
    for kind in ("notify", "priority", "broadcast"):
        head = f"{cfg.prefix}.{kind}."
        if subject.startswith(head):
            return subject[len(head):]
    return ""


def dlq_subject(cfg: NatsConfig) -> str:
    return f"{cfg.prefix}.dlq"


def dlq_stream(cfg: NatsConfig) -> str:
    return f"{cfg.stream}_DLQ"


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
    else:
        await js.update_stream(config)


# JetStream's error codes for a publish a full stream refused (discard "new")
STREAM_FULL_CODES = frozenset({10077, 10047})  # "maximum messages/bytes exceeded"; server out of storage


def jetstream(nc: nats.NATS) -> JetStreamContext:
    """``nc.jetstream()``, whose ``publish_async`` futures fail with JetStream's
    error (a full stream, say) instead of never finishing: nats-py 2.16 raises
    the error inside its reply callback instead of setting it on the future
    (nats-io/nats.py#985, fix pending in #994), so a refused publish would look
    like a timeout. The reply callback is bound when the first ``publish_async``
    subscribes, so wrapping it on this context is enough."""
    js = nc.jetstream()
    original = getattr(js, "_handle_async_reply", None)
    if original is None or not hasattr(js, "_publish_async_futures"):
        return js  # another nats-py: nothing to work around here

    async def handle_async_reply(msg) -> None:
        try:
            await original(msg)
        except APIError as e:
            token = msg.subject[len(nc._inbox_prefix) + 22 + 2:]  # as nats-py cuts it
            future = js._publish_async_futures.get(token)
            if future is not None and not future.done():
                future.set_exception(e)

    js._handle_async_reply = handle_async_reply
    return js


class _Ack(msgspec.Struct):
    """What the Publisher reads of JetStream's answer to a publish: whether it
    was a duplicate, or its ``error``."""

    duplicate: bool = False
    error: dict | None = None


_ACK = msgspec.json.Decoder(_Ack)


class _Batch:
    def __init__(self, n: int):
        self.duplicate: list[bool | None] = [None] * n  # None: not answered yet
        self.left = n
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()


class Publisher:
    """Publishes to JetStream a batch at a time and waits for every ack, over
    one reply subscription per connection and one future per batch. nats-py's
    ``publish_async`` makes a future, a token and a done-callback per message
    and builds a ``PubAck`` of each answer: 37–40 µs of CPU per message on this
    machine against 19–20 here (``python -m bench.ceilings``, bench/RESULTS.md
    "A leaner publish"), and the status events' relay publishes one message per
    recipient of a broadcast.

    Replies come to ``<inbox>.<batch>.<index>``; an answer for a batch no one
    waits for (timed out, cancelled) is dropped. A message a reconnect lost is
    never answered: the batch times out and its caller publishes it again
    (the ``Nats-Msg-Id`` header stores it once)."""

    def __init__(self, nc: nats.NATS):
        self._nc = nc
        self._inbox = ""
        self._batches: dict[str, _Batch] = {}
        self._subscribing = asyncio.Lock()

    async def publish(self, messages: Sequence[tuple[str, bytes, dict[str, str] | None]],
                      timeout_s: float) -> list[bool]:
        """Publish each (subject, payload, headers) and return once JetStream has
        stored every one: for each, whether it was a duplicate (a ``Nats-Msg-Id``
        already in the stream's window). Raises the first refusal
        (``nats.js.errors.APIError``: a full stream, say; ``NoStreamResponseError``
        when no stream takes the subject), or TimeoutError."""
        if not messages:
            return []
        if not self._inbox:
            await self._subscribe()
        token = secrets.token_hex(8)
        batch = self._batches[token] = _Batch(len(messages))
        try:
            reply = f"{self._inbox}.{token}."
            publish = self._nc.publish
            for i, (subject, payload, headers) in enumerate(messages):
                await publish(subject, payload, reply=reply + str(i), headers=headers)
            try:
                async with asyncio.timeout(timeout_s):
                    await batch.done
            except TimeoutError:
                raise TimeoutError(f"{batch.left} of {len(messages)} publishes not acknowledged in "
                                   f"{timeout_s:.0f} s") from None
        finally:
            del self._batches[token]
            if batch.done.done() and not batch.done.cancelled():
                batch.done.exception()  # read: a refusal met while still publishing is not "never retrieved"
        return [bool(d) for d in batch.duplicate]

    async def _subscribe(self) -> None:
        async with self._subscribing:
            if not self._inbox:
                inbox = self._nc.new_inbox()
                # 0, 0: no limit; as many answers may wait as messages are in flight, never dropped as a slow consumer
                await self._nc.subscribe(f"{inbox}.*.*", cb=self._answer, pending_msgs_limit=0,
                                         pending_bytes_limit=0)
                self._inbox = inbox

    async def _answer(self, msg) -> None:
        token, _, index = msg.subject[len(self._inbox) + 1:].partition(".")
        batch = self._batches.get(token)
        if batch is None or batch.done.done() or not index.isdecimal() or int(index) >= len(batch.duplicate):
            return
        i = int(index)
        if batch.duplicate[i] is not None:
            return
        error: Exception | None = None
        if msg.headers and msg.headers.get(api.Header.STATUS) == NO_RESPONDERS:
            error = NoStreamResponseError()
        else:
            try:
                ack = _ACK.decode(msg.data)
            except msgspec.DecodeError:
                error = APIError(description="unreadable JetStream answer")
            else:
                if ack.error is not None:
                    error = _api_error(ack.error)
        if error is not None:
            batch.done.set_exception(error)
            return
        batch.duplicate[i] = ack.duplicate
        batch.left -= 1
        if batch.left == 0:
            batch.done.set_result(None)


NO_RESPONDERS = "503"


def _api_error(err: dict) -> APIError:
    """JetStream's error answer as nats-py's error of its class (``APIError.from_error`` raises it)."""
    try:
        APIError.from_error(err)
    except APIError as e:
        return e
    except (TypeError, KeyError):  # a field nats-py does not know, or no code
        pass
    return APIError(code=err.get("code"), err_code=err.get("err_code"), description=str(err.get("description", "")))


def is_stream_full(e: BaseException) -> bool:
    """Whether a JetStream publish failed because the stream is at its limits:
    back-pressure, to answer with "retry later", never to drop."""
    if not isinstance(e, APIError):
        return False
    text = (e.description or "").lower()
    return e.err_code in STREAM_FULL_CODES or "maximum messages" in text or "maximum bytes" in text


async def ensure_streams(js: JetStreamContext, cfg: NatsConfig) -> None:
    """Create or update the work stream, the DLQ stream and the durable consumer.
    Both streams are bounded (``max_msgs``, ``max_bytes``) and refuse a publish
    once full (discard "new"): a full stream pushes back on its producers and
    never drops what it already accepted."""
    await _ensure(js, StreamConfig(
        name=cfg.stream, num_replicas=cfg.replicas,
        subjects=[notify_wildcard(cfg), priority_wildcard(cfg), broadcast_wildcard(cfg)],
        # Work queue: a message leaves the stream once the engine acks it, which it
        # does only after the outcome is committed in PostgreSQL.
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=cfg.duplicate_window_s,
        max_age=cfg.max_age_s,
        max_msgs=cfg.max_msgs,
        max_bytes=cfg.max_bytes or -1,  # -1: none (a limit reserves that much of the server's storage)
        discard=DiscardPolicy.NEW,
    ))
    await _ensure(js, StreamConfig(
        name=dlq_stream(cfg), subjects=[dlq_subject(cfg)], storage=StorageType.FILE, num_replicas=cfg.replicas,
        duplicate_window=cfg.duplicate_window_s, max_age=cfg.max_age_s,
        # full: the dead-letter publish fails and the message stays in the work stream
        max_msgs=cfg.dlq_max_msgs, max_bytes=cfg.dlq_max_bytes or -1, discard=DiscardPolicy.NEW,
    ))
    try:
        # The server updates what can change in place (ack_wait, max_ack_pending, …).
        for lane in LANES:
            await js.add_consumer(cfg.stream, consumer_config(cfg, lane))
    except BadRequestError as e:
        # Not deleted here: another engine may be consuming from it right now.
        raise RuntimeError(
            f"JetStream consumer {cfg.consumer!r} on stream {cfg.stream!r} exists with settings that cannot "
            f"change in place ({e.description}). Stop every engine, then remove it (`nats consumer rm "
            f"{cfg.stream} {cfg.consumer}`): acked messages are gone already and unacked ones are delivered "
            f"again to the new consumer.") from e


# One durable consumer per lane, each with one filter subject (a work-queue stream
# needs consumers whose filters do not overlap; one filter each works on
# nats-server 2.9 as well as later ones).
LANES = ("bulk", "broadcast", "priority")
_LANE_FILTER = {"bulk": notify_wildcard, "broadcast": broadcast_wildcard, "priority": priority_wildcard}


def consumer_name(cfg: NatsConfig, lane: str = "bulk") -> str:
    return cfg.consumer if lane == "bulk" else f"{cfg.consumer}-{lane}"


def consumer_config(cfg: NatsConfig, lane: str = "bulk") -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=consumer_name(cfg, lane),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=cfg.ack_wait_s,
        max_ack_pending=cfg.max_ack_pending,
        filter_subject=_LANE_FILTER[lane](cfg),
    )


# -- status events (policy/events.py, actors/event_sender.py) ----------------------

EVENTS_DUPLICATE_WINDOW_S = 600.0  # a row the relay published before a crash and publishes again is stored once


def events_stream(cfg: NatsConfig) -> str:
    return f"{cfg.stream}_EVENTS"


def prefs_stream(cfg: NatsConfig) -> str:
    """The preference writes' stream (engine/prefs_bus.py)."""
    return f"{cfg.stream}_PREFS"


def every_stream(cfg: NatsConfig) -> tuple[str, ...]:
    """Every stream a deployment makes: what a harness deletes after a run."""
    return cfg.stream, dlq_stream(cfg), events_stream(cfg), prefs_stream(cfg)


def events_wildcard(cfg: NatsConfig) -> str:
    return f"{cfg.prefix}.events.>"


async def ensure_events_stream(js: JetStreamContext, cfg: NatsConfig, max_age_s: float, max_msgs: int) -> None:
    """The events stream: a log, not a queue. Any number of consumers read it
    (each webhook subscription has its own); full, it drops its oldest."""
    await _ensure(js, StreamConfig(
        name=events_stream(cfg), subjects=[events_wildcard(cfg)], retention=RetentionPolicy.LIMITS,
        num_replicas=cfg.replicas,
        storage=StorageType.FILE, max_age=max_age_s,
        # NATS refuses a duplicate window longer than the stream keeps messages
        duplicate_window=min(EVENTS_DUPLICATE_WINDOW_S, max_age_s) if max_age_s else EVENTS_DUPLICATE_WINDOW_S,
        max_msgs=max_msgs, discard=DiscardPolicy.OLD,
    ))


def hook_consumer(subscription_id: str) -> str:
    return f"hook-{subscription_id}"
