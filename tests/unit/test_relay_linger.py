"""The status events' relay (actors/event_sender.py): woken by a NOTIFY, it waits
``events.relay_linger_s`` so the commits that follow share its round; idle, it looks
again every ``relay_idle_s``; under a backlog its rounds follow without a wait; a
commit that lands while a round publishes starts the next round."""

from __future__ import annotations

import asyncio

import msgspec

from actors.event_sender import EventSender
from infra.config import Config


class Outbox:
    """The rows waiting, and each round's: what the fake ``relay_once`` publishes."""

    def __init__(self, rows: int):
        self.rows, self.rounds = rows, []  # rounds: (when, rows published)


def sender(outbox: Outbox, linger: float, idle: float = 30.0, batch: int = 1000, during=None) -> EventSender:
    es = EventSender.__new__(EventSender)  # only what the relay loop uses
    cfg = Config()
    es.cfg = msgspec.structs.replace(cfg, events=msgspec.structs.replace(
        cfg.events, relay_linger_s=linger, relay_idle_s=idle, relay_batch=batch))
    es.wake, es.stats, es.last_round_at = asyncio.Event(), {}, 0.0

    async def listen():
        return None

    async def relay_once():
        n = min(outbox.rows, batch)  # read
        outbox.rows -= n
        if during is not None:
            await during(len(outbox.rounds))  # while it publishes
        outbox.rounds.append((asyncio.get_running_loop().time(), n))
        return n

    es._listen, es.relay_once = listen, relay_once
    return es


async def until(cond, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.005)


async def commit(es: EventSender, outbox: Outbox, rows: int = 1) -> None:
    outbox.rows += rows
    es.wake.set()  # its NOTIFY


def test_a_backlog_goes_round_after_round_and_then_commits_share_rounds():
    async def run():
        outbox = Outbox(2500)
        es = sender(outbox, linger=0.3)
        loop = asyncio.create_task(es._relay_loop())
        await until(lambda: len(outbox.rounds) == 3)  # 1000 + 1000 + 500 without a wait, then it waits
        for _ in range(10):  # ten commits well inside the linger
            await asyncio.sleep(0.01)
            await commit(es, outbox)
        await until(lambda: len(outbox.rounds) == 4)
        loop.cancel()
        return outbox.rounds

    rounds = asyncio.run(run())
    assert [n for _, n in rounds] == [1000, 1000, 500, 10]  # the ten in one round...
    assert rounds[3][0] - rounds[2][0] >= 0.3  # ...a linger after the first woke it


def test_without_a_linger_each_commit_gets_a_round():
    async def run():
        outbox = Outbox(0)
        es = sender(outbox, linger=0.0)
        loop = asyncio.create_task(es._relay_loop())
        await until(lambda: len(outbox.rounds) == 1)
        for i in range(5):
            await commit(es, outbox)
            await until(lambda i=i: len(outbox.rounds) == 2 + i)
        loop.cancel()
        return outbox.rounds

    assert [n for _, n in asyncio.run(run())] == [0, 1, 1, 1, 1, 1]


def test_idle_it_looks_again_without_a_notify():
    async def run():
        outbox = Outbox(0)
        loop = asyncio.create_task(sender(outbox, linger=10.0, idle=0.05)._relay_loop())
        await until(lambda: len(outbox.rounds) >= 4)  # no linger on an idle look
        loop.cancel()

    asyncio.run(run())


def test_a_commit_while_a_round_publishes_starts_the_next_round_not_the_idle_poll():
    async def run():
        outbox = Outbox(0)
        holder: dict = {}

        async def during(i):
            if i == 1:  # the second round has read; a commit lands while it publishes
                await commit(holder["es"], outbox, 7)

        es = holder["es"] = sender(outbox, linger=0.01, idle=30.0, during=during)
        loop = asyncio.create_task(es._relay_loop())
        await until(lambda: len(outbox.rounds) == 1)
        await commit(es, outbox, 2)
        await until(lambda: len(outbox.rounds) == 3, timeout_s=5.0)  # not 30 s later
        loop.cancel()
        return outbox.rounds

    assert [n for _, n in asyncio.run(run())] == [0, 2, 7]
