"""HTTP routes of the in-app inbox (written by ``providers.inapp``):

- ``GET  /v1/users/{user_id}/inbox?after=<seq>&limit=50&unread=true``:
  ``{"messages": [...], "next": <last seq of the page, or after>, "unread": n, "unseen": n}``,
  oldest first; page on with ``after=<next>``.
- ``POST /v1/users/{user_id}/inbox/read`` ``{"seqs": [...]}`` or ``{"all": true}``:
  ``{"read": <newly marked>, "unread": n, "unseen": n}``; read implies seen, and
  records the notification "opened" on ``in_app`` (``stores.engagement``).
- ``POST /v1/users/{user_id}/inbox/seen``, likewise: ``{"seen": ..., "unread": ..., "unseen": ...}``.
  Only that user's messages are marked.
- ``GET  /v1/users/{user_id}/inbox/ws?after=<seq>``: a WebSocket (see ``InboxStream``).

Frames the server sends (JSON text): ``{"type": "message", "message": {...}}``
(the same object as in ``messages`` above), once ``{"type": "synced", "next":
<seq>}`` after the backlog, ``{"type": "ack", "seq": s, "seen": n}`` answering
a client's ``{"ack": s}`` (marks that user's messages up to ``s`` seen), and
``{"type": "error", "error": ...}`` for a client frame it cannot use. A client
that reconnects sends ``?after=<the last seq it got>`` and gets exactly what
it missed. A bad user id is a 422, a bad query or body a 400, before any upgrade;
so is a socket past ``http.ws_per_user`` (429) or ``http.ws_total`` (503), with
``Retry-After`` (``engine.http.sockets``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
from aiohttp import WSMsgType, web
from msgspec import Meta

from actors.user_links import unsubscribe_rules
from engine.auth import PRINCIPAL
from engine.http.access import Param, Route, Scoped, register
from engine.http.common import ENGINE, USER_PATH, Problem, decode, path_user, query_bool, query_int, read_json, reply
from engine.http.sockets import SOCKETS, Sockets
from providers.inapp.messages import COLUMNS, Event, InboxMessage, from_row, inbox_subject
from stores import engagement

log = logging.getLogger(__name__)

HEARTBEAT_S = 25.0  # WebSocket ping interval; no pong within half of it closes the socket
RESYNC_S = 30.0  # an idle socket reads PostgreSQL this often (a lost NATS event shows up by then)
PAGE = 500  # rows per backlog read
MAX_QUEUED = 1000  # live events waiting for one socket; beyond, they are dropped and PostgreSQL read instead
MAX_LIMIT = 500
MAX_SEQ = 2**63 - 1
SUBSCRIBE_TIMEOUT_S = 5.0

_json = msgspec.json.Encoder()
_event = msgspec.json.Decoder(Event)

PAGE_SQL = f"SELECT {COLUMNS} FROM inbox_messages WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
UNREAD_PAGE_SQL = (f"SELECT {COLUMNS} FROM inbox_messages WHERE user_id = $1 AND seq > $2 AND read_at IS NULL "
                   "ORDER BY seq LIMIT $3")
# Read implies seen (marking read sets seen_at too), so every unseen row is unread
# and both counts come from the partial index of unread rows.
COUNTS_SQL = ("SELECT count(*) AS unread, count(*) FILTER (WHERE seen_at IS NULL) AS unseen "
              "FROM inbox_messages WHERE user_id = $1 AND read_at IS NULL")
READ_SQL = ("UPDATE inbox_messages SET read_at = now(), seen_at = coalesce(seen_at, now()) "
            "WHERE user_id = $1 AND read_at IS NULL AND ($2::bigint[] IS NULL OR seq = ANY($2::bigint[])) "
            "RETURNING notification_id, extract(epoch FROM read_at) AS read_at")
SEEN_SQL = ("UPDATE inbox_messages SET seen_at = now() WHERE user_id = $1 AND read_at IS NULL "
            "AND seen_at IS NULL AND ($2::bigint[] IS NULL OR seq = ANY($2::bigint[])) RETURNING seq")
ACK_SQL = ("UPDATE inbox_messages SET seen_at = now() WHERE user_id = $1 AND read_at IS NULL "
           "AND seen_at IS NULL AND seq <= $2")

Seq = Annotated[int, Meta(ge=1, le=MAX_SEQ)]


class Marks(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``/read`` and ``/seen``: the seqs to mark, or ``all``."""

    seqs: Annotated[list[Seq], Meta(max_length=1000)] | None = None
    all: bool = False


class Ack(msgspec.Struct, forbid_unknown_fields=True):
    """A client's WebSocket frame: everything up to ``ack`` is seen."""

    ack: Annotated[int, Meta(ge=0, le=MAX_SEQ)]


class InboxPage(msgspec.Struct):
    """A page of the inbox, oldest first: page on with ``after=<next>``; the user's unread and unseen counts,
    and (for an end-user token only) the link to their preference center."""

    messages: list[InboxMessage]
    next: int
    unread: int
    unseen: int
    preference_center: str | None


class ReadMarked(msgspec.Struct):
    """How many messages this call marked read, and the user's unread and unseen counts after it."""

    read: int
    unread: int
    unseen: int


class SeenMarked(msgspec.Struct):
    """How many messages this call marked seen, and the user's unread and unseen counts after it."""

    seen: int
    unread: int
    unseen: int


_marks = msgspec.json.Decoder(Marks)
_ack = msgspec.json.Decoder(Ack)


async def counts(conn, user_id: str) -> dict:
    row = await conn.fetchrow(COUNTS_SQL, user_id)
    return {"unread": row["unread"], "unseen": row["unseen"]}


async def get_inbox(request: web.Request) -> web.Response:
    """A page of a user's inbox, oldest first.

    ``next`` is the last seq of the page (or ``after`` when it is empty): page
    on with ``after=<next>``. ``preference_center`` is the person's preference
    center link, given to an end-user token only (null for a key, and while
    ``[engagement]`` has no base URL and secret)."""
    engine = request.app[ENGINE]
    user_id = path_user(request)
    after = query_int(request, "after", 0, 0, MAX_SEQ)
    limit = query_int(request, "limit", 50, 1, MAX_LIMIT)
    sql = UNREAD_PAGE_SQL if query_bool(request, "unread") else PAGE_SQL
    async with engine.pool.acquire() as conn:
        rows = await conn.fetch(sql, user_id, after, limit)
        totals = await counts(conn, user_id)
    messages = [from_row(r) for r in rows]
    # the center link can change preferences and consent for 30 days: only for the person themselves
    principal = request.get(PRINCIPAL)
    own = principal is not None and principal.kind == "user"
    return reply(InboxPage(messages=messages, next=messages[-1].seq if messages else after, **totals,
                           preference_center=center_link(engine.cfg, user_id) if own else None))


def center_link(cfg, user_id: str) -> str | None:
    """The person's preference center (engine/http/center.py), for the inbox to
    show; None while ``[engagement]`` has no base URL and secret."""
    rules = unsubscribe_rules(cfg)
    return rules.center_url(user_id, time.time()) if rules is not None else None


async def mark(request: web.Request, sql: str, what: str, answer: type[ReadMarked] | type[SeenMarked]) -> web.Response:
    engine = request.app[ENGINE]
    user_id = path_user(request)
    marks = decode(_marks, await read_json(request), f"{what} marks")
    if (marks.seqs is None) == (not marks.all):
        raise Problem(422, f"invalid {what} marks",
                      [{"field": "$", "reason": 'give either "seqs": [...] or "all": true'}])
    events: list[engagement.Engagement] = []
    new: dict = {}
    async with engine.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(sql, user_id, None if marks.all else marks.seqs)
        if what == "read":  # reading an in-app message is opening it
            events = [engagement.Engagement(r["notification_id"], user_id, "in_app", "opened", float(r["read_at"]),
                                            "inbox") for r in rows]
            new = await engagement.record(conn, events)
        totals = await counts(conn, user_id)
    engine.feed.add(events, new)  # committed
    return reply(answer(len(rows), **totals))


async def mark_read(request: web.Request) -> web.Response:
    """Mark a user's inbox messages read: the seqs given, or all.

    Read implies seen; each message newly read records its notification
    "opened" on ``in_app``. Only that user's messages are marked."""
    return await mark(request, READ_SQL, "read", ReadMarked)


async def mark_seen(request: web.Request) -> web.Response:
    """Mark a user's inbox messages seen: the seqs given, or all.

    Only that user's unread messages are marked (a read one is seen already)."""
    return await mark(request, SEEN_SQL, "seen", SeenMarked)


class InboxStream:
    """One WebSocket's feed of one user's inbox: PostgreSQL is the record, NATS
    only says "something new" (and usually carries it).

    Why nothing is lost or sent twice:

    1. The NATS subscription exists (and the server has confirmed it: a flush)
       before the backlog is read. Every event published from then on is queued.
    2. The backlog is every row of the user with ``seq > after``, read in pages
       in seq order. The provider publishes a row only after it committed, so a
       row is either committed before the read (it is in the backlog) or
       published after the subscription (its event is queued), or both.
    3. The writer locks the user until commit while its rows get their seqs, so
       one user's rows commit in seq order: a read of "seq > last" returns a
       complete prefix, and no row below a seq already sent can appear later.
       ``last`` (the highest seq sent) is therefore a true cursor: everything
       of the user up to it was sent, and ``?after=<last>`` resumes exactly.
    4. Queued events are handled in order after the backlog: an event with
       ``seq <= last`` was sent already (backlog or a read) and is skipped. An
       event whose ``prev`` (the user's previous seq when it was written) is at
       most ``last`` is the next message: it is sent as it came. Any other
       event means something came in between that this socket has not seen
       (events from several writers can arrive out of order, and NATS may drop
       one): the socket reads ``seq > last`` from PostgreSQL instead, which by
       (3) includes the event's row and everything before it.
    5. An event lost with nothing after it is found by the read every
       ``RESYNC_S`` of quiet; a socket whose queue overflows drops its queued
       events and reads PostgreSQL instead.

    So each seq is sent at most once (only seqs above ``last`` are sent, and
    ``last`` only grows), in increasing order, and every committed row is sent.
    """

    def __init__(self, send: Callable[[bytes], Awaitable[None]], stop: Callable[[], Awaitable[None]], pool,
                 user_id: str, after: int):
        """``send`` takes each frame (JSON text); ``stop`` ends the client's feed
        when PostgreSQL fails (it reconnects with its cursor). The inbox
        WebSocket sends frames as they are; GraphQL's ``inbox`` subscription
        (engine/http/graphql) turns them into its events."""
        self.send, self.stop, self.pool, self.user_id = send, stop, pool, user_id
        self.last = after
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.overflowed = False
        self._send_lock = asyncio.Lock()

    async def on_event(self, msg) -> None:
        """NATS callback: queue the event (never blocks)."""
        if self.queue.qsize() >= MAX_QUEUED:
            self.overflowed = True
            return
        self.queue.put_nowait(msg.data)

    async def run(self) -> None:
        """Backlog, ``synced``, then live events until cancelled. A failure of
        PostgreSQL closes the socket (1011) so the client reconnects."""
        try:
            await self.catch_up()
            await self._send(_json.encode({"type": "synced", "next": self.last}))
            while True:
                try:
                    async with asyncio.timeout(RESYNC_S):
                        data = await self.queue.get()
                except TimeoutError:
                    await self.catch_up()
                    continue
                if self.overflowed:
                    self.overflowed = False
                    while not self.queue.empty():
                        self.queue.get_nowait()
                    await self.catch_up()
                    continue
                await self.deliver(data)
        except ConnectionResetError:
            return  # the client left; the handler cleans up
        except Exception as exc:  # noqa: BLE001 - the client reconnects with its cursor
            log.warning("inbox socket of %r stopped: %r", self.user_id, exc)
            await self.stop()

    async def deliver(self, data: bytes) -> None:
        """One queued NATS event (see the class doc, step 4)."""
        try:
            ev = _event.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("inbox event for %r not understood (%s); reading PostgreSQL", self.user_id, exc)
            await self.catch_up()
            return
        if ev.seq <= self.last:
            return
        if bytes(ev.message) != b"null" and (ev.prev is None or ev.prev <= self.last):
            await self._send(b'{"type":"message","message":' + bytes(ev.message) + b"}")
            self.last = ev.seq
            return
        await self.catch_up()

    async def catch_up(self) -> None:
        """Send every row of the user with ``seq > last``, in seq order."""
        while True:
            rows = await self.pool.fetch(PAGE_SQL, self.user_id, self.last, PAGE)
            for r in rows:
                await self._send(_json.encode({"type": "message", "message": from_row(r)}))
                self.last = r["seq"]
            if len(rows) < PAGE:
                return

    async def client_frame(self, data: str) -> None:
        """A frame from the client: ``{"ack": seq}``."""
        try:
            ack = _ack.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._send(_json.encode({"type": "error", "error": 'expected {"ack": <seq>}', "reason": str(exc)}))
            return
        try:
            status = await self.pool.execute(ACK_SQL, self.user_id, ack.ack)
        except Exception as exc:  # noqa: BLE001 - the client may ack again
            log.warning("inbox ack of %r failed: %r", self.user_id, exc)
            await self._send(_json.encode({"type": "error", "error": "ack not stored; send it again"}))
            return
        await self._send(_json.encode({"type": "ack", "seq": ack.ack, "seen": int(status.split()[-1])}))

    async def _send(self, frame: bytes) -> None:
        async with self._send_lock:
            await self.send(frame)


def check_origin(request: web.Request, allowed: list[str]) -> None:
    """A browser opening the socket with an end-user token must come from an
    allowed origin: another site could otherwise open it with a token it holds
    in the user's browser (cross-site WebSocket hijacking). Keys come in a
    header no browser page can set, so they need no Origin."""
    p = request.get(PRINCIPAL)
    origin = request.headers.get("Origin")
    if p is not None and p.kind == "user" and origin is not None and origin not in allowed:
        raise Problem(403, "forbidden", [{"field": "Origin", "reason": f"origin {origin!r} is not allowed "
                                          "(http.allowed_origins)"}])


async def inbox_ws(request: web.Request) -> web.WebSocketResponse:
    """A user's inbox, live, over a WebSocket.

    The server sends JSON text frames: ``{"type": "message", "message": {...}}``
    (an inbox message, as in the inbox page) for the backlog after ``after``,
    then ``{"type": "synced", "next": <seq>}`` once, then each new message as it
    comes; ``{"type": "ack", "seq": s, "seen": n}`` answers a client's
    ``{"ack": s}`` (marks the user's messages up to ``s`` seen), and
    ``{"type": "error", "error": ...}`` a frame it cannot use. A client that
    reconnects sends ``?after=<the last seq it got>`` and gets exactly what it
    missed. A browser passes its end-user token as ``?access_token=`` and must
    come from an allowed origin (``http.allowed_origins``). A request that is not
    a WebSocket upgrade is a 400; a socket past ``http.ws_per_user`` is a 429,
    past ``http.ws_total`` a 503, both with ``Retry-After``.

    See ``InboxStream`` for the protocol's guarantees. Subscribes to
    ``<prefix>.inbox.<user token>`` before anything is read, and unsubscribes
    when the socket closes."""
    engine = request.app[ENGINE]
    user_id = path_user(request)
    after = query_int(request, "after", 0, 0, MAX_SEQ)
    check_origin(request, engine.cfg.http.allowed_origins)
    with request.app[SOCKETS].held(user_id, engine.cfg.http):
        return await serve_socket(request, engine, user_id, after)


async def serve_socket(request: web.Request, engine, user_id: str, after: int) -> web.WebSocketResponse:
    """The socket, once admitted: upgrade, subscribe, feed until it closes."""
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=64 * 1024)
    await ws.prepare(request)

    async def send(frame: bytes) -> None:
        await ws.send_frame(frame, WSMsgType.TEXT)

    async def stop() -> None:
        await ws.close(code=1011, message=b"inbox unavailable; reconnect with after=<last seq>")

    stream = InboxStream(send, stop, engine.pool, user_id, after)
    try:
        sub, forwarder = await start_feed(engine, stream)
    except Exception as exc:  # noqa: BLE001 - NATS unavailable: tell the client to come back
        log.warning("inbox socket of %r: cannot subscribe: %r", user_id, exc)
        await ws.close(code=1011, message=b"live updates unavailable; reconnect")
        return ws
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await stream.client_frame(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await stream._send(_json.encode({"type": "error", "error": "binary frames are not understood"}))
            elif msg.type == WSMsgType.ERROR:
                break
    except ConnectionResetError:
        pass
    finally:
        await end_feed(sub, forwarder)
    if not ws.closed:
        await ws.close()
    return ws


async def start_feed(engine, stream: InboxStream) -> tuple[Any, asyncio.Task]:
    """Subscribe ``stream`` to its user's inbox events, confirmed by the server
    before anything is read (``InboxStream``, step 1), and start feeding it:
    (the subscription, the feeding task). Raises when NATS cannot subscribe."""
    sub = await engine.nc.subscribe(inbox_subject(engine.cfg.nats.prefix, stream.user_id), cb=stream.on_event)
    try:
        await engine.nc.flush(timeout=SUBSCRIBE_TIMEOUT_S)  # the server has the subscription before the backlog read
    except BaseException:
        await _stop_feed(sub, None)
        raise
    return sub, asyncio.get_running_loop().create_task(stream.run())


async def end_feed(sub, forwarder: asyncio.Task) -> None:
    """Stop what ``start_feed`` started. The caller may be cancelled (aiohttp
    cancels a handler once its client is gone): the clean-up runs as its own
    task, which finishes even then."""
    forwarder.cancel()
    cleanup = asyncio.get_running_loop().create_task(_stop_feed(sub, forwarder))
    _cleanups.add(cleanup)
    cleanup.add_done_callback(_cleanups.discard)
    await asyncio.shield(cleanup)


_cleanups: set[asyncio.Task] = set()  # running clean-ups (the loop keeps only weak references)


async def _stop_feed(sub, forwarder: asyncio.Task | None) -> None:
    """Unsubscribe (the NATS server stops sending) and wait for the forwarder."""
    try:
        await sub.unsubscribe()
    except Exception as exc:  # noqa: BLE001 - the connection may be gone already
        log.debug("inbox unsubscribe: %r", exc)
    if forwarder is not None:
        await asyncio.gather(forwarder, return_exceptions=True)


AFTER = Param("after", Annotated[int, Meta(ge=0, le=MAX_SEQ)], "Only messages with a seq above this one "
              "(the `next` of the previous page, or the last seq a socket got); default 0")
ROUTES = [
    Route("GET", "/v1/users/{user_id}/inbox", get_inbox, Scoped("inbox:read", user=True), params=USER_PATH,
          answers={200: InboxPage},
          query=(AFTER, Param("limit", Annotated[int, Meta(ge=1, le=MAX_LIMIT)], "At most this many messages; default 50"),
                 Param("unread", bool, "Only unread messages (also `1`/`0`, any case); default false"))),
    Route("POST", "/v1/users/{user_id}/inbox/read", mark_read, Scoped("inbox:write", user=True), params=USER_PATH,
          body=Marks, answers={200: ReadMarked}, example={"seqs": [1, 2, 3]}),
    Route("POST", "/v1/users/{user_id}/inbox/seen", mark_seen, Scoped("inbox:write", user=True), params=USER_PATH,
          body=Marks, answers={200: SeenMarked}, example={"all": True}),
    Route("GET", "/v1/users/{user_id}/inbox/ws", inbox_ws, Scoped("inbox:read", user=True, query_token=True),
          params=USER_PATH, query=(AFTER,), answers={101: None}),
]


def add_routes(app: web.Application) -> None:
    app[SOCKETS] = Sockets()
    register(app, ROUTES)


__all__ = ["InboxStream", "add_routes", "end_feed", "start_feed"]
