"""Actor links: the hot calls between actors over one stream connection each.

Ray places the actors, names them, restarts them and carries every other call.
The three calls every notification makes — Ingestor → UserShard ``handle``,
UserShard → ChannelShard ``deliver``, UserShard → Recorder ``record`` — go over a
plain TCP connection between the two actors' event loops instead: on this machine
a Ray call between two async actors costs 1.7–3.0 ms round trip at p50 and 2.7–4.0 ms
at p99, a link 0.15–0.30 / 0.5–0.9 ms (``tidings bench hop``), because a
Ray call crosses the core worker's threads twice on each side and a stream does
not. What a call carries and answers is the same (MessagePack bytes in, plain
values out); an error raised by the callee is raised to the caller as itself, so
``actors/faults.py`` judges it as it judged Ray's.

Safety: the callee listens on its node's address on a port of the system's
choice, and takes a connection only once it has sent the callee's token — 32
random bytes made when the listener starts and handed out only by the callee's
``link_endpoint`` Ray method, so only a holder of the actor's Ray handle can call.
Only the methods the callee lists in ``LINKED`` answer.

Failure: a call that finds no connection (the link is off, the peer has no
listener, or the connection is still being made, in the background, as after the
peer's restart) goes through Ray as before, as does one not yet written when its
connection ends; a connection that ends
with calls in flight fails them with ``LinkLost``, a ``RayActorError`` like the one
Ray raises when an actor dies mid-call (the peer may or may not have done the
work; the callers' retries are already safe for that). The next call connects
again, asking the (restarted) peer for its new endpoint through Ray.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import ray
from ray import cloudpickle
from ray.exceptions import RayActorError, TaskCancelledError

from actors import faults

log = logging.getLogger(__name__)

TOKEN_BYTES = 32
FRAME_MOST = 1 << 30  # a frame's length above this is a broken stream, not a call
HELLO_S = 5.0  # the longest a new connection may take to send its token
CONNECT_S = 5.0  # the longest a connect waits for a peer's endpoint and connection
RETRY_FIRST_S, RETRY_MOST_S = 1.0, 30.0  # after a failed connect, calls go through Ray this long (doubling)
SERVED_MOST = 1000  # calls a listener runs at once (Ray's own bound for an async actor)
# A live link asks its peer through Ray, this often, for its endpoint: a peer Ray
# cannot reach (cut off from the caller's Ray) or has made again must not keep
# taking calls over the link. Answered within WATCH_WAIT_S or the link is dropped
# (calls through Ray). What it does not cover (a peer whose raylet hangs): docs/design.md
WATCH_S, WATCH_WAIT_S = 1.0, 8.0
# A peer whose node went away sends no FIN: keepalive probes (after 5 s idle, every
# 2 s, 3 unanswered) and a 15 s bound on unacknowledged data end the connection, so
# its calls fail within ~15 s (Ray notices a dead node in ~30 s) instead of hanging
KEEPALIVE = ((socket.SO_KEEPALIVE, 1, socket.SOL_SOCKET),
             (getattr(socket, "TCP_KEEPIDLE", None), 5, socket.IPPROTO_TCP),
             (getattr(socket, "TCP_KEEPINTVL", None), 2, socket.IPPROTO_TCP),
             (getattr(socket, "TCP_KEEPCNT", None), 3, socket.IPPROTO_TCP),
             (getattr(socket, "TCP_USER_TIMEOUT", None), 15_000, socket.IPPROTO_TCP),
             (getattr(socket, "TCP_KEEPALIVE", None), 5, socket.IPPROTO_TCP))  # macOS's name for the idle time

_HEAD = 4  # a frame: its length (4 bytes, big-endian), then a MessagePack array
_encoder = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(tuple[int, str, bytes])  # call id, method, payload
_replies = msgspec.msgpack.Decoder(tuple[int, bool, Any])  # call id, ok, value (or the pickled error)


class LinkLost(RayActorError):
    """The connection to a peer ended with this call in flight."""

    def __init__(self, what: str):
        super().__init__(error_msg=what)

    def __reduce__(self):
        return (LinkLost, (self.error_msg,))


class Endpoint(msgspec.Struct, array_like=True):
    host: str
    port: int
    token: bytes


def _frame(value: Any) -> bytes:
    body = _encoder.encode(value)
    if len(body) > FRAME_MOST:
        raise ValueError(f"a call of {len(body)} bytes is over a link's {FRAME_MOST}")
    return len(body).to_bytes(_HEAD, "big") + body


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = int.from_bytes(await reader.readexactly(_HEAD), "big")
    if size > FRAME_MOST:
        raise ConnectionError(f"a frame of {size} bytes")
    return await reader.readexactly(size)


def _keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    for option, value, level in KEEPALIVE:
        if option is not None:
            try:
                sock.setsockopt(level, option, value)
            except OSError:  # not this platform's: the connection lives without it
                pass


def _pickled(error: BaseException) -> bytes:
    """The error as the caller will raise it, pickled as Ray pickles it. One that
    does not pickle (Ray's own task error, a library's error holding a socket)
    goes as what it wraps, else as an error ``actors/faults.py`` judges alike."""
    for candidate in (error, getattr(error, "cause", None)):
        if isinstance(candidate, BaseException):
            try:
                return cloudpickle.dumps(candidate)
            except Exception:  # noqa: BLE001 - try the next, then a stand-in
                pass
    return cloudpickle.dumps(_stand_in(error))


def _stand_in(error: BaseException) -> BaseException:
    try:
        words = f"{type(error).__name__}: {error}"[:2000]
    except Exception:  # noqa: BLE001 - an error whose str() fails
        words = type(error).__name__
    try:
        kind = faults.kind(error)
    except Exception:  # noqa: BLE001 - an error too odd to judge: the message's
        kind = None
    if kind == "outage":
        return ConnectionError(words)  # an OSError: an outage
    if kind == "contention":
        return LinkLost(words)  # a RayActorError: contention
    return RuntimeError(words)


def _unpickled(data: bytes) -> BaseException:
    try:
        error = cloudpickle.loads(data)  # from the peer the token reached: as far trusted as Ray's own pickles
    except Exception as e:  # noqa: BLE001 - an error class this process cannot import
        return RuntimeError(f"a peer's error that could not be read here: {type(e).__name__}")
    if not isinstance(error, Exception) or isinstance(error, StopIteration | StopAsyncIteration):
        # never raised as such in the caller: they would end its task or its event loop
        return RuntimeError(f"the peer's call ended with {type(error).__name__}")
    return error


def _error_reply(call_id: int, error: BaseException) -> bytes:
    try:
        return _frame((call_id, False, _pickled(error)))
    except Exception:  # noqa: BLE001 - the last resort: its type's name, so the caller is answered
        return _frame((call_id, False, cloudpickle.dumps(RuntimeError(type(error).__name__))))


class Listener:
    """The callee's side: serves ``methods`` of ``target`` to callers that send
    the token. Made and started in the actor's event loop (``LinkServed``)."""

    def __init__(self, target: Any, methods: frozenset[str]):
        self.target, self.methods = target, methods
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self.server: asyncio.Server | None = None
        self.endpoint: Endpoint | None = None
        self.gate = asyncio.Semaphore(SERVED_MOST)
        self.running: set[asyncio.Task] = set()

    async def start(self) -> Endpoint:
        host = ray.util.get_node_ip_address()
        self.server = await asyncio.start_server(self._serve, host, 0)
        port = self.server.sockets[0].getsockname()[1]
        self.endpoint = Endpoint(host, port, self.token)
        return self.endpoint

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lock = asyncio.Lock()  # one reply written at a time
        try:
            hello = await asyncio.wait_for(reader.readexactly(TOKEN_BYTES), HELLO_S)
            if not hmac.compare_digest(hello, self.token):
                log.warning("a link connection without the token refused")
                return
            _keepalive(writer)
            while True:
                call_id, method, payload = _requests.decode(await _read_frame(reader))
                await self.gate.acquire()
                task = asyncio.get_running_loop().create_task(self._run(call_id, method, payload, writer, lock))
                self.running.add(task)
                task.add_done_callback(self.running.discard)
        except (asyncio.IncompleteReadError, OSError, msgspec.DecodeError):
            pass  # the caller went away (or spoke nonsense): its calls in flight fail on its side
        finally:
            writer.close()

    async def _run(self, call_id: int, method: str, payload: bytes, writer: asyncio.StreamWriter,
                   lock: asyncio.Lock) -> None:
        reraise: BaseException | None = None
        try:
            if method not in self.methods:
                raise AttributeError(f"{method} is not served over a link")
            reply = _frame((call_id, True, await getattr(self.target, method)(payload)))
        except BaseException as e:  # noqa: BLE001 - whatever it was, the caller hears of it (Ray's way too)
            if not isinstance(e, Exception):  # cancelled, exiting: answered, then let go on
                reraise = e
            reply = _error_reply(call_id, TaskCancelledError() if isinstance(e, asyncio.CancelledError) else e)
        finally:
            self.gate.release()
        try:
            async with lock:
                writer.write(reply)
                await writer.drain()
        except (OSError, RuntimeError):
            pass  # the caller is gone; it failed this call with LinkLost
        except Exception:
            log.exception("a link reply could not be written: the connection is closed")
            writer.close()
        if reraise is not None:
            raise reraise


class LinkServed:
    """Mixed into an actor whose ``LINKED`` methods (``async def m(self, payload:
    bytes)``) may be called over a link."""

    LINKED: frozenset[str] = frozenset()
    _listening: asyncio.Task | None = None

    async def link_endpoint(self) -> bytes:
        """Where to connect and the token to send (MessagePack ``Endpoint``).
        One listener, however many callers ask at once."""
        failed = self._listening is not None and self._listening.done() and (
            self._listening.cancelled() or self._listening.exception() is not None)
        if self._listening is None or failed:
            self._listening = asyncio.get_running_loop().create_task(Listener(self, self.LINKED).start())
        return _encoder.encode(await asyncio.shield(self._listening))


class _Connection:
    """One connection to a peer and the calls waiting on it."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.calls: dict[int, asyncio.Future] = {}
        self.writing = asyncio.Lock()
        self.reading: asyncio.Task | None = None
        self.watching: asyncio.Task | None = None
        self.lost = False


class Link:
    """The caller's side of one peer: ``await link.call("deliver", payload)``.
    Anything else (``link.health.remote()``) is the peer's Ray handle's (so a
    peer's method named like one of the Link's own is reached as ``link.peer.x``)."""

    def __init__(self, peer: Any, enabled: bool = True):
        self.peer = peer
        self.enabled = enabled
        self.ids = itertools.count()
        self.conn: _Connection | None = None
        self.connecting: asyncio.Task | None = None
        self.retry_at = 0.0
        self.retry_s = RETRY_FIRST_S
        self.linked_calls = 0  # calls that went over the link, and through Ray instead
        self.ray_calls = 0

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or "peer" not in self.__dict__:
            raise AttributeError(attr)
        return getattr(self.__dict__["peer"], attr)

    def __reduce__(self):  # passed on as the peer, which is what a receiver would link to itself
        return (Link, (self.peer, self.enabled))

    async def call(self, method: str, payload: bytes) -> Any:
        """Over the link when it is up; through Ray while it is not (and it is
        connected meanwhile, in the background). A call that could not be
        written goes through Ray too; one written and not answered when the
        connection ends fails with ``LinkLost``."""
        conn = self.conn
        if conn is None:
            self._connect_soon()
            return await self._through_ray(method, payload)
        call_id = next(self.ids)
        frame = _frame((call_id, method, payload))
        reply = asyncio.get_running_loop().create_future()
        fallback = False
        try:  # from before the write: a caller cancelled during drain() leaves no entry behind
            try:
                async with conn.writing:
                    fallback = conn.lost  # it ended while this call waited: never written
                    if not fallback:
                        conn.calls[call_id] = reply
                        conn.writer.write(frame)  # the whole frame into the buffer: never half of it
                        await conn.writer.drain()
            except (OSError, RuntimeError) as e:
                self._lost(conn, f"sending {method}: {type(e).__name__}")
            if fallback:
                return await self._through_ray(method, payload)
            self.linked_calls += 1
            return await reply
        finally:
            conn.calls.pop(call_id, None)

    async def _through_ray(self, method: str, payload: bytes) -> Any:
        self.ray_calls += 1
        return await getattr(self.peer, method).remote(payload)

    def _connect_soon(self) -> None:
        if self.enabled and self.connecting is None and time.monotonic() >= self.retry_at:
            self.connecting = asyncio.get_running_loop().create_task(self._connect())

    async def connect(self) -> _Connection | None:
        """Connect now if need be (at warm-up, so the first batches use the link);
        None: not connected, calls go through Ray."""
        if self.conn is None:
            self._connect_soon()
            if self.connecting is not None:
                await asyncio.shield(self.connecting)
        return self.conn

    async def _connect(self) -> None:
        try:
            try:
                ask = self.peer.link_endpoint
            except AttributeError:  # not a peer that serves links (a test's stand-in)
                self.enabled = False
                return
            async with asyncio.timeout(CONNECT_S):
                ep = msgspec.msgpack.decode(await ask.remote(), type=Endpoint)
                reader, writer = await asyncio.open_connection(ep.host, ep.port)
            _keepalive(writer)
            writer.write(ep.token)
            conn = _Connection(writer)
            conn.reading = asyncio.get_running_loop().create_task(self._read(reader, conn))
            conn.watching = asyncio.get_running_loop().create_task(self._watch(conn, ep.token))
            self.conn, self.retry_s = conn, RETRY_FIRST_S
        except Exception as e:  # noqa: BLE001 - Ray's calls meanwhile say what is wrong with the peer, if anything
            log.warning("link to a peer not made (%s); its calls go through Ray, tried again in %.0f s",
                        type(e).__name__, self.retry_s)
            self.retry_at = time.monotonic() + self.retry_s
            self.retry_s = min(self.retry_s * 2, RETRY_MOST_S)
        finally:
            self.connecting = None

    async def _read(self, reader: asyncio.StreamReader, conn: _Connection) -> None:
        why = "the peer closed the connection"
        try:
            while True:
                call_id, ok, value = _replies.decode(await _read_frame(reader))
                reply = conn.calls.get(call_id)
                if reply is None or reply.done():  # its caller was cancelled
                    continue
                if ok:
                    reply.set_result(value)
                else:
                    reply.set_exception(_unpickled(value))
        except (asyncio.IncompleteReadError, OSError, msgspec.DecodeError) as e:
            why = f"the connection ended ({type(e).__name__})"
        finally:
            self._lost(conn, why)

    async def _watch(self, conn: _Connection, token: bytes) -> None:
        """Drop ``conn`` once Ray no longer reaches its peer, or reaches another
        incarnation of it (``WATCH_S``)."""
        while not conn.lost:
            await asyncio.sleep(WATCH_S)
            try:
                async with asyncio.timeout(WATCH_WAIT_S):
                    ep = msgspec.msgpack.decode(await self.peer.link_endpoint.remote(), type=Endpoint)
            except Exception as e:  # noqa: BLE001 - whatever it is, Ray does not reach this peer now
                log.warning("a linked peer did not answer through Ray (%s): the link is dropped", type(e).__name__)
                self._lost(conn, f"the peer did not answer through Ray ({type(e).__name__})")
                return
            if not hmac.compare_digest(ep.token, token):
                self._lost(conn, "the peer was made again")
                return

    def _lost(self, conn: _Connection, why: str) -> None:
        """Every call in flight on ``conn`` fails; the next call connects again."""
        if self.conn is conn:
            self.conn = None
        if conn.lost:
            return
        conn.lost = True
        conn.writer.close()
        if conn.watching is not None and conn.watching is not asyncio.current_task():
            conn.watching.cancel()
        for reply in conn.calls.values():
            if not reply.done():
                reply.set_exception(LinkLost(f"link to a peer lost: {why}"))
                reply.exception()  # retrieved: a caller cancelled meanwhile must not leave it unread

    async def close(self) -> None:
        """For good: calls in flight fail, later calls go through Ray, nothing reconnects."""
        self.enabled = False
        tasks = [self.connecting] if self.connecting is not None else []
        conn = self.conn
        if conn is not None:
            self._lost(conn, "the link was closed")  # answers what waits, even if the reader never ran
            tasks += [t for t in (conn.reading, conn.watching) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def links(peers: Any) -> Iterator[Link]:
    """Every Link in ``peers`` (a Link, or lists and dicts of them, as ``linked`` made them)."""
    if isinstance(peers, Link):
        yield peers
    elif isinstance(peers, dict | list):
        for p in peers.values() if isinstance(peers, dict) else peers:
            yield from links(p)


def counts(peers: Any) -> dict[str, int]:
    """Calls made over ``peers``' links, and through Ray instead."""
    found = list(links(peers))
    return {"linked": sum(p.linked_calls for p in found), "through_ray": sum(p.ray_calls for p in found)}


def linked(peers: Any, enabled: bool = True) -> Any:
    """``peers`` (a handle, or a list or dict of them) with each wrapped in a Link."""
    if isinstance(peers, list):
        return [linked(p, enabled) for p in peers]
    if isinstance(peers, dict):
        return {k: linked(v, enabled) for k, v in peers.items()}
    return Link(peers, enabled)


async def call(peer: Any, method: str, payload: bytes) -> Any:
    """``peer.method(payload)`` over its link, or through its handle when it has
    none (a peer not wrapped by ``linked``: a test's stand-in)."""
    if isinstance(peer, Link):
        return await peer.call(method, payload)
    return await getattr(peer, method).remote(payload)
