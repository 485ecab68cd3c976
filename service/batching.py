"""The batching engine: one bounded queue and one worker per model.

Callers `submit` a few rows (one photo, or the face crops of one photo) and await their own
rows of the outputs. The worker starts a batch when it holds `max_batch_size` rows or when the
oldest queued item has waited `max_wait` (so under load, when items queued while the previous
batch ran, it does not wait at all); the model never runs more than `max_batch_size` rows at
once. The model runs in the worker's own thread, never on the event loop. Items whose caller
has gone (cancelled: client disconnected or gave up) or whose deadline has passed are dropped
before the model sees them. A full queue refuses at once (`QueueFull`) instead of letting
latency pile up.

Nothing here knows about HTTP, Prometheus or ONNX: `run` is any callable from a batch array to
a list of output arrays with the same first dimension, and `observer` receives the numbers.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class Refused(Exception):
    """The batcher will not run this item. `slug` is the refusal's one name: the problem type
    (urn:catface:problem:<slug>) and the `reason` label of catface_rejections_total."""
    slug = "refused"


class QueueFull(Refused):
    slug = "queue-full"


class DeadlineExceeded(Refused):
    slug = "deadline-exceeded"


class ShuttingDown(Refused):
    slug = "shutting-down"


class Observer(Protocol):
    def queue_depth(self, depth: int) -> None: ...
    def dropped(self, reason: str) -> None: ...
    def batch(self, rows: int, waits: list[float], seconds: float) -> None: ...


class _Quiet:
    def queue_depth(self, depth): pass
    def dropped(self, reason): pass
    def batch(self, rows, waits, seconds): pass


@dataclass(eq=False)
class _Item:
    rows: np.ndarray
    future: asyncio.Future
    deadline: float | None
    queued_at: float


class Batcher:
    def __init__(self, name: str, run: Callable[[np.ndarray], list[np.ndarray]], *, max_batch_size: int,
                 max_wait_s: float, queue_size: int, observer: Observer | None = None):
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self._run = run
        self._observer = observer or _Quiet()
        self._items: deque[_Item] = deque()
        self._arrived = asyncio.Event()
        self._closing = False
        # One thread per model: its batches run one after another, while other models run beside it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self.name}")

    async def submit(self, rows: np.ndarray, deadline: float | None = None) -> list[np.ndarray]:
        """This caller's rows of every output. `deadline` is in event-loop time."""
        loop = asyncio.get_running_loop()
        if self._closing:
            raise ShuttingDown(f"the {self.name} model is shutting down")
        if deadline is not None and loop.time() >= deadline:
            raise DeadlineExceeded("the request deadline passed before inference")
        if len(self._items) >= self.queue_size:
            raise QueueFull(f"the {self.name} queue is full ({self.queue_size} waiting)")
        item = _Item(rows, loop.create_future(), deadline, loop.time())
        self._items.append(item)
        self._observer.queue_depth(len(self._items))
        self._arrived.set()
        # If this caller is cancelled while waiting, asyncio cancels item.future too, and the
        # worker skips the item: that is how a gone client never reaches the model.
        return await item.future

    async def close(self) -> None:
        """Refuse new items, finish every queued one (without waiting for more), stop."""
        self._closing = True
        self._arrived.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    # ---- worker ------------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            try:
                await self._run_batch(batch)
            except Exception as exc:  # never let one bad batch stop the worker; its callers get the error
                log.exception("batch of %s failed", self.name)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    async def _next_batch(self) -> list[_Item] | None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_dead(loop.time())
            if not self._items:
                if self._closing:
                    return None
                self._arrived.clear()
                await self._arrived.wait()
                continue
            rows = sum(len(item.rows) for item in self._items)
            wait = self._items[0].queued_at + self.max_wait_s - loop.time()
            if rows >= self.max_batch_size or wait <= 0 or self._closing:
                return self._take()
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except TimeoutError:
                pass

    def _drop_dead(self, now: float) -> None:
        """Remove items nobody waits for or that are already late, wherever they are in the queue."""
        live = self._alive(self._items, now)
        if len(live) != len(self._items):
            self._items = deque(live)
            self._observer.queue_depth(len(live))

    def _alive(self, items, now: float) -> list[_Item]:
        live = []
        for item in items:
            if item.future.done():  # cancelled by its caller
                self._observer.dropped("cancelled")
            elif item.deadline is not None and now >= item.deadline:
                item.future.set_exception(DeadlineExceeded("the request deadline passed in the queue"))
                self._observer.dropped("deadline")
            else:
                live.append(item)
        return live

    def _take(self) -> list[_Item]:
        """Items from the front, up to max_batch_size rows, all of the first item's row shape (a
        model with a dynamic input size: photos at their own aspect ratio); items of other shapes
        keep their places for the next batches. An item is never shared out between batches, so
        one larger than the limit (a photo with many faces) runs alone (in slices:
        _run_in_slices)."""
        batch: list[_Item] = []
        others: list[_Item] = []
        rows = 0
        shape = self._items[0].rows.shape[1:] if self._items else None
        while self._items:
            if self._items[0].rows.shape[1:] != shape:
                others.append(self._items.popleft())
                continue
            if batch and rows + len(self._items[0].rows) > self.max_batch_size:
                break
            item = self._items.popleft()
            batch.append(item)
            rows += len(item.rows)
        self._items.extendleft(reversed(others))
        self._observer.queue_depth(len(self._items))
        return batch

    def _run_in_slices(self, inputs: np.ndarray) -> list[np.ndarray]:
        """The model never sees more than max_batch_size rows in one call: onnxruntime's arena keeps
        the memory of its largest call, so one photo of 20 faces run whole would hold the server
        far above what the shipped batch size measured (and its container's limit)."""
        step = self.max_batch_size
        parts = [self._run(inputs[i:i + step]) for i in range(0, len(inputs), step)]
        return parts[0] if len(parts) == 1 else [np.concatenate(outs) for outs in zip(*parts)]

    async def _run_batch(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        live = self._alive(batch, started)  # the last look: callers may have left while the batch formed
        if not live:
            return
        inputs = np.concatenate([item.rows for item in live])
        outputs = await loop.run_in_executor(self._executor, self._run_in_slices, inputs)
        seconds = loop.time() - started
        self._observer.batch(len(inputs), [started - item.queued_at for item in live], seconds)
        start = 0
        for item in live:
            stop = start + len(item.rows)
            if not item.future.done():  # the caller may have left during the run
                item.future.set_result([out[start:stop] for out in outputs])
            start = stop
