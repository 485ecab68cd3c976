"""The batching engine on a tiny real ONNX graph (Y = 2X, Z = X + 1, built here with `onnx`),
wrapped so the test sees every batch the model ran and can hold the model busy."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from service.batching import Batcher, DeadlineExceeded, QueueFull, ShuttingDown  # noqa: E402


def tiny_session() -> ort.InferenceSession:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("Mul", ["x", "two"], ["y"]), helper.make_node("Add", ["x", "one"], ["z"])]
    graph = helper.make_graph(nodes, "tiny", [x], [y, z], initializer=[two, one])
    # IR version pinned: the onnx package may be newer than what onnxruntime reads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class Model:
    """Runs the tiny graph, records each batch, and can be held (the thread waits on `gate`)."""

    def __init__(self):
        self.session = tiny_session()
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(batch.copy())
        return self.session.run(["y", "z"], {"x": batch})

    def seen(self) -> set[float]:
        return {float(v) for b in self.batches for v in b[:, 0]}


class Recorder:
    """The batching.Observer numbers, kept in lists."""

    def __init__(self):
        self.drops, self.sizes, self.depths = [], [], []

    def queue_depth(self, depth):
        self.depths.append(depth)

    def dropped(self, reason):
        self.drops.append(reason)

    def batch(self, rows, waits, seconds):
        self.sizes.append(rows)


def rows(tag: int, n: int = 1) -> np.ndarray:
    """n rows whose first value identifies the caller."""
    return np.array([[tag, tag * 10 + i] for i in range(n)], np.float32)


def make(model, **kw) -> tuple[Batcher, Recorder]:
    recorder = Recorder()
    settings = dict(max_batch_size=8, max_wait_s=0.05, queue_size=64)
    settings.update(kw)
    return Batcher("tiny", model, observer=recorder, **settings), recorder


def test_each_caller_gets_its_own_rows_of_every_output():
    async def scenario():
        model = Model()
        batcher, recorder = make(model, max_batch_size=8, max_wait_s=0.05)
        batcher.start()
        sizes = [1, 3, 2, 1, 4, 1, 2, 5, 1, 1]
        results = await asyncio.gather(*(batcher.submit(rows(tag, n)) for tag, n in enumerate(sizes)))
        await batcher.close()
        return model, recorder, sizes, results

    model, recorder, sizes, results = asyncio.run(scenario())
    for tag, (n, (y, z)) in enumerate(zip(sizes, results)):
        assert np.array_equal(y, rows(tag, n) * 2) and np.array_equal(z, rows(tag, n) + 1)
    assert len(model.batches) < len(sizes), "concurrent callers shared batches"
    assert all(len(b) <= 8 for b in model.batches)
    assert sum(recorder.sizes) == sum(sizes)
    # Items are batched in arrival order and never split.
    order = [float(v) for b in model.batches for v in b[:, 0]]
    assert order == sorted(order)


def test_an_item_larger_than_the_batch_runs_alone_in_slices_and_comes_back_whole():
    # The model's memory is bounded by its largest call: a photo of many faces must not make one.
    async def scenario():
        model = Model()
        batcher, recorder = make(model, max_batch_size=4)
        batcher.start()
        (y, z), other = await asyncio.gather(batcher.submit(rows(7, 9)), batcher.submit(rows(8, 1)))
        await batcher.close()
        return model, recorder, y, z, other

    model, recorder, y, z, other = asyncio.run(scenario())
    assert np.array_equal(y, rows(7, 9) * 2) and np.array_equal(z, rows(7, 9) + 1)
    assert np.array_equal(other[0], rows(8, 1) * 2)
    assert [len(b) for b in model.batches] == [4, 4, 1, 1]
    assert recorder.sizes == [9, 1], "the big item was one batch, the next caller's another"


def test_rows_of_different_shapes_never_share_a_batch_and_keep_their_order():
    # A model with a dynamic input size (photos at their own aspect ratio) gets one shape a call.
    class AnyWidth(list):  # y = 2x, z = x + 1 for any row width (the tiny graph's width is fixed)
        def __call__(self, batch):
            self.append(batch.copy())
            return [batch * 2, batch + 1]

    async def scenario():
        model = AnyWidth()
        batcher, _ = make(model, max_batch_size=8, max_wait_s=0.05)
        batcher.start()
        wide = lambda tag: np.concatenate([rows(tag), rows(tag)], axis=1)  # noqa: E731
        items = [rows(0), wide(1), rows(2), wide(3), rows(4)]
        results = await asyncio.gather(*(batcher.submit(x) for x in items))
        await batcher.close()
        return model, items, results

    model, items, results = asyncio.run(scenario())
    for x, (y, z) in zip(items, results):
        assert np.array_equal(y, x * 2) and np.array_equal(z, x + 1)
    assert sorted(b.shape[1] for b in model) == [2, 4]  # one batch of each shape
    assert [list(b[:, 0]) for b in model] == [[0, 2, 4], [1, 3]]


def test_wait_is_counted_from_the_oldest_item():
    async def scenario():
        model = Model()
        batcher, _ = make(model, max_batch_size=100, max_wait_s=0.4)
        batcher.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first = asyncio.ensure_future(batcher.submit(rows(1)))
        await asyncio.sleep(0.3)
        second = asyncio.ensure_future(batcher.submit(rows(2)))  # joins the batch the first one opened
        await asyncio.gather(first, second)
        elapsed = loop.time() - t0
        await batcher.close()
        return model, elapsed

    model, elapsed = asyncio.run(scenario())
    assert [len(b) for b in model.batches] == [2]
    # Counted from the oldest: ~0.4 s; from the newest it would be ~0.7 s.
    assert 0.38 <= elapsed < 0.6, "ran max_wait after the OLDEST item, not after the newest"


def test_a_full_batch_does_not_wait():
    async def scenario():
        model = Model()
        batcher, _ = make(model, max_batch_size=4, max_wait_s=5.0)
        batcher.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(batcher.submit(rows(t)) for t in range(4)))
        elapsed = time.perf_counter() - t0
        await batcher.close()
        return elapsed

    assert asyncio.run(scenario()) < 1.0


def test_full_queue_refuses_at_once():
    async def scenario():
        model = Model()
        model.gate.clear()  # the model is busy: nothing leaves the queue
        batcher, recorder = make(model, max_batch_size=1, max_wait_s=0, queue_size=3)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(rows(0)))
        while not model.entered.is_set():  # the first item is in the model, out of the queue
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(batcher.submit(rows(t))) for t in (1, 2, 3)]
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        with pytest.raises(QueueFull) as refusal:
            await batcher.submit(rows(4))
        assert refusal.value.slug == "queue-full"
        refused_in = time.perf_counter() - t0
        model.gate.set()
        results = await asyncio.gather(running, *queued)
        await batcher.close()
        return model, recorder, results, refused_in

    model, recorder, results, refused_in = asyncio.run(scenario())
    assert refused_in < 0.05
    assert [float(y[0, 0]) for y, _ in results] == [0, 2, 4, 6]
    assert 4.0 not in model.seen()


def test_cancelled_caller_is_dropped_before_the_model():
    async def scenario():
        model = Model()
        model.gate.clear()
        batcher, recorder = make(model, max_batch_size=1, max_wait_s=0)
        batcher.start()
        busy = asyncio.ensure_future(batcher.submit(rows(0)))
        while not model.entered.is_set():
            await asyncio.sleep(0.005)
        gone = asyncio.ensure_future(batcher.submit(rows(5)))    # waits in the queue...
        stays = asyncio.ensure_future(batcher.submit(rows(6)))
        await asyncio.sleep(0.01)
        gone.cancel()                                              # ...and its client leaves
        model.gate.set()
        await asyncio.gather(busy, stays)
        await batcher.close()
        return model, recorder, gone

    model, recorder, gone = asyncio.run(scenario())
    assert gone.cancelled()
    assert 5.0 not in model.seen() and {0.0, 6.0} <= model.seen()
    assert recorder.drops == ["cancelled"]


def test_item_past_its_deadline_is_dropped_before_the_model():
    async def scenario():
        model = Model()
        model.gate.clear()
        batcher, recorder = make(model, max_batch_size=1, max_wait_s=0)
        batcher.start()
        loop = asyncio.get_running_loop()
        busy = asyncio.ensure_future(batcher.submit(rows(0)))
        while not model.entered.is_set():
            await asyncio.sleep(0.005)
        late = asyncio.ensure_future(batcher.submit(rows(5), deadline=loop.time() + 0.05))
        await asyncio.sleep(0.1)  # the deadline passes while the model is busy
        model.gate.set()
        await busy
        with pytest.raises(DeadlineExceeded):
            await late
        with pytest.raises(DeadlineExceeded):  # already late: refused at the door
            await batcher.submit(rows(7), deadline=loop.time() - 1)
        await batcher.close()
        return model, recorder

    model, recorder = asyncio.run(scenario())
    assert model.seen() == {0.0}
    assert recorder.drops == ["deadline"]


def test_close_finishes_queued_work_then_refuses():
    async def scenario():
        model = Model()
        batcher, _ = make(model, max_batch_size=2, max_wait_s=10.0)  # would wait long for company
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(rows(t))) for t in range(5)]
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        await batcher.close()  # drains at once instead of waiting out max_wait
        drained_in = time.perf_counter() - t0
        with pytest.raises(ShuttingDown):
            await batcher.submit(rows(9))
        return [await p for p in pending], drained_in

    results, drained_in = asyncio.run(scenario())
    assert [float(y[0, 0]) for y, _ in results] == [0, 2, 4, 6, 8]
    assert drained_in < 2.0


def test_a_failing_batch_fails_its_callers_and_the_worker_lives_on():
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("onnxruntime failed")
        return [batch * 2]

    async def scenario():
        batcher = Batcher("flaky", flaky, max_batch_size=4, max_wait_s=0.01, queue_size=8)
        batcher.start()
        with pytest.raises(RuntimeError):
            await batcher.submit(rows(1))
        (y,) = await batcher.submit(rows(2))
        await batcher.close()
        return y

    assert np.array_equal(asyncio.run(scenario()), rows(2) * 2)
