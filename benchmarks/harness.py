"""What the bench, overload and soak scripts (and their bounded pytest versions) share: real
photos, `python -m service` as a subprocess on loopback, its memory, its /metrics, and a small
HTTP/1.1 load generator. (Over 400 lines: it is the one harness every benchmark and test shares.)

The load generator speaks HTTP over asyncio streams with pre-built request bytes instead of
using httpx: the client runs on the same 2 cores as the server, and every millisecond of client
CPU is taken from the server it measures.
"""
from __future__ import annotations

import asyncio
import glob
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CATFACE_DATA", REPO.parent / "shared" / "data"))
HOST = "127.0.0.1"  # loopback only


# ---- photos ----------------------------------------------------------------------------------
def real_photos(data: Path = DATA, cats: int = 48, dogs: int = 16) -> list[tuple[str, bytes]]:
    """(relative path, bytes): Crawford cat photos taken evenly across its folders, then dogs."""
    cat_paths = sorted(glob.glob(str(data / "crawford" / "CAT_*" / "*.jpg")))
    dog_paths = sorted(glob.glob(str(data / "negatives" / "dogs" / "*.jpg")))
    if len(cat_paths) < cats or len(dog_paths) < dogs:
        raise FileNotFoundError(f"need {cats} Crawford cat and {dogs} dog photos under {data} (set CATFACE_DATA)")
    picked = _evenly(cat_paths, cats) + _evenly(dog_paths, dogs)
    return [(str(Path(p).relative_to(data)), Path(p).read_bytes()) for p in picked]


def _evenly(items: list, n: int) -> list:
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


# ---- the server process ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the kernel's own high-water mark of the resident set, exact between our samples."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")


class Server:
    """`python -m service` on a free loopback port with CATFACE_* `env`; waits for /readyz."""

    def __init__(self, env: dict[str, str], log_path: Path | None = None, ready_timeout: float = 120):
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
        self.log_path = log_path
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen([sys.executable, "-m", "service", "--host", HOST, "--port", str(self.port)],
                                            cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if log_path:
                out.close()
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"the service exited with {code} during start-up{self._log_tail()}")
            try:
                if get(self.port, "/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service was not ready in {timeout:.0f} s{self._log_tail()}")
            time.sleep(0.1)

    def _log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return ":\n" + self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def peak_rss(self) -> int:
        return peak_rss_bytes(self.pid)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, keyed by its text form, e.g. 'catface_batch_size_sum{model="catface"}'."""
        status, body = get(self.port, "/metrics", timeout=10)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_metrics(body.decode())

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (drain), then SIGKILL if it does not exit in time; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> every sample keyed by its text form, e.g. 'catface_batch_size_sum{model="catface"}'."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def metric(samples: dict[str, float], name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for key, value in samples.items():
        sample_name, _, rest = key.partition("{")
        if sample_name == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


class RssSampler:
    """RSS of a process every `interval` seconds in a thread: (seconds since start, bytes)."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - self.t0, rss_bytes(self.pid)))
            except OSError:
                return  # the process is gone
            self._stop.wait(self.interval)

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join(5)
        return self.samples


# ---- HTTP/1.1 over asyncio streams -----------------------------------------------------------
def multipart(data: bytes, field: str = "image", filename: str = "photo.jpg",
              content_type: str = "image/jpeg") -> tuple[bytes, str]:
    boundary = "catface" + uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def request_bytes(method: str, path: str, body: bytes = b"", content_type: str | None = None,
                  headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", f"Content-Length: {len(body)}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def with_request_id(raw: bytes, request_id: str) -> bytes:
    """The same request with an X-Request-ID header (for matching client and server records)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    return head + f"\r\nX-Request-ID: {request_id}".encode() + sep + body


@dataclass
class Result:
    tag: str                    # what was sent (for grouping)
    status: int | None          # None: no response (connection refused, reset, or timed out)
    seconds: float              # from the intended send time to the last byte
    started: float              # intended send time, seconds since the run began
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None


class Connection:
    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    async def send(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            await self.open()
        self.used += 1
        self.writer.write(raw)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        asked_close = b"\r\nConnection: close\r\n" in raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        if asked_close or headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def exchange(pool: list[Connection], port: int, raw: bytes, timeout: float,
                   retry_stale: bool = True) -> tuple[int, dict[str, str], bytes]:
    """One request on an idle pooled connection (or a new one), which goes back to the pool after.
    `retry_stale`: a reused keep-alive connection the server had closed (no byte of an answer)
    is retried once on a new connection, as HTTP clients do; the server never saw that request."""
    conn = pool.pop() if pool else Connection(port)
    reused = conn.writer is not None
    try:
        async with asyncio.timeout(timeout):
            try:
                answer = await conn.send(raw)
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if not (reused and retry_stale) or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                    raise
                answer = await conn.send(raw)
    except BaseException:
        conn.close()
        raise
    if conn.writer is not None:
        pool.append(conn)
    return answer


async def send_once(port: int, raw: bytes, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection, closed after."""
    conn = Connection(port)
    try:
        async with asyncio.timeout(timeout):
            return await conn.send(raw)
    finally:
        conn.close()


def get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    """A blocking GET on a fresh connection (probes, /metrics)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(request_bytes("GET", path, headers={"Connection": "close"}))
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return status, body


# ---- load shapes -----------------------------------------------------------------------------
Job = tuple[str, bytes]  # (tag, raw request bytes)


async def _one(pool, port, tag, raw, timeout, t0, planned, retry_stale) -> Result:
    try:
        status, headers, body = await exchange(pool, port, raw, timeout, retry_stale)
        return Result(tag, status, time.perf_counter() - planned, planned - t0, headers, body)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError) as exc:
        return Result(tag, None, time.perf_counter() - planned, planned - t0, error=type(exc).__name__)


async def closed_loop(port: int, jobs: list[Job], concurrency: int, max_requests: int, max_seconds: float,
                      timeout: float = 60, warm: bool = True) -> tuple[list[Result], float]:
    """`concurrency` clients, each sending its next request when the last one is answered, until
    `max_requests` are done or `max_seconds` pass. Returns the results and the wall time."""
    pool: list[Connection] = []
    if warm:  # open the connections (and touch the server) outside the measure
        await asyncio.gather(*(_one(pool, port, tag, raw, timeout, 0, time.perf_counter(), True)
                               for tag, raw in jobs[:concurrency]))
    results: list[Result] = []
    counter = iter(range(max_requests))
    t0 = time.perf_counter()
    stop_at = t0 + max_seconds

    async def client():
        for i in counter:
            if time.perf_counter() >= stop_at:
                return
            tag, raw = jobs[i % len(jobs)]
            results.append(await _one(pool, port, tag, raw, timeout, t0, time.perf_counter(), True))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    for conn in pool:
        conn.close()
    return results, wall


async def open_loop(port: int, jobs: list[Job], phases: list[tuple[str, float, float]], timeout: float = 60,
                    retry_stale: bool = True) -> list[Result]:
    """Requests sent on a fixed schedule whatever the answers do (so an overloaded server cannot
    slow the offered load down): `phases` are (name, rate per second, seconds), one after the
    other. Each Result's tag is the phase name. Latency counts from the planned send time, so a
    late send is charged to the measurement, not hidden."""
    pool: list[Connection] = []
    t0 = time.perf_counter()
    planned, tasks, i = t0, [], 0
    for name, rate, seconds in phases:
        for k in range(max(1, int(rate * seconds))):
            at = planned + k / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            _, raw = jobs[i % len(jobs)]
            i += 1
            tasks.append(asyncio.ensure_future(_one(pool, port, name, raw, timeout, t0, at, retry_stale)))
        planned += seconds
    results = list(await asyncio.gather(*tasks))
    for conn in pool:
        conn.close()
    return results


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def latency_ms(results: list[Result]) -> dict[str, float | None]:
    seconds = [r.seconds for r in results]
    return {f"p{q}": (None if percentile(seconds, q / 100) is None else round(percentile(seconds, q / 100) * 1000, 1))
            for q in (50, 95, 99)}


def machine() -> dict:
    import platform

    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def model_versions(models_dir: Path = REPO / "models") -> dict:
    import hashlib
    import json

    manifest = json.loads((models_dir / "manifest.json").read_text())
    return {m["name"]: {"version": m["version"], "sha256": m["sha256"][:12]}
            for m in manifest["models"] if m["format"] == "onnx"} | {
        "manifest_sha256": hashlib.sha256((models_dir / "manifest.json").read_bytes()).hexdigest()[:12]}
