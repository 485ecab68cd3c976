"""Throughput and latency of POST /detect on real photos, in one run:

- the service (`python -m service`, a subprocess) with batching on and off, at concurrency
  1, 8 and 32 (keep-alive HTTP/1.1 clients, multipart uploads of real Crawford photos);
- the same pipeline in-process without HTTP (CatFace.detect on decoded photos, batch 1 and
  batch 16): the ceiling the server's overhead is measured against.

    python benchmarks/bench_service.py [--data ../shared/data] [--threads 2] [--requests 200]

The load generator runs on the same machine and takes CPU from the server: compare rows of one
run, not runs on different machines. `--requests 24 --concurrency 1,8` is a quick smoke run.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from service.pipeline import load  # noqa: E402

MODES = {  # name -> environment of the server
    "batching on": {"CATFACE_MAX_BATCH_SIZE": "16", "CATFACE_MAX_WAIT_MS": "2"},
    "batching off": {"CATFACE_MAX_BATCH_SIZE": "1", "CATFACE_MAX_WAIT_MS": "0"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Server:
    def __init__(self, env: dict[str, str], threads: int):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "CATFACE_THREADS": str(threads),
                    "CATFACE_QUEUE_SIZE": "256", "CATFACE_MAX_INFLIGHT": "256", "CATFACE_LOG_LEVEL": "warning", **env}
        self.process = subprocess.Popen([sys.executable, "-m", "service", "--port", str(self.port)], cwd=REPO,
                                        env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service did not start: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the service was not ready in 120 s")
            time.sleep(0.2)

    def batch_totals(self) -> tuple[float, float]:
        """(rows, batches) of the detector so far, from /metrics."""
        values = {}
        for line in httpx.get(self.base + "/metrics", timeout=10).text.splitlines():
            for key in ("catface_batch_size_sum", "catface_batch_size_count"):
                if line.startswith(key + '{model="catface"}'):
                    values[key] = float(line.rsplit(" ", 1)[1])
        return values.get("catface_batch_size_sum", 0.0), values.get("catface_batch_size_count", 0.0)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def load_test(base: str, photos: list[bytes], concurrency: int, requests: int) -> dict:
    latencies, errors = [], 0
    jobs = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        async def worker():
            nonlocal errors
            for i in jobs:
                data = photos[i % len(photos)]
                t0 = time.perf_counter()
                response = await client.post("/detect", files={"image": ("photo.jpg", data, "image/jpeg")})
                latencies.append(time.perf_counter() - t0)
                errors += response.status_code != 200

        for data in photos[:concurrency]:  # warm the connections (and the server) outside the measure
            await client.post("/detect", files={"image": ("photo.jpg", data, "image/jpeg")})
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"rps": requests / wall, "p50": percentile(latencies, 0.5) * 1000, "p99": percentile(latencies, 0.99) * 1000,
            "errors": errors}


def in_process(photos: list[bytes], threads: int, requests: int) -> list[tuple]:
    catface = load(REPO / "models", threads)
    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in photos]
    rows = []
    for batch in (1, 16):
        groups = [images[i:i + batch] for i in range(0, len(images), batch)]
        catface.detect(groups[0])  # warm-up
        times, done, t0 = [], 0, time.perf_counter()
        while done < requests:
            group = groups[(done // batch) % len(groups)]
            s = time.perf_counter()
            catface.detect(group)
            times.append(time.perf_counter() - s)
            done += len(group)
        wall = time.perf_counter() - t0
        rows.append((f"in-process detect, batch {batch}", "-", done / wall, statistics.median(times) * 1000,
                     percentile(times, 0.99) * 1000, 0, float(batch)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--photos", type=int, default=64, help="distinct real photos to cycle through")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads per model")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()

    paths = sorted(glob.glob(str(args.data / "crawford" / "CAT_01" / "*.jpg")))[:args.photos]
    if not paths:
        sys.exit(f"no photos under {args.data}/crawford/CAT_01")
    photos = [Path(p).read_bytes() for p in paths]
    levels = [int(c) for c in args.concurrency.split(",")]

    rows = []
    for mode, env in MODES.items():
        server = Server(env, args.threads)
        try:
            for concurrency in levels:
                rows_before, batches_before = server.batch_totals()
                result = asyncio.run(load_test(server.base, photos, concurrency, args.requests))
                rows_after, batches_after = server.batch_totals()
                mean_batch = (rows_after - rows_before) / max(batches_after - batches_before, 1)
                rows.append((f"HTTP, {mode}", concurrency, result["rps"], result["p50"], result["p99"],
                             result["errors"], mean_batch))
                print(f"  done: {mode}, concurrency {concurrency}", file=sys.stderr)
        finally:
            server.stop()
    rows += in_process(photos, args.threads, args.requests)

    print(f"\nPOST /detect, {len(photos)} real photos (~448 px), {args.requests} requests per row, "
          f"{args.threads} onnxruntime threads per model, {os.cpu_count()} CPUs\n")
    print(f"{'setup':<34}{'conc.':>6}{'photos/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'batch':>7}")
    for name, concurrency, rps, p50, p99, errors, batch in rows:
        print(f"{name:<34}{concurrency!s:>6}{rps:>10.1f}{p50:>9.1f}{p99:>9.1f}{errors:>8}{batch:>7.1f}")
    print("\nbatch = mean photos per detector call (HTTP rows: from /metrics). In-process rows: "
          "latency per detect() call of that batch.")


if __name__ == "__main__":
    main()
