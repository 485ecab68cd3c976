"""`python -m service` as a real uvicorn process: HTTP on a socket, JSON logs, SIGTERM drain."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "CATFACE_THREADS": "1", "CATFACE_MAX_BATCH_SIZE": "4",
           "CATFACE_DRAIN_S": "1.5"}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not ready in 90 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield process, base, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_real_server_answers_drains_on_sigterm_and_logs_json(server, cat_bytes):
    process, base, log_path = server
    with httpx.Client(base_url=base, timeout=30) as client:
        answer = client.post("/detect", files={"image": ("cat.jpg", cat_bytes[0], "image/jpeg")},
                             headers={"x-request-id": "uvicorn-test-1"})
        assert answer.status_code == 200 and answer.json()["faces"]
        assert answer.headers["x-request-id"] == "uvicorn-test-1"
        head = client.head("/models/catlandmarks.onnx")
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0

    # A path with dot segments, sent exactly as written.
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    connection.request("GET", "/models/../models/manifest.json")
    response = connection.getresponse()
    assert response.status == 404 and response.getheader("content-type").startswith("application/problem+json")
    connection.close()

    # SIGTERM while requests are running: they finish, /readyz says 503, the process exits 0.
    def detect(data):
        with httpx.Client(base_url=base, timeout=60) as c:
            return c.post("/detect", files={"image": ("cat.jpg", data, "image/jpeg")}).status_code

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(detect, data) for data in cat_bytes]
        time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        readiness = httpx.get(base + "/readyz", timeout=5)
        assert readiness.status_code == 503 and readiness.json()["type"].endswith(":draining")
        assert httpx.get(base + "/livez", timeout=5).status_code == 200
        late = detect(cat_bytes[0])  # within the drain delay the service still serves
        assert [f.result(60) for f in running] == [200] * len(cat_bytes) and late == 200
    assert process.wait(30) == 0

    lines = log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    messages = [r["msg"] for r in records]
    assert "ready" in messages and "draining" in messages and "stopped" in messages
    mine = [r for r in records if r.get("request_id") == "uvicorn-test-1"]
    assert mine and mine[-1]["status"] == 200 and mine[-1]["path"] == "/detect"
