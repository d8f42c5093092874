"""Write locks by user: writers of the same user in turn, of other users at
once, overlapping sets in any order without deadlock, nothing kept afterwards."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings, strategies as st

from actors.keyed_lock import KeyedLock


def test_writers_of_other_users_do_not_wait_and_of_the_same_user_do():
    async def main():
        locks, log = KeyedLock(), []

        async def write(name, keys, hold_s):
            async with locks.hold(keys):
                log.append(f"{name}+")
                await asyncio.sleep(hold_s)
                log.append(f"{name}-")

        await asyncio.gather(write("a", ["u1"], 0.05), write("b", ["u2"], 0.0), write("c", ["u1"], 0.0))
        return log, len(locks)

    log, left = asyncio.run(main())
    assert log.index("b-") < log.index("a-")  # u2's writer did not wait for u1's
    assert log.index("a-") < log.index("c+")  # u1's second writer did
    assert left == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4), min_size=2, max_size=8))
def test_overlapping_writers_in_any_order_all_finish_one_at_a_time_per_key(sets):
    async def main():
        locks, holding = KeyedLock(), set()

        async def write(keys):
            async with locks.hold(reversed(keys)):  # callers' order does not matter
                assert not holding & set(keys)
                holding.update(keys)
                await asyncio.sleep(0)
                holding.difference_update(keys)

        await asyncio.wait_for(asyncio.gather(*(write(k) for k in sets)), 5)
        return len(locks)

    assert asyncio.run(main()) == 0


def test_a_cancelled_waiter_leaves_nothing_behind():
    async def main():
        locks = KeyedLock()
        async with locks.hold(["u"]):
            waiter = asyncio.create_task(_take(locks, ["u", "v"]))
            await asyncio.sleep(0.01)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        return len(locks)

    assert asyncio.run(main()) == 0


async def _take(locks: KeyedLock, keys: list[str]) -> None:
    async with locks.hold(keys):
        pass
