"""Ingestor: the JetStream durable pull consumer.

It fetches batches, decodes each payload once, sends one call per UserShard per
batch, and acks a message only when its shard answered (the shard answers after
the Recorder committed). A payload that does not decode goes to the dead-letter
subject with its reason and gets a ``rejected`` tracking row, then is acked: bad
input is answered, never retried forever, never a crash. So does one that
decodes but breaks a rule its schema cannot say (``message_errors``: the same
rules the HTTP API answers with 422), as ``payload.invalid``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable

import msgspec
import nats
from nats.aio.msg import Msg

from actors import faults, link, metrics, spans, worker
from actors.handles import resolve
from actors.stalls import StallWatch, Watched
from actors.tracing import TRACED_KEPT, stage_histogram
from infra import dead_letters, streams, telemetry
from infra.config import Config, decode as decode_config
from policy import events, trace, wire
from policy.sharding import shard_of
from policy.text import printable
from policy.types import BroadcastRequest, NotificationRequest, Outcome, derive_id, notification_id
from policy.validate import message_errors

log = logging.getLogger(__name__)

# a fetch of at least 1/BACKLOG_SHARE of ``ingest_batch`` found messages waiting (a backlog):
# the next fetch does not wait for a batch in flight (``engine.coalesce_s``)
BACKLOG_SHARE = 10

DECODERS = {NotificationRequest: msgspec.json.Decoder(NotificationRequest),
            BroadcastRequest: msgspec.json.Decoder(BroadcastRequest)}
NAK_DELAY_S = 2.0  # a failed batch comes back after this, not in a hot loop
WARM_S = 5.0  # the longest a start waits to have called each UserShard once
ACCEPTED_WAIT_S = 10.0  # the longest a batch waits for JetStream to store its accepted events
# the priority lane says it is busy at most this many times per engine.priority_yield_s
BUSY_SAID_PER_YIELD = 4


def header_safe(text: str, limit: int = 400) -> str:
    return text.replace("\r", " ").replace("\n", " ")[:limit]


class _UserOnly(msgspec.Struct):
    user_id: str = ""


_user_only = msgspec.json.Decoder(_UserOnly)


def salvage_user(data: bytes) -> str:
    """The user id of a rejected payload, when it has a readable one (so the
    rejection shows up under the user), else ""."""
    try:
        return printable(_user_only.decode(data).user_id, 127)
    except (msgspec.DecodeError, RecursionError):
        return ""


class Rejected(msgspec.Struct):
    msg: Msg
    reason: str
    detail: str


class Ingestor(Watched):
    def __init__(self, cfg: bytes, nats_url: str, user_shards: list, recorder, index: int = 0,
                 lanes: tuple[str, ...] = ("bulk", "broadcast"), niceness: int = 0):
        self.cfg: Config = decode_config(cfg)
        telemetry.setup_actor(telemetry.observe(self.cfg), "ingestor")
        self.url, self.index, self.lanes = nats_url, index, lanes
        worker.yield_cpu(niceness)  # a bulk Ingestor's (ray.bulk_niceness); the priority lane's is 0
        # names from engine/runtime.py; each batch to a UserShard goes over a link (actors/link.py)
        self.user_shards = link.linked(resolve(user_shards), self.cfg.engine.actor_links)
        self.recorder = resolve(recorder)
        self.nc = self.js = None
        self.publisher: streams.Publisher | None = None  # the accepted events
        self.running = False
        self.loop_tasks: list[asyncio.Task] = []
        self.inflight: set[asyncio.Task] = set()
        self.broadcasts: set[asyncio.Task] = set()
        self.stats = {"fetched": 0, "acked": 0, "rejected": 0, "nacked": 0, "batches": 0, "broadcasts": 0,
                      "dead_lettered": 0, "retried": 0, "yielded": 0, "priority_busy_heard": 0}
        self.stopping = asyncio.Event()
        self.starting = asyncio.Lock()
        self.acks_traced: deque[float] = deque(maxlen=TRACED_KEPT)
        self._stage_metric = None
        self.watch = StallWatch(self.cfg.engine.gc_young)
        self.meter = metrics.Meter()
        self.subs: dict[str, object] = {}  # lane -> its pull subscription
        # the bulk lane yields until then (engine.priority_yield_s); the priority lane last said so then
        self.yield_until, self.busy_said = 0.0, float("-inf")
        # the consumers' lag is read by one Ingestor per lane (each lane's first), not by all
        self.ticker = metrics.Ticker(self._sample) if index == 0 else None

    async def start(self) -> None:
        # one start at a time: the engine's supervisor calls start every few seconds, and a
        # start waits up to WARM_S for the UserShards; a second one meanwhile would open a
        # second connection and a second set of fetch loops
        async with self.starting:
            if not self.running:
                await self._start()

    async def _start(self) -> None:
        n = self.cfg.nats
        self.nc = await nats.connect(self.url, name=f"tidings-ingestor-{'-'.join(self.lanes)}-{self.index}",
                                     max_reconnect_attempts=-1)
        self.js = streams.jetstream(self.nc)
        self.publisher = streams.Publisher(self.nc)
        await self._warm()
        self.subs = {lane: await self.js.pull_subscribe_bind(streams.consumer_name(n, lane), n.stream)
                     for lane in self.lanes}
        if "bulk" in self.lanes and self.cfg.engine.priority_yield_s > 0:
            await self.nc.subscribe(streams.priority_busy_subject(n), cb=self._priority_busy)
        self.running = True
        self.stopping.clear()
        self.slots = asyncio.Semaphore(self.cfg.engine.inflight_batches)  # shared by this actor's lanes
        loop = asyncio.get_running_loop()
        self.loop_tasks = [loop.create_task(self._fetch_loop(lane, sub)) for lane, sub in self.subs.items()]
        if self.ticker is not None:
            self.ticker.start()
        self.watch.start()  # set up: what it holds now is frozen (actors/stalls.py)

    async def _warm(self) -> None:
        """Call each UserShard once, so Ray has connected this Ingestor to it before
        a message waits for that. Bounded: a shard being restarted must not hold a
        (restarted) Ingestor's start; what did not answer is connected on first use."""
        calls = [asyncio.ensure_future(self._warm_one(s)) for s in self.user_shards]
        done, pending = await asyncio.wait(calls, timeout=WARM_S)
        for call in pending:
            call.cancel()
        for call in done:
            if call.exception() is not None:
                log.warning("warm-up call to a UserShard failed: %r", call.exception())

    @staticmethod
    async def _warm_one(shard) -> None:
        await shard.info.remote()
        if isinstance(shard, link.Link):
            await shard.connect()

    async def _fetch_loop(self, lane: str, sub) -> None:
        e = self.cfg.engine
        # only the bulk lane waits for company: the priority lane's notifications are few
        # and urgent, and a broadcast lane's fetch is a rare big job, not a stream
        coalesce_s = e.coalesce_s if lane == "bulk" else 0.0
        full = True  # the last fetch came from a backlog: every free slot may fetch at once
        while self.running:
            waited = self.slots.locked()  # no slot free: the one we get comes from a batch that just ended
            await self.slots.acquire()
            if not full and not waited and self.inflight and coalesce_s > 0:
                # Under a steady stream a free slot would fetch each message alone, and
                # every batch pays each hop's fixed cost: at 650/s that doubled the CPU
                # per message. Waiting for a batch in flight lets what comes meanwhile
                # go together; an idle engine (nothing in flight) fetches at once.
                await asyncio.wait(set(self.inflight), timeout=coalesce_s, return_when=asyncio.FIRST_COMPLETED)
            if lane == "bulk" and self._yielding():
                await self._make_room()
            small = lane == "bulk" and self._yielding()  # again: the yield may have ended while room was made
            batch = min(e.ingest_batch, e.priority_yield_batch) if small else e.ingest_batch
            try:
                msgs = await sub.fetch(batch, timeout=max(e.fetch_timeout_s, 0.001))
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []  # nothing came: as an empty answer
            except Exception:
                self.slots.release()
                if self.running:
                    log.exception("fetch failed; retrying")
                    await asyncio.sleep(0.5)
                continue
            full = len(msgs) * BACKLOG_SHARE >= batch
            if not msgs:  # none came in time, or a pull ended on a status (nats-py answers [])
                self.slots.release()
                continue
            self.stats["fetched"] += len(msgs)
            if small:  # counted when it took something: an idle bulk lane's empty fetches are not yields
                self.stats["yielded"] += 1
                self.meter.inc("tidings_bulk_yields_total", 1)
            task = asyncio.get_running_loop().create_task(self._process(msgs))
            self.inflight.add(task)
            task.add_done_callback(self._done)
            if lane == "priority":  # after the batch is under way: it neither waits for this nor is lost to a stop
                await self._say_busy()

    # -- the bulk lane yields to the priority lane (docs/design.md) --------------------

    async def _say_busy(self) -> None:
        """Tell the bulk lanes that the priority lane has work: one core NATS message,
        no reply, at most ``BUSY_SAID_PER_YIELD`` times per ``priority_yield_s``."""
        hold = self.cfg.engine.priority_yield_s
        now = time.monotonic()
        if hold <= 0 or now - self.busy_said < hold / BUSY_SAID_PER_YIELD:
            return
        self.busy_said = now
        try:
            await self.nc.publish(streams.priority_busy_subject(self.cfg.nats), b"")
        except Exception as e:  # noqa: BLE001 - only a hint: the bulk lane does not yield this time
            log.warning("could not tell the bulk lanes to yield: %r", e)

    async def _priority_busy(self, _msg: Msg) -> None:
        self.stats["priority_busy_heard"] += 1
        self.yield_until = time.monotonic() + self.cfg.engine.priority_yield_s

    def _yielding(self) -> bool:
        return time.monotonic() < self.yield_until

    async def _make_room(self) -> None:
        """Wait until fewer than ``priority_yield_inflight`` batches are in flight, or
        the priority lane has been quiet for ``priority_yield_s``: what a bulk batch
        takes of the CPU in each actor and PostgreSQL, a critical one waits for."""
        most = self.cfg.engine.priority_yield_inflight
        while self.running:
            running = {t for t in self.inflight if not t.done()}
            left = self.yield_until - time.monotonic()
            if len(running) < most or left <= 0:
                return
            await asyncio.wait(running, timeout=left, return_when=asyncio.FIRST_COMPLETED)

    def _done(self, task: asyncio.Task) -> None:
        self.inflight.discard(task)
        self.slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("batch failed: %r", task.exception())

    async def _process(self, msgs: list[Msg]) -> None:
        self.stats["batches"] += 1
        fetched = time.time()
        groups: dict[int, list[tuple[Msg, wire.Inbound]]] = defaultdict(list)
        rejected: list[Rejected] = []
        n = len(self.user_shards)
        rate = self.cfg.engine.trace_sample
        traced = telemetry.tracer() is not None
        started: dict[str, spans.Span] = {}
        for msg in msgs:
            if streams.is_broadcast(self.cfg.nats, msg.subject):
                self._start_broadcast(msg, rejected)
                continue
            inb = self._decode(msg, rejected)
            if inb is not None:
                if trace.sampled(inb.id, rate):
                    inb.stages = {"fetched": fetched}
                if traced:
                    self._span(msg, inb, fetched, started)
                groups[shard_of(inb.request.user_id, n)].append((msg, inb))
        calls = [self._to_shard(shard, pairs, started) for shard, pairs in groups.items()]
        if rejected:
            calls.append(self._reject(rejected))
        await asyncio.gather(*calls)

    def _span(self, msg: Msg, inb: wire.Inbound, fetched: float, started: dict[str, spans.Span]) -> None:
        """Start this notification's span here when it is traced: its message's
        ``traceparent`` header says sampled (HTTP put it there), or, with no
        header (a producer on NATS), ``policy.trace`` chooses its id. Its
        children in the other actors hang under it (``Inbound.traceparent``)."""
        if inb.id in started:  # the same id twice in one fetch (a producer without Nats-Msg-Id): one span
            inb.traceparent = spans.parent_of(started[inb.id])
            return
        header = msg.headers.get("traceparent") if msg.headers else None
        attrs = {"tidings.notification_id": inb.id, "messaging.destination.name": msg.subject}
        span = spans.start("ingest", header, at=fetched, attributes=attrs, kind=spans.SpanKind.CONSUMER) \
            if header is not None else spans.root("ingest", inb.id, at=fetched, attributes=attrs)
        if span is not None:
            inb.traceparent = spans.parent_of(span)
            started[inb.id] = span

    def _decode(self, msg: Msg, rejected: list[Rejected], kind: type = NotificationRequest):
        """(id, request) for a payload that decodes, else None (and it is rejected).
        Whatever one payload raises rejects that payload, never its whole batch
        (which would otherwise come back, and fail, again and again)."""
        try:
            return self._inbound(msg, rejected, kind)
        except Exception as e:  # a payload we did not foresee: logged, to be understood next time
            log.exception("a payload on %s not understood", msg.subject)
            rejected.append(Rejected(msg, "payload.malformed", f"not understood: {e!r}"))
            return None

    def _inbound(self, msg: Msg, rejected: list[Rejected], kind: type):
        try:
            req = DECODERS[kind].decode(msg.data)
        except msgspec.ValidationError as e:
            rejected.append(Rejected(msg, "payload.invalid", str(e)))
            return None
        except msgspec.DecodeError as e:
            rejected.append(Rejected(msg, "payload.malformed", str(e)))
            return None
        except RecursionError:  # msgspec's depth limit, inside a free-form (Any) field
            rejected.append(Rejected(msg, "payload.malformed", "nested too deeply"))
            return None
        errors = message_errors(req)
        if errors:  # worded as msgspec words a schema error
            rejected.append(Rejected(msg, "payload.invalid", "; ".join(f"{why} - at `{at}`" for at, why in errors)))
            return None
        meta = msg.metadata
        stored = meta.timestamp.timestamp() if meta.timestamp else time.time()
        # a producer's accepted_at, but never after JetStream stored the message: a
        # future one would lengthen the notification's life (ttl_s) at every release
        req.accepted_at = stored if req.accepted_at is None else min(req.accepted_at, stored)
        seq = dead_letters.origin_seq(msg.headers, meta.sequence.stream)  # a replay keeps its first id
        return wire.Inbound(notification_id(req, f"{self.cfg.nats.stream}:{seq}"), req)

    def _start_broadcast(self, msg: Msg, rejected: list[Rejected]) -> None:
        """A broadcast runs on its own (it may take a minute), outside the batch."""
        inb = self._decode(msg, rejected, BroadcastRequest)
        if inb is None:
            return
        task = asyncio.get_running_loop().create_task(self._broadcast(msg, wire.Broadcast(inb.id, inb.request)))
        self.broadcasts.add(task)
        task.add_done_callback(self.broadcasts.discard)

    async def _broadcast(self, msg: Msg, job: wire.Broadcast) -> None:
        """Every UserShard takes its share of the audience; acked when all have
        recorded every recipient."""
        payload = wire.encode(job)
        if await self._acked([msg], lambda: asyncio.gather(*(s.broadcast.remote(payload) for s in self.user_shards)),
                             f"broadcast {job.id}"):
            self.stats["broadcasts"] += 1

    async def _to_shard(self, shard: int, pairs: list[tuple[Msg, wire.Inbound]],
                        started: dict[str, spans.Span] | None = None) -> None:
        inbound = [inb for _, inb in pairs]
        traced = [s for inb in inbound if started and (s := started.pop(inb.id, None)) is not None]
        error: BaseException | str | None = "nak"
        try:
            if await self._to_shard_acked(shard, pairs, inbound):
                error = None
        except BaseException as e:
            error = e
            raise
        finally:
            for span in traced:  # after the ack (or the nak): the whole of this notification's way
                spans.end(span, error=error)

    async def _to_shard_acked(self, shard: int, pairs: list[tuple[Msg, wire.Inbound]],
                              inbound: list[wire.Inbound]) -> bool:
        answers: list[dict] = []
        tried: list[int] = []

        async def call() -> None:
            if tried:  # a retry: its stamps would measure the failure and the backoff
                for inb in inbound:
                    inb.stages = None
            else:
                await self._accepted(inbound)  # before any outcome: a product sees accepted first
            tried.append(1)
            # encoded inside the call: a batch that cannot be encoded is nak'd (in the end
            # dead-lettered), not left to come back after ack_wait without end
            answers.append(await link.call(self.user_shards[shard], "handle", wire.encode(inbound)))

        if await self._acked([m for m, _ in pairs], call, f"shard {shard} batch of {len(pairs)}"):
            committed = answers[-1].get("committed_at") if answers and isinstance(answers[-1], dict) else None
            if committed and any(inb.stages for inb in inbound):  # the last segment: committed to acked
                self._traced(max(0.0, time.time() - committed))
            return True
        return False

    async def _accepted(self, inbound: list[wire.Inbound]) -> None:
        """Publish ``accepted`` for each request (``events.accepted``), with an id
        derived from the notification's: a redelivered one is stored once
        (the events stream's duplicate window). If the publish fails the batch
        fails and comes back, so none is handled without its event."""
        if not (self.cfg.events.enabled and self.cfg.events.accepted):
            return
        prefix = self.cfg.nats.prefix
        messages = []
        for inb in inbound:
            req = inb.request
            ev = events.event(id=derive_id(f"accepted:{inb.id}"), notification_id=inb.id, user_id=req.user_id,
                              channel=events.ANY_CHANNEL, category=req.category, status="accepted",
                              at=req.accepted_at or time.time())
            messages.append((events.subject(prefix, ev), events.ENCODER.encode(ev), {"Nats-Msg-Id": ev.id}))
        await self.publisher.publish(messages, ACCEPTED_WAIT_S)

    def _traced(self, seconds: float) -> None:
        try:
            self.acks_traced.append(seconds)
            if self._stage_metric is None:
                self._stage_metric = stage_histogram()
            self._stage_metric.observe(seconds, tags={"stage": "ack"})
        except Exception:  # a measurement must never fail a batch
            log.exception("stage tracing failed")

    async def stage_samples(self) -> list[float]:
        """Seconds from commit to ack of the traced batches (``policy.trace``), latest last."""
        return list(self.acks_traced)

    async def _acked(self, msgs: list[Msg], call: Callable[[], Awaitable], what: str) -> bool:
        """Await ``call()`` (which returns once the outcomes are committed), telling
        JetStream meanwhile that ``msgs`` are in progress; then ack them, or on
        failure nak or dead-letter them. Says whether it succeeded.

        An infrastructure failure is not the messages' fault: the call is made
        again after a backoff, and the messages are neither nak'd nor counted
        toward dead-lettering: an outage for as long as the engine runs,
        contention ``faults.CONTENTION_TRIES`` times (``actors/faults.py``).
        Calling again is safe: the UserShard skips what is recorded and only
        records what it sent but could not record."""
        alive = asyncio.get_running_loop().create_task(self._keep_alive(msgs))
        delay, contended = faults.FIRST_S, 0
        try:
            while True:
                try:
                    await call()
                    break
                except Exception as e:  # noqa: BLE001 - whatever failed, the batch is retried or nak'd
                    kind = faults.kind(e)
                    contended += kind == "contention"
                    if kind is None or not self.running or contended > faults.CONTENTION_TRIES:
                        log.warning("%s failed (%r); nak for redelivery", what, e)
                        # stopping in an outage: nak'd for the next engine, never dead-lettered
                        await self._failed(msgs, e, spendable=kind is None or self.running)
                        return False
                    self.stats["retried"] += 1
                    log.warning("%s: infrastructure failure (%s, %s); trying again in %.1f s", what,
                                type(e).__name__, kind, delay)
                    await self._pause(delay)
                    delay = faults.backoff(delay)
        finally:
            alive.cancel()
        await self._ack(msgs)
        return True

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short when the engine stops."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _ack(self, msgs: list[Msg]) -> None:
        """Ack each (one buffered publish apiece, no task per message); one that
        fails does not stop the rest, and is redelivered after ack_wait."""
        for m in msgs:
            try:
                await m.ack()
            except Exception as e:  # noqa: BLE001 - an ack lost is a redelivery, which is idempotent
                log.warning("ack failed: %r", e)
        self.stats["acked"] += len(msgs)

    async def _failed(self, msgs: list[Msg], error: BaseException, spendable: bool = True) -> None:
        """Nak for redelivery; a message that has failed ``dead_letter_after``
        deliveries goes to the dead-letter subject instead (then is acked), so a
        message that can never succeed does not loop forever and is not lost.
        Not ``spendable``: the failure was not the message's, only nak'd."""
        limit = self.cfg.nats.dead_letter_after
        spent = [m for m in msgs if spendable and m.metadata.num_delivered >= limit]
        again = [m for m in msgs if not (spendable and m.metadata.num_delivered >= limit)]
        self.stats["nacked"] += len(again)
        await asyncio.gather(*(m.nak(delay=NAK_DELAY_S) for m in again), return_exceptions=True)
        for m in spent:
            try:
                await self._dead_letter(m, "processing.failed", f"failed {limit} deliveries; last: {error!r}")
            except Exception:  # noqa: BLE001 - not dead-lettered: nak'd, tried again later
                await m.nak(delay=NAK_DELAY_S)
                continue
            await self._ack([m])
            self.stats["dead_lettered"] += 1
            self._dead_lettered(["processing.failed"])

    async def _dead_letter(self, msg: Msg, reason: str, detail: str) -> None:
        seq = msg.metadata.sequence.stream
        await self.js.publish(streams.dlq_subject(self.cfg.nats), msg.data, headers=dead_letters.headers(
            self.cfg.nats, msg.subject, seq, dead_letters.origin_seq(msg.headers, seq), reason, header_safe(detail)))

    async def _keep_alive(self, msgs: list[Msg]) -> None:
        """Tell JetStream these are still being worked on, so a slow batch is not
        redelivered while it runs."""
        while True:
            await asyncio.sleep(max(self.cfg.nats.ack_wait_s / 3, 1.0))
            results = await asyncio.gather(*(m.in_progress() for m in msgs), return_exceptions=True)
            for r in results:
                if isinstance(r, Exception):
                    log.warning("in_progress failed: %r", r)
                    break

    async def _reject(self, rejected: list[Rejected]) -> None:
        """Dead-letter first (durable in its own stream), then the tracking row, then ack."""
        n = self.cfg.nats
        now = time.time()
        outcomes = []
        for r in rejected:
            seq = r.msg.metadata.sequence.stream
            category = printable(streams.category_of(n, r.msg.subject), 63)
            outcomes.append(Outcome(derive_id(f"{n.stream}:{seq}"), salvage_user(r.msg.data), "*", category,
                                    "rejected", r.reason, now, now, detail=printable(r.detail, 1000)))
        payload = wire.encode(outcomes)

        async def answer() -> None:
            for r in rejected:  # the same Nats-Msg-Id each time: a second try is not a second copy
                await self._dead_letter(r.msg, r.reason, r.detail)
            await self.recorder.record.remote(payload)

        if await self._acked([r.msg for r in rejected], answer, f"{len(rejected)} rejected messages"):
            self.stats["rejected"] += len(rejected)
            self._dead_lettered([r.reason for r in rejected])

    async def _sample(self) -> None:
        """Each lane's consumer: messages not yet delivered (the lag), delivered
        and not acked, redelivered; one request to the server per lane and tick."""
        for lane, sub in list(self.subs.items()):
            info = await sub.consumer_info()  # type: ignore[attr-defined]
            tags = {"lane": lane}
            self.meter.set("tidings_consumer_pending", info.num_pending or 0, tags)
            self.meter.set("tidings_consumer_ack_pending", info.num_ack_pending or 0, tags)
            self.meter.set("tidings_consumer_redelivered", info.num_redelivered or 0, tags)

    def _dead_lettered(self, reasons: list[str]) -> None:
        counts: dict[str, int] = {}
        for r in reasons:
            r = r if r in metrics.DEAD_LETTER_REASONS else "other"
            counts[r] = counts.get(r, 0) + 1
        for r, n in counts.items():
            self.meter.inc("tidings_dead_letters_total", n, {"reason": r})

    async def info(self) -> dict:
        return {"index": self.index, "lanes": list(self.lanes), "running": self.running,
                "inflight_batches": len(self.inflight), "calls": link.counts(self.user_shards), **self.stats}

    async def stop(self) -> None:
        """Stop fetching and let the batches in flight finish (they ack or nak)."""
        self.running = False
        self.stopping.set()
        if self.ticker is not None:
            self.ticker.stop()
        for task in self.loop_tasks:
            task.cancel()
        await asyncio.gather(*self.loop_tasks, return_exceptions=True)
        if self.inflight:
            await asyncio.gather(*self.inflight, return_exceptions=True)
        for task in self.broadcasts:  # unacked: redelivered to the next engine, which skips what is recorded
            task.cancel()
        await asyncio.gather(*self.broadcasts, return_exceptions=True)
        if self.nc is not None:
            # close, not drain: the batches in flight are done, and draining a pull
            # subscription waits for a fetch that will never come
            await self.nc.close()
            self.nc = None
        await telemetry.stop_flush()  # the spans of the last batches, before the kill (bounded)
