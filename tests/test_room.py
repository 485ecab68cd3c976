"""service.room: the waits for in-flight slots and decode bytes."""
from __future__ import annotations

import asyncio

from service.room import Room


def test_a_waiter_gets_in_when_a_share_leaves_and_not_before():
    async def main():
        room, order = Room(2), []
        await room.enter(2)

        async def wait_for(n, name):
            await room.enter(n)
            order.append(name)

        waiter = asyncio.ensure_future(wait_for(1, "waiter"))
        await asyncio.sleep(0.05)
        assert order == [] and room.used == 2
        room.leave(1)
        await asyncio.wait_for(waiter, 1)
        assert order == ["waiter"] and room.used == 2

    asyncio.run(main())


def test_a_share_larger_than_the_room_gets_in_alone():
    async def main():
        room = Room(10)
        await room.enter(1)
        big = asyncio.ensure_future(room.enter(25))
        await asyncio.sleep(0.02)
        assert not big.done()
        room.leave(1)
        await asyncio.wait_for(big, 1)
        assert room.used == 25

    asyncio.run(main())


def test_a_waiter_that_times_out_holds_nothing_and_others_still_get_in():
    async def main():
        room = Room(1)
        await room.enter(1)
        try:
            async with asyncio.timeout(0.02):
                await room.enter(1)
        except TimeoutError:
            pass
        assert room.used == 1
        other = asyncio.ensure_future(room.enter(1))
        await asyncio.sleep(0)
        room.leave(1)
        await asyncio.wait_for(other, 1)
        assert room.used == 1

    asyncio.run(main())


def test_many_waiters_sleep_until_woken():
    """Waiting costs nothing while nothing leaves: the event loop has no timers to run (the
    5 ms poll this replaced woke each waiter 200 times a second)."""
    async def main():
        room = Room(1)
        await room.enter(1)
        waiters = [asyncio.ensure_future(room.enter(1)) for _ in range(50)]
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        assert not loop._scheduled  # no timer is pending for any waiter
        for _ in waiters:
            room.leave(1)
            await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*waiters), 1)
        assert room.used == 1

    asyncio.run(main())


def test_the_oldest_waiter_that_fits_gets_in_first():
    async def main():
        room, order = Room(1), []
        await room.enter(1)

        async def wait_for(name):
            await room.enter(1)
            order.append(name)

        waiters = []
        for name in "abc":
            waiters.append(asyncio.ensure_future(wait_for(name)))
            await asyncio.sleep(0)
        for _ in waiters:
            room.leave(1)
            await asyncio.sleep(0.01)
        assert order == ["a", "b", "c"]

    asyncio.run(main())
