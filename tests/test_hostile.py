"""What a hostile or careless client can do to a real `python -m service` beyond the attacks of
test_attacks.py: HTTP-level tricks, headers it should not be able to steer, odd uploads, and a
SIGTERM while the worst in-limit decode runs."""
from __future__ import annotations

import json
import select
import signal
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from benchmarks import attacks, harness

from .conftest import CATS, encode, photo, service_process

HEAD_TIMEOUT_S = 2.0  # this module's server's (shipped: 10 s)
MAX_CONNECTIONS = 32  # this module's server's (shipped: 2048)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    log_path = folder / "server.log"
    # A temporary directory that does not exist: any upload spooled to disk would fail (500).
    with service_process(log_path, TMPDIR=str(folder / "no-such-dir"), CATFACE_HEAD_TIMEOUT_S=str(HEAD_TIMEOUT_S),
                         CATFACE_MAX_CONNECTIONS=str(MAX_CONNECTIONS)) as (process, base):
        yield process, base, log_path


def raw_exchange(base: str, request: bytes) -> tuple[bytes, bool]:
    """Send raw bytes; return everything the server sent and whether it then closed the connection."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        s.settimeout(3)
        try:
            while chunk := s.recv(65536):
                data += chunk
            closed = True
        except TimeoutError:
            closed = False
    return data, closed


def test_html_everywhere_carries_the_security_headers(server):
    _, base, _ = server
    for path in ("/", "/static/index.html", "/docs"):
        answer = httpx.get(base + path, timeout=10)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html"), path
        csp = answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and answer.headers["x-content-type-options"] == "nosniff", path


def test_api_docs_load_nothing_from_elsewhere(server):
    _, base, _ = server
    page = httpx.get(base + "/docs", timeout=10).text
    assert "https://" not in page and "http://" not in page  # no CDN: every asset is ours
    assert httpx.get(base + "/docs/assets/swagger-ui-bundle.js", timeout=10).status_code == 200
    assert httpx.get(base + "/docs/assets/swagger-ui.css", timeout=10).status_code == 200


def test_model_links_do_not_come_from_the_host_header(server):
    _, base, _ = server
    models = httpx.get(base + "/models", headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example",
                                                  "X-Forwarded-Proto": "https"}, timeout=10).json()["models"]
    assert models and all(m["url"] == "/models/" + m["file"] for m in models)


def test_forwarded_client_address_is_not_believed_by_default(server):
    _, base, log_path = server
    httpx.get(base + "/no-such-page", headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "fwd-check"},
              timeout=10)
    time.sleep(0.3)
    record = [json.loads(line) for line in log_path.read_text().splitlines() if "fwd-check" in line][-1]
    assert record["client"] == "127.0.0.1"


def test_both_length_headers_are_refused_and_the_connection_closed(server):
    _, base, _ = server
    body = b"0\r\n\r\n"
    request = (b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 5\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + body)
    data, closed = raw_exchange(base, request)
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/problem+json" in head
    assert json.loads(payload)["type"].endswith(":ambiguous-length")
    assert closed


def test_malformed_http_gets_problem_json(server):
    _, base, _ = server
    data, closed = raw_exchange(base, b"GET /livez HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/problem+json" in head
    assert json.loads(payload)["status"] == 400 and closed


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=HEAD_TIMEOUT_S + 5)


def _rejections(base: str, reason: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    return harness.metric(harness.parse_metrics(text), "catface_rejections_total", reason=reason)


def _read_until_closed(s: socket.socket) -> tuple[bytes, float]:
    started, data = time.monotonic(), b""
    while chunk := s.recv(65536):
        data += chunk
    return data, time.monotonic() - started


def test_a_head_trickled_in_is_cut_off_with_a_408_problem(server):
    """Slowloris: a client that never finishes its request line and headers must not hold its
    connection for ever (uvicorn alone only times out idle keep-alive connections)."""
    _, base, _ = server
    with _connect(base) as s:
        s.sendall(b"POST /detect HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for _ in range(int(HEAD_TIMEOUT_S) + 3):  # a byte a second until answered, past the deadline
            if select.select([s], [], [], 1.0)[0]:
                break
            s.sendall(b"a")
        data, _ = _read_until_closed(s)
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"application/problem+json" in head
    assert json.loads(payload)["type"].endswith(":head-timeout")
    assert _rejections(base, "head-timeout") >= 1  # operators see it in /metrics


def test_a_client_still_sending_when_its_head_times_out_reads_the_408(server):
    """The 408 goes out while the client may still be sending: a plain close with its bytes unread
    would reset the connection, and the reset can reach the client before it reads the answer."""
    _, base, _ = server
    with _connect(base) as s:
        s.sendall(b"POST /detect HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        deadline = time.monotonic() + HEAD_TIMEOUT_S + 0.5  # on past the 408, within the server's linger
        while time.monotonic() < deadline:
            s.sendall(b"a")
            time.sleep(0.02)
        data, _ = _read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 408")


def test_the_head_deadline_starts_again_after_each_answer_on_a_connection(server):
    _, base, _ = server
    with _connect(base) as s:
        time.sleep(HEAD_TIMEOUT_S / 2)
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")  # in time: answered, connection kept
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += s.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
        length = int(lengths[0])
        while len(body) < length:
            body += s.recv(65536)
        assert head.startswith(b"HTTP/1.1 200")
        time.sleep(HEAD_TIMEOUT_S * 0.75)  # a second head may start late within its own deadline
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # ... but never ends
        data, waited = _read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 408") and waited <= HEAD_TIMEOUT_S + 1


def test_a_silent_connection_is_closed_without_an_answer(server):
    _, base, _ = server
    with _connect(base) as s:
        data, waited = _read_until_closed(s)
    assert data == b"" and waited <= HEAD_TIMEOUT_S + 1


def test_past_the_limit_the_connection_longest_without_a_request_gives_way(server):
    """A flood of held connections costs memory even within the head deadline, so only
    max_connections stay open; but a new client must still get in: the connection that has
    waited longest for its request head is closed to make room, and the newcomer is served."""
    _, base, _ = server
    before = _rejections(base, "too-many-connections")
    held = [_connect(base) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)  # accepted by the server's loop
        with _connect(base) as s:
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data, _ = _read_until_closed(s)
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        held[0].settimeout(2)
        assert held[0].recv(1) == b""  # closed: it had sent nothing, so it hears nothing
        assert not select.select(held[1:], [], [], 0.2)[0]  # the others are still open and waiting
        assert _rejections(base, "too-many-connections") > before
    finally:
        for h in held:
            h.close()


def test_connections_lingering_after_their_408_make_room_for_a_newcomer(server):
    """A slowloris flood timed out together lingers for a second after its 408s (so each client
    can read its answer): a new client in that second must still get in, not a 503."""
    _, base, _ = server
    held = [_connect(base) for _ in range(MAX_CONNECTIONS)]
    try:
        for h in held:
            h.sendall(b"GET /livez HTTP/1.1\r\nX-Slow: ")  # a head begun, never finished
        time.sleep(HEAD_TIMEOUT_S + 0.3)  # every one answered 408 and lingering
        with _connect(base) as s:
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data, _ = _read_until_closed(s)
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
    finally:
        for h in held:
            h.close()


def test_a_connection_past_the_limit_gets_a_503_problem_when_every_one_has_a_request(server):
    """When every open connection is busy with a request (here: uploading a body), none can make
    room: a new connection is refused at once, readably, and served again when they go."""
    _, base, _ = server
    head = b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
    held = [_connect(base) for _ in range(MAX_CONNECTIONS)]
    try:
        for h in held:
            h.sendall(head + b"\xff\xd8")
        time.sleep(0.3)
        with _connect(base) as s:
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            data, _ = _read_until_closed(s)
    finally:
        for h in held:
            h.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"application/problem+json" in head and b"retry-after: " in head
    assert json.loads(payload)["type"].endswith(":too-many-connections")
    time.sleep(0.3)
    assert httpx.get(base + "/livez", timeout=10).status_code == 200


def _png_with_bad_exif(tags: int = 2000) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    # Every tag points past the end of the data: Pillow warns once per tag.
    ifd = struct.pack(">H", tags) + b"".join(struct.pack(">HHII", 1000 + i, 3, 1_000_000, 0xFFFFFF00)
                                             for i in range(tags)) + b"\0\0\0\0"
    png = encode(photo(CATS[0]), "PNG")
    return png[:33] + chunk(b"eXIf", b"MM\x00*" + struct.pack(">I", 8) + ifd) + png[33:]


def test_library_warnings_are_json_and_bounded(server):
    _, base, log_path = server
    before = len(log_path.read_text().splitlines())
    answer = httpx.post(base + "/detect", files={"image": ("cat.png", _png_with_bad_exif(), "image/png")}, timeout=30)
    assert answer.status_code == 200 and answer.json()["faces"]  # the photo itself is fine
    time.sleep(0.3)
    new = log_path.read_text().splitlines()[before:]
    records = [json.loads(line) for line in new]  # every line is JSON
    assert len(records) < 50, f"{len(records)} log lines for one photo"


def test_uploads_never_touch_the_disk(server):
    _, base, _ = server
    cat = encode(photo(CATS[0]))
    padded = attacks.big_upload(cat, 19 * 1024 * 1024)  # spooled to disk by default above 1 MB
    answer = httpx.post(base + "/detect", files={"image": ("cat.jpg", padded, "image/jpeg")}, timeout=60)
    assert answer.status_code == 200 and answer.json()["faces"]


def test_annotate_of_an_absurd_shape_is_a_422(server):
    _, base, _ = server
    answer = httpx.post(base + "/annotate", content=attacks.thin_png(), headers={"Content-Type": "image/png"},
                        timeout=30)
    assert answer.status_code == 422 and answer.headers["content-type"].startswith("application/problem+json")


def test_annotate_answers_a_big_photo_reduced(server):
    _, base, _ = server
    big = photo(CATS[0]).resize((4000, 3000))
    answer = httpx.post(base + "/annotate", content=encode(big), headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert answer.status_code == 200
    import io

    from PIL import Image
    drawn = Image.open(io.BytesIO(answer.content))
    assert max(drawn.size) <= 2048 and abs(drawn.width / drawn.height - 4 / 3) < 0.01


def test_sigterm_during_heavy_decodes_drains_in_time_with_problem_json(tmp_path, cat_bytes):
    """The heaviest decode the limits allow (a progressive JPEG at the scan budget), several at
    once, then SIGTERM: every answer is a 200 or a problem+json, and the process exits in time."""
    log_path = tmp_path / "server.log"
    heavy = attacks.decode_bomb(side=4000, repeats=5)  # 15 scans x 16 MP: inside the budget
    with service_process(log_path, CATFACE_DRAIN_S="0.5") as (process, base):
        def post(data):
            with httpx.Client(base_url=base, timeout=60) as c:
                r = c.post("/detect", content=data, headers={"Content-Type": "image/jpeg"})
                return r.status_code, r.headers.get("content-type", "")

        with ThreadPoolExecutor(8) as pool:
            running = [pool.submit(post, heavy) for _ in range(4)] + [pool.submit(post, d) for d in cat_bytes]
            time.sleep(0.5)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            answers = [f.result(60) for f in running]
        assert process.wait(40) == 0 and time.monotonic() - started < 40  # the k8s grace period
    for status, content_type in answers:
        assert status == 200 or (400 <= status < 600 and content_type.startswith("application/problem+json")), answers
