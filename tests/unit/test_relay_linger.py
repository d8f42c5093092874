"""The status events' relay (actors/event_sender.py): woken by a NOTIFY, it waits
``events.relay_linger_s`` so the commits that follow share its round; idle, it looks
again every ``relay_idle_s``; under a backlog its rounds follow without a wait."""

from __future__ import annotations

import asyncio

import msgspec

from actors.event_sender import EventSender
from infra.config import Config


def sender(linger: float, idle: float = 30.0, batch: int = 1000) -> tuple[EventSender, list[float]]:
    es = EventSender.__new__(EventSender)  # only what the relay loop uses
    cfg = Config()
    es.cfg = msgspec.structs.replace(cfg, events=msgspec.structs.replace(
        cfg.events, relay_linger_s=linger, relay_idle_s=idle, relay_batch=batch))
    es.wake, es.stats, es.last_round_at = asyncio.Event(), {}, 0.0
    rounds: list[float] = []
    backlog = [2500]  # outbox rows waiting

    async def listen():
        return None

    async def relay_once():
        rounds.append(asyncio.get_running_loop().time())
        n = min(backlog[0], batch)
        backlog[0] -= n
        return n

    es._listen, es.relay_once = listen, relay_once
    return es, rounds


async def commits(es: EventSender, n: int, every_s: float) -> None:
    """``n`` commits' NOTIFYs, ``every_s`` apart."""
    for _ in range(n):
        await asyncio.sleep(every_s)
        es.wake.set()  # a Recorder commit's NOTIFY


async def until(cond, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.005)


def test_a_backlog_goes_round_after_round_and_then_commits_share_rounds():
    async def run():
        es, rounds = sender(linger=1.0)
        loop = asyncio.create_task(es._relay_loop())
        await until(lambda: len(rounds) == 3)  # 1000 + 1000 + 500 without a wait, then it waits
        await commits(es, 10, 0.01)  # ten commits well inside the linger
        await until(lambda: len(rounds) == 4)
        await asyncio.sleep(0.1)
        loop.cancel()
        return rounds

    rounds = asyncio.run(run())
    assert len(rounds) == 4  # the ten in one round, a linger after the first woke it
    assert rounds[3] - rounds[2] >= 1.0


def test_without_a_linger_each_commit_gets_a_round():
    async def run():
        es, rounds = sender(linger=0.0)
        loop = asyncio.create_task(es._relay_loop())
        await until(lambda: len(rounds) == 3)
        for i in range(5):
            es.wake.set()
            await until(lambda i=i: len(rounds) == 4 + i)
        loop.cancel()
        return rounds

    assert len(asyncio.run(run())) == 3 + 5
