"""A shared capacity that requests wait for: the in-flight analysis slots, the bytes decodes may
fill together. Waiting is event-driven: a waiter sleeps until something leaves, then checks again.
(Both used to poll every 5 ms: each waiting request woke the event loop 200 times a second, CPU
taken from honest requests exactly when the server is busiest.)"""
from __future__ import annotations

import asyncio


class Room:
    """`capacity` units shared by everyone inside. `enter(n)` waits until n more fit, or until the
    room is empty: one share larger than the whole room still gets in, alone (a caller refuses
    such shares beforehand when it must). `leave(n)` gives them back and wakes the waiters, who
    check again in the order they began to wait (oldest first). Waiters are not a queue: a small
    share can pass a large one that does not fit yet. Wrap `enter` in a timeout to bound the
    wait; a waiter cancelled there holds nothing. Single event loop, no threads: call `leave`
    from the loop."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._waiting: dict[asyncio.Future[None], None] = {}  # (a dict: ordered, oldest first)

    def fits(self, n: int) -> bool:
        return not self.used or self.used + n <= self.capacity

    async def enter(self, n: int) -> None:
        while not self.fits(n):
            woken = asyncio.get_running_loop().create_future()
            self._waiting[woken] = None
            try:
                await woken
            finally:
                self._waiting.pop(woken, None)
        self.used += n

    def leave(self, n: int) -> None:
        self.used -= n
        for woken in self._waiting:
            if not woken.done():
                woken.set_result(None)
        self._waiting.clear()
