"""Actor links (actors/link.py) over real loopback sockets, with the Ray side
stood in for: the peer's ``link_endpoint`` and methods are plain coroutines
behind a ``.remote`` attribute, as a Ray handle has them."""

from __future__ import annotations

import asyncio
import pickle

import asyncpg
import msgspec
import pytest
from ray.exceptions import RayTaskError, TaskCancelledError

from actors import faults, link
from actors.link import Endpoint, Link, LinkLost, LinkServed

OUTAGE = asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command")


class Remote:
    def __init__(self, fn):
        self.fn = fn

    async def remote(self, *args):
        return await self.fn(*args)


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("not this one")


class Odd(Exception):
    """Unpicklable, with a ``cause`` that is not an exception."""

    def __init__(self):
        super().__init__("odd")
        self.cause = "a string"

    def __reduce__(self):
        raise TypeError("no")


class Served(LinkServed):
    LINKED = frozenset({"echo", "fail", "slow", "cancelled", "wrapped", "unpicklable", "odd", "refused"})

    def __init__(self):
        self.calls = 0
        self.release = asyncio.Event()

    async def echo(self, payload: bytes) -> dict:
        self.calls += 1
        return {"got": payload, "n": len(payload)}

    async def fail(self, payload: bytes) -> None:
        raise OUTAGE

    async def slow(self, payload: bytes) -> bytes:
        await self.release.wait()
        return payload

    async def cancelled(self, payload: bytes) -> None:
        raise asyncio.CancelledError()  # e.g. it awaited a task someone cancelled

    async def wrapped(self, payload: bytes) -> None:
        # what a call through Ray raises: a class made for the cause's type, which does not pickle
        raise RayTaskError("record", "traceback", OUTAGE).as_instanceof_cause()

    async def unpicklable(self, payload: bytes) -> None:
        raise Unpicklable("holds a socket")

    async def odd(self, payload: bytes) -> None:
        raise Odd()

    async def refused(self, payload: bytes) -> None:
        raise ConnectionRefusedError("the database is down")

    async def hidden(self, payload: bytes) -> str:  # an actor method not served over links
        return "no"


class Handle:
    """What a Ray handle to ``served`` offers: each method with ``.remote``."""

    def __init__(self, served: Served):
        self.served = served
        self.via_ray = 0
        self.link_endpoint = Remote(served.link_endpoint)

    def __getattr__(self, name: str):
        method = getattr(self.served, name)

        async def through_ray(*args):
            self.via_ray += 1
            return await method(*args)
        return Remote(through_ray)


@pytest.fixture(autouse=True)
def loopback(monkeypatch):
    monkeypatch.setattr(link.ray.util, "get_node_ip_address", lambda: "127.0.0.1")


async def linked_to(served: Served | None = None) -> tuple[Link, Handle]:
    handle = Handle(served or Served())
    peer = Link(handle)
    assert await peer.connect() is not None
    return peer, handle


async def test_calls_go_over_the_link_and_answer_as_through_ray():
    peer, handle = await linked_to()
    replies = await asyncio.gather(*(peer.call("echo", bytes([i]) * i) for i in range(50)))
    assert replies == [{"got": bytes([i]) * i, "n": i} for i in range(50)]
    assert (peer.linked_calls, peer.ray_calls, handle.via_ray) == (50, 0, 0)
    big = b"x" * 3_000_000  # more than a socket buffer: written and read in pieces
    assert (await peer.call("echo", big))["n"] == len(big)
    await peer.close()


async def test_until_the_link_is_up_calls_go_through_ray_and_it_connects_meanwhile():
    handle = Handle(Served())
    peer = Link(handle)
    assert (await peer.call("echo", b"x"))["n"] == 1  # not connected yet: through Ray, a connect started
    assert handle.via_ray == 1
    await peer.connect()
    assert (await peer.call("echo", b"y"))["n"] == 1
    assert (handle.via_ray, peer.linked_calls) == (1, 1)
    await peer.close()


async def test_an_error_raised_by_the_callee_is_raised_to_the_caller_as_itself():
    peer, _ = await linked_to()
    with pytest.raises(asyncpg.exceptions.AdminShutdownError) as caught:
        await peer.call("fail", b"")
    assert faults.kind(caught.value) == "outage"  # judged as Ray's wrapped error was
    with pytest.raises(AttributeError, match="not served over a link"):
        await peer.call("hidden", b"")
    assert (await peer.call("echo", b"ok"))["got"] == b"ok"  # the connection outlives a failed call
    await peer.close()


async def test_errors_that_do_not_pickle_arrive_as_what_they_wrap_or_judged_alike():
    peer, _ = await linked_to()
    with pytest.raises(asyncpg.exceptions.AdminShutdownError):  # Ray's task error: its cause
        await peer.call("wrapped", b"")
    with pytest.raises(RuntimeError, match="Unpicklable: holds a socket") as caught:
        await peer.call("unpicklable", b"")
    assert faults.kind(caught.value) is None
    assert faults.kind(link._stand_in(RayTaskError("f", "tb", OUTAGE))) == "outage"
    await peer.close()


async def test_a_callee_cancelled_answers_task_cancelled_instead_of_leaving_the_caller_waiting():
    peer, _ = await linked_to()
    with pytest.raises(TaskCancelledError):
        await asyncio.wait_for(peer.call("cancelled", b""), 5)
    assert (await peer.call("echo", b"ok"))["n"] == 2
    await peer.close()


async def test_one_listener_however_many_ask_at_once():
    served = Served()
    endpoints = await asyncio.gather(*(served.link_endpoint() for _ in range(8)))
    assert len(set(endpoints)) == 1


async def test_a_connection_without_the_token_is_refused():
    served = Served()
    ep = msgspec.msgpack.decode(await served.link_endpoint(), type=Endpoint)
    reader, writer = await asyncio.open_connection(ep.host, ep.port)
    writer.write(b"\0" * link.TOKEN_BYTES + link._frame((1, "echo", b"hi")))
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
    assert served.calls == 0
    writer.close()


async def test_a_lost_connection_fails_the_calls_in_flight_and_the_next_call_connects_again():
    peer, handle = await linked_to()
    waiting = asyncio.ensure_future(peer.call("slow", b"a"))
    await asyncio.sleep(0.05)
    first = peer.conn
    assert first is not None and len(first.calls) == 1
    first.writer.transport.abort()  # as when the peer's process dies
    with pytest.raises(LinkLost) as caught:
        await waiting
    assert faults.kind(caught.value) == "contention"  # like Ray's actor that died mid-call
    assert pickle.loads(pickle.dumps(caught.value)).error_msg == caught.value.error_msg
    assert (await peer.call("echo", b"again"))["got"] == b"again"  # through Ray while it connects again
    assert handle.via_ray == 1
    await peer.connect()
    assert peer.conn is not None and peer.conn is not first
    await peer.close()


async def test_a_peer_without_a_listener_is_called_through_ray():
    class Plain:  # a test's stand-in, or an actor that serves no links
        def __init__(self):
            self.record = Remote(self._record)

        async def _record(self, payload: bytes) -> float:
            return 1.5

    peer = Link(Plain())
    assert await peer.connect() is None
    assert await peer.call("record", b"") == 1.5
    assert (peer.enabled, peer.linked_calls, peer.ray_calls) == (False, 0, 1)
    assert await link.call(Plain(), "record", b"") == 1.5  # not wrapped at all


async def test_an_attribute_error_inside_the_peers_endpoint_does_not_turn_links_off():
    handle = Handle(Served())

    async def broken() -> bytes:
        raise AttributeError("inside the method")

    handle.link_endpoint = Remote(broken)
    peer = Link(handle)
    assert await peer.connect() is None
    assert peer.enabled and peer.retry_at > 0


async def test_links_off_means_ray_for_every_call():
    handle = Handle(Served())
    peer = Link(handle, enabled=False)
    assert await peer.connect() is None
    assert (await peer.call("echo", b"x"))["n"] == 1
    assert (handle.via_ray, peer.conn) == (1, None)


async def test_a_peer_that_cannot_be_reached_is_called_through_ray_then_tried_again_later(monkeypatch):
    handle = Handle(Served())

    async def unreachable() -> bytes:
        return msgspec.msgpack.encode(Endpoint("127.0.0.1", 1, b"t" * link.TOKEN_BYTES))  # nothing listens

    handle.link_endpoint = Remote(unreachable)
    peer = Link(handle)
    assert await peer.connect() is None
    first_wait = peer.retry_s
    assert (await peer.call("echo", b"x"))["n"] == 1
    assert handle.via_ray == 1 and peer.connecting is None  # not tried again before retry_at
    handle.link_endpoint = Remote(handle.served.link_endpoint)
    monkeypatch.setattr(link.time, "monotonic", lambda: peer.retry_at + 1)
    assert await peer.connect() is not None
    assert first_wait > link.RETRY_FIRST_S and peer.retry_s == link.RETRY_FIRST_S  # backed off, then reset
    assert (await peer.call("echo", b"y"))["n"] == 1
    assert (handle.via_ray, peer.linked_calls) == (1, 1)
    await peer.close()


async def test_a_broken_stream_from_the_callee_fails_the_call_not_the_caller():
    async def garbage(reader, writer):
        await reader.readexactly(link.TOKEN_BYTES)
        writer.write((link.FRAME_MOST + 1).to_bytes(4, "big"))
        await writer.drain()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    handle = Handle(Served())

    async def there() -> bytes:
        return msgspec.msgpack.encode(Endpoint("127.0.0.1", port, b"t" * link.TOKEN_BYTES))

    handle.link_endpoint = Remote(there)
    peer = Link(handle)
    await peer.connect()
    with pytest.raises(LinkLost, match="ConnectionError"):
        await peer.call("echo", b"x")
    server.close()


def test_a_link_being_unpickled_does_not_recurse():
    bare = Link.__new__(Link)
    with pytest.raises(AttributeError):
        bare.anything  # noqa: B018 - the lookup is the test


async def test_an_error_that_cannot_be_pickled_or_judged_is_still_answered():
    peer, _ = await linked_to()
    with pytest.raises(RuntimeError, match="Odd: odd"):
        await asyncio.wait_for(peer.call("odd", b""), 5)
    assert faults.kind(Odd()) is None  # a cause that is not an exception is not followed
    await peer.close()


async def test_a_call_queued_on_a_connection_that_ends_goes_through_ray_and_its_error_is_raised():
    """Never a hang: a call waiting to write when the connection ended is made
    through Ray, and what that raises (an OSError here) reaches the caller."""
    peer, handle = await linked_to()
    conn = peer.conn
    await conn.writing.acquire()
    queued = [asyncio.ensure_future(peer.call("refused", b"")) for _ in range(3)]
    await asyncio.sleep(0.05)
    peer._lost(conn, "test")
    conn.writing.release()
    for call in queued:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(call, 5)
    assert handle.via_ray == 3
    await peer.close()


def test_what_would_end_the_callers_task_or_loop_arrives_as_a_runtime_error():
    from ray import cloudpickle

    for odd in (SystemExit(3), KeyboardInterrupt(), StopIteration(), GeneratorExit()):
        assert isinstance(link._unpickled(cloudpickle.dumps(odd)), RuntimeError)
    assert isinstance(link._unpickled(b"not a pickle"), RuntimeError)


async def test_a_link_to_a_peer_ray_no_longer_reaches_is_dropped(monkeypatch):
    """The peer's process lives on and serves the link, but Ray cannot reach it
    (its node's raylet is gone): the link is dropped, calls go through Ray, so it
    never serves beside the incarnation Ray makes elsewhere."""
    monkeypatch.setattr(link, "WATCH_S", 0.05)
    monkeypatch.setattr(link, "WATCH_WAIT_S", 0.2)
    peer, handle = await linked_to()
    conn = peer.conn
    assert (await peer.call("echo", b"x"))["n"] == 1 and peer.linked_calls == 1
    waiting = asyncio.ensure_future(peer.call("slow", b"a"))  # in flight when the link is dropped

    async def unreachable() -> bytes:
        await asyncio.sleep(3600)
        return b""

    handle.link_endpoint = Remote(unreachable)
    with pytest.raises(LinkLost, match="did not answer through Ray"):
        await asyncio.wait_for(waiting, 5)
    assert conn.lost and peer.conn is None


async def test_a_link_to_a_peer_made_again_is_dropped(monkeypatch):
    monkeypatch.setattr(link, "WATCH_S", 0.05)
    peer, handle = await linked_to()
    conn = peer.conn
    other = Served()  # Ray's new incarnation: another listener, another token
    handle.link_endpoint = Remote(other.link_endpoint)
    for _ in range(100):
        if conn.lost:
            break
        await asyncio.sleep(0.02)
    assert conn.lost
    assert await peer.connect() is not None and peer.conn is not conn  # to the new one
    assert (await peer.call("echo", b"y"))["n"] == 1 and other.calls == 1
    await peer.close()


async def test_close_answers_what_waits_and_nothing_reconnects():
    peer, handle = await linked_to()
    waiting = asyncio.ensure_future(peer.call("slow", b"a"))
    await asyncio.sleep(0.05)
    await peer.close()
    with pytest.raises(LinkLost, match="closed"):
        await asyncio.wait_for(waiting, 5)
    assert (await peer.call("echo", b"x"))["n"] == 1 and handle.via_ray == 1  # through Ray from now on
    assert await peer.connect() is None and peer.connecting is None


async def test_a_caller_cancelled_while_writing_leaves_no_entry():
    peer, _ = await linked_to()
    conn = peer.conn
    stuck = asyncio.Event()

    async def full_buffer() -> None:  # the peer is not reading: drain() waits
        await stuck.wait()

    conn.writer.drain = full_buffer
    call = asyncio.ensure_future(peer.call("echo", b"x"))
    await asyncio.sleep(0.02)
    assert len(conn.calls) == 1  # registered, written, draining
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert conn.calls == {}
    await peer.close()
