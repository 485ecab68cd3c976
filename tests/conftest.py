"""Shared test helpers: real photos from the shared data folder, and the real app running with
its lifespan on an event loop in a background thread, driven over in-process HTTP (httpx)."""
from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.config import Settings
from service.pipeline import load
from service.state import ServiceState

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
DATA = Path(os.environ.get("CATFACE_DATA", REPO.parent / "shared" / "data"))

# Photos on which the models behave (checked with the preliminary models; re-checked on swaps).
# Cats: one clear face each. Dogs: the detector's best anchor stays far below its threshold.
CATS = ["crawford/CAT_01/00000102_003.jpg", "crawford/CAT_01/00000108_003.jpg",
        "crawford/CAT_01/00000105_005.jpg", "crawford/CAT_01/00000103_003.jpg"]
DOGS = ["negatives/dogs/dog.132.jpg", "negatives/dogs/dog.102.jpg"]


def data_file(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"the shared photos are not at {DATA} (set CATFACE_DATA)")
    return path


@pytest.fixture(scope="session")
def cat_bytes() -> list[bytes]:
    return [data_file(p).read_bytes() for p in CATS]


@pytest.fixture(scope="session")
def dog_bytes() -> list[bytes]:
    return [data_file(p).read_bytes() for p in DOGS]


def photo(relative: str) -> Image.Image:
    """A photo of the shared data folder as RGB."""
    with Image.open(data_file(relative)) as image:
        return image.convert("RGB")


@pytest.fixture(scope="session")
def catface():
    """The in-process pipeline on the committed models (one onnxruntime thread: a shared machine)."""
    return load(MODELS, threads=1)


def ground_truth(relative: str) -> np.ndarray:
    """The 9 labelled points (x, y) of a Crawford photo."""
    values = data_file(relative + ".cat").read_text().split()
    return np.array(values[1:19], float).reshape(9, 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def service_process(log_path: Path, **env):
    """`python -m service` on a free loopback port (one onnxruntime thread, small batches), handed
    out once /readyz says 200; stopped on exit if the test left it running. Yields (process, url)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "CATFACE_THREADS": "1", "CATFACE_MAX_BATCH_SIZE": "4", **env}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not ready in 90 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def make_settings(**overrides) -> Settings:
    """Settings for tests: one onnxruntime thread (the machine is shared), small batches."""
    base = dict(threads=1, image_threads=2, max_batch_size=8)
    base.update(overrides)
    return Settings(**base).checked()


class LiveApp:
    """The app with its lifespan running on an event loop in a background thread, like a server,
    and an httpx client talking to it in-process. `call` runs a coroutine on that loop."""

    def __init__(self, settings: Settings):
        self.app = create_app(settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._lifespan = self.app.router.lifespan_context(self.app)
        self.call(self._lifespan.__aenter__())
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://catface",
                                        timeout=60)

    def call(self, coroutine, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def get(self, url: str, **kw) -> httpx.Response:
        return self.call(self.client.get(url, **kw))

    def head(self, url: str, **kw) -> httpx.Response:
        return self.call(self.client.head(url, **kw))

    def post(self, url: str, **kw) -> httpx.Response:
        return self.call(self.client.post(url, **kw))

    def post_many(self, url: str, kwargs_list: list[dict]) -> list[httpx.Response]:
        async def many():
            return await asyncio.gather(*(self.client.post(url, **kw) for kw in kwargs_list))
        return self.call(many())

    @property
    def state(self) -> ServiceState:
        return self.app.state.service

    @property
    def batchers(self):
        return self.state.analyzer.batchers

    def metric(self, name: str, **labels) -> float:
        """A sample's value from /metrics (0 when absent)."""
        text = self.get("/metrics").text
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                sample, value = line.rsplit(" ", 1)
                if sample.split("{")[0] == name and all(f'{k}="{v}"' in sample for k, v in labels.items()):
                    return float(value)
        return 0.0

    def close(self):
        try:
            self.call(self.client.aclose())
            self.call(self._lifespan.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def live():
    """The app on the committed models with test settings, shared by a test module."""
    app = LiveApp(make_settings())
    yield app
    app.close()


# ---- image makers ----------------------------------------------------------------------------
def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def png_raw(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None) -> bytes:
    """A PNG written by hand, for what Pillow will not write: 16-bit RGB, or a header claiming
    a huge size over almost no data (a decompression bomb)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows or b"\x00")) + chunk(b"IEND", b"")


def png16_rgb(image: Image.Image) -> bytes:
    """An RGB photo as a 16-bit-per-channel PNG (values x 257, filter 0 on every row)."""
    pixels = np.asarray(image.convert("RGB"), np.uint16) * 257
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    return png_raw(image.width, image.height, 16, 2, rows)
