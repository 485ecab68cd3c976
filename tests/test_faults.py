"""Faults, each against a real `python -m service` process on loopback: bad model files stop the
start-up with a clear message; clients that leave mid-upload or while queued cost no model time
(counted in /metrics); SIGTERM under load loses no accepted request."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from benchmarks.harness import (
    HOST,
    Connection,
    Server,
    free_port,
    metric,
    multipart,
    request_bytes,
    send_once,
    with_request_id,
)

from .conftest import MODELS, REPO

TEST_ENV = {"CATFACE_THREADS": "1", "CATFACE_IMAGE_THREADS": "2"}


# ---- model files -------------------------------------------------------------------------------
def _models_copy(tmp_path, change) -> os.PathLike:
    """models/ as symlinks in a temporary folder, with `change(folder)` applied to it."""
    folder = tmp_path / "models"
    folder.mkdir()
    for f in MODELS.iterdir():
        (folder / f.name).symlink_to(f)
    change(folder)
    return folder


def _missing(folder):
    (folder / "catlandmarks.onnx").unlink()


# The ONNX file the server runs for the detector (int8 or float: the manifest says).
SERVED_DETECTOR = next(m["file"] for m in json.loads((MODELS / "manifest.json").read_text())["models"]
                       if m["name"] == "catface" and m["format"] == "onnx")


def _corrupted(folder):
    target = folder / SERVED_DETECTOR
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only the sha256 can tell
    target.unlink()
    target.write_bytes(bytes(data))


@pytest.mark.parametrize("change, file, words", [
    (_missing, "catlandmarks.onnx", "missing"),
    (_corrupted, SERVED_DETECTOR, "does not match the manifest"),
])
def test_bad_model_file_stops_start_up_naming_the_file(tmp_path, change, file, words):
    models = _models_copy(tmp_path, change)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "service", "--host", HOST, "--port", str(port)], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO), "CATFACE_MODELS_DIR": str(models),
                                    **TEST_ENV},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode != 0
    records = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    plain = [r for r in records if r["level"] == "error" and r["msg"].startswith("cannot start:")]
    assert plain, output.decode()[-2000:]
    assert str(models / file) in plain[0]["msg"] and words in plain[0]["msg"]
    with pytest.raises(OSError):  # it never listened: no half-working server
        socket.create_connection((HOST, port), timeout=1).close()


# ---- clients that leave ------------------------------------------------------------------------
@pytest.fixture
def slow_server(tmp_path):
    """One photo per detector call, so that a backlog of photos forms a queue."""
    server = Server({**TEST_ENV, "CATFACE_MAX_BATCH_SIZE": "1", "CATFACE_MAX_WAIT_MS": "0",
                     "CATFACE_QUEUE_SIZE": "128", "CATFACE_MAX_INFLIGHT": "128"}, log_path=tmp_path / "server.log")
    yield server
    server.kill()


def _model_work(samples: dict) -> dict:
    return {model: (metric(samples, "catface_batch_size_sum", model=model),
                    metric(samples, "catface_inference_seconds_count", model=model))
            for model in ("catface", "catlandmarks", "catbreeds")}


def _left(samples: dict) -> float:
    return metric(samples, "catface_rejections_total", reason="client-closed-request")


def _wait_for(server: Server, condition, seconds: float = 20) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        samples = server.metrics()
        if condition(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def test_client_that_leaves_mid_upload_costs_no_model_time(slow_server, cat_bytes):
    body, content_type = multipart(cat_bytes[0])
    raw = request_bytes("POST", "/detect", body, content_type)
    with socket.create_connection((HOST, slow_server.port), timeout=10) as s:
        s.sendall(raw[: len(raw) // 2])  # headers and half of the photo
        time.sleep(0.3)
    samples = _wait_for(slow_server, lambda m: _left(m) >= 1)
    assert _left(samples) == 1
    assert all(rows == calls == 0 for rows, calls in _model_work(samples).values())
    # ...and the service is fine afterwards.
    answer = asyncio.run(send_once(slow_server.port, raw))
    assert answer[0] == 200 and json.loads(answer[2])["faces"]


def test_clients_that_leave_while_queued_cost_no_model_time(slow_server, cat_bytes):
    """40 photos queue for the detector one at a time; 4 more are queued behind them and their
    clients hang up. Exactly the 40 reach a model; the 4 are counted as dropped from the queue."""
    stayers, leavers = 40, 4
    port = slow_server.port
    raw = request_bytes("POST", "/detect", *multipart(cat_bytes[0]))

    async def scenario():
        staying = [asyncio.ensure_future(send_once(port, raw)) for _ in range(stayers)]
        metrics = lambda: asyncio.to_thread(slow_server.metrics)  # noqa: E731
        for _ in range(500):  # until the model has started on the backlog
            if metric(await metrics(), "catface_batch_size_count", model="catface") >= 1:
                break
            await asyncio.sleep(0.01)
        leaving = []
        for _ in range(leavers):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(raw)
            await writer.drain()
            leaving.append(writer)
        # Only when every photo still to run is queued do the leavers hang up: the stayers not yet
        # run, less the one in the model (the worker takes the next item in the same event-loop
        # step that counts a finished batch, so while there is a queue one is always running),
        # plus the leavers.
        queued = False
        for _ in range(500):
            m = await metrics()
            done = metric(m, "catface_batch_size_count", model="catface")
            if metric(m, "catface_queue_depth", model="catface") >= leavers + stayers - done - 1:
                queued = True
                break
            await asyncio.sleep(0.005)
        for writer in leaving:
            writer.close()
        answers = await asyncio.wait_for(asyncio.gather(*staying), 120)
        return queued, answers

    queued, answers = asyncio.run(scenario())
    assert queued, "the leavers' photos were never all seen in the queue (the backlog drained first)"
    assert [status for status, _, _ in answers] == [200] * stayers
    samples = _wait_for(slow_server, lambda m: _left(m) >= leavers)
    assert _left(samples) == leavers
    assert metric(samples, "catface_dropped_total", model="catface", reason="cancelled") == leavers
    rows, calls = _model_work(samples)["catface"]
    assert rows == calls == stayers, "only the photos of clients still there reached the detector"


# ---- SIGTERM under load ------------------------------------------------------------------------
def test_sigterm_under_load_loses_no_accepted_request(tmp_path, cat_bytes, dog_bytes):
    """Eight clients keep sending while the server gets SIGTERM, drains for 1 s and stops. Every
    request the app saw (its access log line, matched by X-Request-ID) was answered 200 and the
    client got that answer; the requests that got no answer never reached the app."""
    log_path = tmp_path / "server.log"
    server = Server({**TEST_ENV, "CATFACE_MAX_BATCH_SIZE": "4", "CATFACE_DRAIN_S": "1", "CATFACE_LOG_LEVEL": "info"},
                    log_path=log_path)
    photos = cat_bytes + dog_bytes
    sent: dict[str, tuple[int | None, float, float]] = {}  # id -> (status, start, end)
    stop_at = time.monotonic() + 60

    async def client(k: int):
        conn = Connection(server.port)
        while time.monotonic() < stop_at:
            rid = f"term-{k}-{uuid.uuid4().hex[:8]}"
            raw = with_request_id(request_bytes("POST", "/detect", *multipart(photos[len(sent) % len(photos)])), rid)
            start = time.monotonic()
            try:
                status = (await asyncio.wait_for(conn.send(raw), 30))[0]
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                sent[rid] = (None, start, time.monotonic())
                conn.close()
                if server.process.poll() is not None or term_at is not None and time.monotonic() - term_at > 1.5:
                    return  # refused: the server has stopped listening
                await asyncio.sleep(0.05)
                continue
            sent[rid] = (status, start, time.monotonic())
        conn.close()

    term_at = None

    async def scenario():
        nonlocal term_at
        clients = [asyncio.ensure_future(client(k)) for k in range(8)]
        await asyncio.sleep(2.0)
        term_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*clients), 90)

    try:
        asyncio.run(scenario())
        code = server.process.wait(30)
    finally:
        server.kill()
    assert code == 0
    seen = {}
    for line in log_path.read_text().splitlines():
        record = json.loads(line)
        if record.get("msg") == "request" and record.get("path") == "/detect":
            seen[record["request_id"]] = record["status"]
    assert seen and set(seen) <= set(sent)
    lost = {rid: (sent[rid][0], status) for rid, status in seen.items() if status != 200 or sent[rid][0] != 200}
    assert not lost, f"accepted requests not answered 200 (client status, server status): {lost}"
    assert all(status is None for rid, (status, _, _) in sent.items() if rid not in seen)
    across = [rid for rid, (status, start, end) in sent.items() if status == 200 and start < term_at < end]
    after = [rid for rid, (status, start, end) in sent.items() if status == 200 and start > term_at]
    assert across and after, "requests were running when SIGTERM came, and served during the drain"
