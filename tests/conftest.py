"""Shared test helpers: real photos from the shared data folder, and the real app running with
its lifespan on an event loop in a background thread, driven over in-process HTTP (httpx)."""
from __future__ import annotations

import asyncio
import contextlib
import io
import os
import struct
import threading
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks.harness import DATA, REPO, Server, free_port, metric, parse_metrics  # noqa: F401  (free_port: for tests)
from service.app import create_app
from service.config import Settings
from service.pipeline import load
from service.problems import MEDIA_TYPE
from service.state import ServiceState

MODELS = REPO / "models"

# Photos on which the models behave (checked with the preliminary models; re-checked on swaps).
# Cats: one clear face each. Dogs: the detector's best anchor stays far below its threshold.
CATS = ["crawford/CAT_01/00000102_003.jpg", "crawford/CAT_01/00000108_003.jpg",
        "crawford/CAT_01/00000105_005.jpg", "crawford/CAT_01/00000103_003.jpg"]
DOGS = ["negatives/dogs/dog.132.jpg", "negatives/dogs/dog.102.jpg"]
# A cat in profile whose face the detector does not find (an Oxford validation photo; the int8
# catface 2.0.0 finds the three-quarter head of Abyssinian_190, the earlier example).
PROFILE_CAT = "oxford-iiit-pet/images/Abyssinian_107.jpg"
# A dog with upright, cat-like ears (validation split) whose face catface 2.0.0 alone takes for a
# cat's (score 0.64): the breed classifier's cat output on the crop is 0.001.
EARED_DOG = "negatives/dogs/dog.380.jpg"


def data_file(relative: str) -> Path:
    """A file of the shared data. Missing data fails the test: a CI without the photos must not
    pass by skipping. CATFACE_ALLOW_MISSING_DATA=1 turns the failure into a skip (a quick local run)."""
    path = DATA / relative
    if not path.exists():
        message = f"the shared photos are not at {DATA} (set CATFACE_DATA)"
        if os.environ.get("CATFACE_ALLOW_MISSING_DATA") == "1":
            pytest.skip(message)
        pytest.fail(message + "; CATFACE_ALLOW_MISSING_DATA=1 skips instead")
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


@contextlib.contextmanager
def service_process(log_path: Path, **env):
    """`python -m service` on a free loopback port (one onnxruntime thread, small batches), handed
    out once /readyz says 200; stopped on exit if the test left it running. Yields (process, url).
    The launcher is benchmarks/harness.Server, the one the benchmarks use."""
    try:
        server = Server({"CATFACE_THREADS": "1", "CATFACE_MAX_BATCH_SIZE": "4", **env}, log_path=log_path,
                        ready_timeout=90)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server.process, server.base
    finally:
        server.stop(20)


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
        """The samples of `name` with these labels from /metrics, summed (0 when absent)."""
        return metric(parse_metrics(self.get("/metrics").text), name, **labels)

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
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows or b"\x00"))
            + chunk(b"IEND", b""))


def png16_rgb(image: Image.Image) -> bytes:
    """An RGB photo as a 16-bit-per-channel PNG (values x 257, filter 0 on every row)."""
    pixels = np.asarray(image.convert("RGB"), np.uint16) * 257
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    return png_raw(image.width, image.height, 16, 2, rows)


def pattern(width=96, height=64) -> Image.Image:
    """An asymmetric picture (gradients + a red corner) where any flip or turn shows."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)
    pixels[:8, :12] = [255, 0, 0]
    return Image.fromarray(pixels, "RGB")


STORED_FROM_UPRIGHT = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM,
                       5: Image.TRANSPOSE, 6: Image.ROTATE_90, 7: Image.TRANSVERSE, 8: Image.ROTATE_270}


def iphone_style(upright: Image.Image, fmt: str, orientation: int = 6, **params) -> bytes:
    """The photo as a camera stores it: pixels as the sensor read them (here turned by the EXIF
    `orientation`), and the turn back written as metadata. pillow-heif and Pillow's AVIF writer
    turn that EXIF orientation into the file's `irot`/`imir` boxes, as an iPhone writes them."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(upright.transpose(STORED_FROM_UPRIGHT[orientation]), fmt, exif=exif.tobytes(), **params)


def iso_boxes(data: bytes, kind: bytes) -> list[int]:
    """Offsets of every `kind` box in an ISOBMFF file (found by name, as they nest)."""
    found, start = [], 0
    while (at := data.find(kind, start)) >= 0:
        found.append(at - 4)
        start = at + 4
    return found


def heic_claiming(width: int, height: int) -> bytes:
    """A small HEIC whose image-size property (`ispe`) claims width x height pixels."""
    data = bytearray(encode(pattern(), "HEIF", quality=50))
    for at in iso_boxes(bytes(data), b"ispe"):
        data[at + 12 : at + 20] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return bytes(data)


# ---- HTTP helpers ----------------------------------------------------------------------------
def post_photo(live, data: bytes, url="/detect", **kw):
    return live.post(url, files={"image": ("photo", data, "application/octet-stream")}, **kw)


def assert_problem(response, status: int, slug: str | None = None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(MEDIA_TYPE)
    body = response.json()
    assert body["status"] == status and body["title"]
    assert "Traceback" not in response.text
    if slug:
        assert body["type"] == f"urn:catface:problem:{slug}"
    assert body["request_id"] == response.headers["x-request-id"]
    return body
