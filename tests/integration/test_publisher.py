"""infra.streams.Publisher against a real JetStream: batches stored and
answered per message, duplicates told apart, refusals raised as nats-py's
errors, and a batch nobody answers timing out without leaving anything behind."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.js.api import DiscardPolicy, StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

from infra import streams

pytestmark = pytest.mark.integration


@pytest.fixture
async def stream(nats_url):
    name = "TPUB" + uuid.uuid4().hex[:8].upper()
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"], duplicate_window=60))
    try:
        yield nc, js, name
    finally:
        await js.delete_stream(name)
        await nc.close()


def batch(name: str, ids: list[str]) -> list[tuple[str, bytes, dict[str, str]]]:
    return [(f"{name.lower()}.x.{i % 3}", f"body {i}".encode(), {"Nats-Msg-Id": mid}) for i, mid in enumerate(ids)]


async def test_a_batch_is_stored_once_and_a_repeat_is_answered_as_duplicates(stream):
    nc, js, name = stream
    pub = streams.Publisher(nc)
    ids = [str(uuid.uuid4()) for _ in range(2500)]
    assert await pub.publish(batch(name, ids), 10) == [False] * 2500
    again = ids[:10] + [str(uuid.uuid4())]  # ten already stored, one new
    assert await pub.publish(batch(name, again), 10) == [True] * 10 + [False]
    assert (await js.stream_info(name)).state.messages == 2501
    msg = await js.get_msg(name, 1)
    assert msg.data == b"body 0" and msg.headers["Nats-Msg-Id"] == ids[0]
    assert pub._batches == {}
    assert await pub.publish([], 1) == []


async def test_concurrent_batches_get_their_own_answers(stream):
    nc, js, name = stream
    pub = streams.Publisher(nc)
    known = [str(uuid.uuid4()) for _ in range(50)]
    await pub.publish(batch(name, known), 10)
    fresh = [[str(uuid.uuid4()) for _ in range(300)] for _ in range(4)]
    answers = await asyncio.gather(pub.publish(batch(name, known), 10),
                                   *(pub.publish(batch(name, ids), 10) for ids in fresh))
    assert answers[0] == [True] * 50
    assert all(a == [False] * 300 for a in answers[1:])
    assert (await js.stream_info(name)).state.messages == 50 + 1200


async def test_a_full_stream_is_raised_as_jetstreams_error(nats_url):
    name = "TPUBFULL" + uuid.uuid4().hex[:8].upper()
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"], max_msgs=3,
                                     discard=DiscardPolicy.NEW))
    try:
        pub = streams.Publisher(nc)
        with pytest.raises(APIError) as refused:
            await pub.publish(batch(name, [str(uuid.uuid4()) for _ in range(5)]), 10)
        assert streams.is_stream_full(refused.value)
        assert (await js.stream_info(name)).state.messages == 3
        assert pub._batches == {}
    finally:
        await js.delete_stream(name)
        await nc.close()


async def test_a_subject_no_stream_takes_is_refused_at_once(nats_url):
    nc = await nats.connect(nats_url)
    try:
        with pytest.raises(NoStreamResponseError):
            await streams.Publisher(nc).publish([(f"nostream{uuid.uuid4().hex}.x", b"x", None)], 10)
    finally:
        await nc.close()


async def test_a_batch_nobody_answers_times_out_and_late_answers_are_dropped(nats_url):
    nc, other = await nats.connect(nats_url), await nats.connect(nats_url)
    subject = f"silent{uuid.uuid4().hex}"
    taken: list = []

    async def keep(msg):  # a responder that answers only when told to
        taken.append(msg)

    await other.subscribe(subject, cb=keep)
    await other.flush()
    try:
        pub = streams.Publisher(nc)
        with pytest.raises(TimeoutError, match="2 of 2 publishes not acknowledged"):
            await pub.publish([(subject, b"a", None), (subject, b"b", None)], 0.5)
        assert pub._batches == {} and len(taken) == 2
        await other.publish(taken[0].reply, b'{"stream": "S", "seq": 1}')  # too late: nobody waits
        await other.flush()
        task = asyncio.create_task(pub.publish([(subject, b"c", None)], 30))
        while len(taken) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pub._batches == {}
    finally:
        await other.close()
        await nc.close()
