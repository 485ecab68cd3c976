"""`python -m service` as a real uvicorn process: HTTP on a socket, JSON logs, SIGTERM drain."""
from __future__ import annotations

import http.client
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .conftest import service_process


@pytest.fixture
def server(tmp_path):
    log_path = tmp_path / "server.log"
    with service_process(log_path, CATFACE_DRAIN_S="1.5") as (process, base):
        yield process, base, log_path


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


def test_the_connection_limit_fits_under_the_open_file_limit(monkeypatch):
    """A container that starts at a soft limit of 1024 open files: the service raises it to the
    hard limit, and where even that is short it lowers max_connections, so that a flood meets the
    connection limit (service/http11.py) rather than accept() failing for every client."""
    import resource

    from service.__main__ import FILES_BESIDE_CONNECTIONS, connections_that_fit

    limits = {"now": (1024, 1024)}
    monkeypatch.setattr(resource, "getrlimit", lambda _: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: limits.update(now=value))
    assert connections_that_fit(2048) == 1024 - FILES_BESIDE_CONNECTIONS
    limits["now"] = (1024, 65536)
    assert connections_that_fit(2048) == 2048 and limits["now"] == (65536, 65536)
