"""Settings of the service, read once from CATFACE_* environment variables.

A plain dataclass: every field is a CATFACE_<FIELD NAME IN CAPITALS> variable, so the list below
is also the documentation of what can be set.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .runtime import DEFAULT_MODELS_DIR

PREFIX = "CATFACE_"


@dataclass(frozen=True)
class Settings:
    models_dir: Path = DEFAULT_MODELS_DIR
    # Batching engine, per model.
    max_batch_size: int = 4         # rows per onnxruntime call; 1 = batching off. benchmarks/memory.py: 16 held
                                    # 0.95 GB idle (the arena keeps the batch-16 warm-up) for 1.06x the photos/s
    max_wait_ms: float = 2.0        # longest wait for more rows, counted from the oldest queued item
    queue_size: int = 16            # queued requests per model before answering 503
    # Admission: bodies are read and decoded before they reach a queue, so bound them too.
    # Concurrent /detect + /breeds requests before answering 503. At most queue_size: beyond it the
    # surplus was uploaded and decoded only to find the detector's queue full (slow 503s, wasted CPU,
    # and RSS that stayed up after a 4x overload). 16, not 32, since catbreeds 2.0.0 made a photo
    # ~1.4x dearer: 32 admitted photos took 3.5 s to drain after an overload (tests/test_load.py).
    max_inflight: int = 16
    # A request finding every slot taken waits this long for one before its 503 (bursts of cheap
    # invalid uploads hold slots for milliseconds; overload refusals stay fast).
    admission_wait_ms: float = 100.0
    # Uploads are read before admission (a slow client holds no in-flight slot), so they are
    # bounded on their own: bytes each, bytes all together, and time.
    max_body_bytes: int = 20 * 1024 * 1024
    max_upload_buffer_bytes: int = 96 * 1024 * 1024  # all bodies being received at once; beyond: 503
    upload_timeout_s: float = 30.0  # the whole body must arrive within this (408)
    min_upload_rate: int = 16 * 1024  # bytes/s on average once upload_grace_s has passed (408)
    upload_grace_s: float = 2.0
    # A request's line and headers must arrive within this, from the connection's start or the end
    # of the previous answer on it (408; service/http11.py: slowloris on the head).
    head_timeout_s: float = 10.0
    # Connections open at once; past it a new one gets a 503 and the close (each open connection can
    # hold a partial head of up to 16 KB: 2048 of them ~45 MB; service/http11.py).
    max_connections: int = 2048
    # Decoding: refused from the header, before any pixel work, when it would cost too much.
    max_pixels: int = 50_000_000    # width x height of the stored image (decompression bombs)
    max_decode_bytes: int = 224 * 1024 * 1024  # memory all decodes at once may fill (one over it: 413)
    max_jpeg_scan_work: int = 250   # JPEG scans x megapixels (~2 ms of CPU each): scan-repeat bombs (413)
    decode_side: int = 800          # JPEGs are decoded at reduced size, keeping this longer side
    annotate_max_side: int = 2048   # /annotate draws on (and returns) the photo reduced to this longer side
    request_timeout_s: float = 10.0  # deadline of decode + analysis, from the end of the upload
    retry_after_s: int = 1          # Retry-After of 503 answers
    # CPU.
    threads: int = 0                # onnxruntime intra-op threads per model; 0 = onnxruntime's default
    cpu_arena: bool = True          # onnxruntime's memory arena (keeps peak activations resident)
    image_threads: int = field(default_factory=lambda: os.cpu_count() or 1)  # decode and crop workers
    # Process.
    drain_s: float = 0.0            # after SIGTERM, keep serving with /readyz 503 this long before stopping
    log_level: str = "info"
    host: str = "127.0.0.1"         # `python -m service` listens here (0.0.0.0 in a container)
    port: int = 8000
    # Links in GET /models: relative paths unless a public base URL is set (the Host header is
    # the client's to choose, so it never goes into a URL).
    public_url: str = ""
    # X-Forwarded-For/-Proto are believed only from these proxy addresses (comma-separated);
    # empty = never (the default: a direct client could claim any address).
    forwarded_allow_ips: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        env: Mapping[str, str] = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is not None and raw.strip() != "":
                values[f.name] = _parse(f, raw.strip())
        values.update(overrides)
        return cls(**values).checked()

    def decode_limits(self, keep_original: bool = False) -> dict:
        """Keyword arguments of imaging.decode: the same intake for uploads and the command line."""
        return dict(max_bytes=self.max_body_bytes, max_pixels=self.max_pixels, decode_side=self.decode_side,
                    keep_original=keep_original, original_side=self.annotate_max_side,
                    max_decode_bytes=self.max_decode_bytes, max_scan_work=self.max_jpeg_scan_work)

    def checked(self) -> Settings:
        positive = ["max_batch_size", "queue_size", "max_inflight", "max_body_bytes", "max_upload_buffer_bytes",
                    "upload_timeout_s", "head_timeout_s", "max_pixels", "max_decode_bytes", "max_jpeg_scan_work",
                    "decode_side", "annotate_max_side", "max_connections", "request_timeout_s", "image_threads", "port"]
        bad = [name for name in positive if getattr(self, name) <= 0]
        bad += [name for name in ("max_wait_ms", "admission_wait_ms", "threads", "drain_s", "retry_after_s",
                                  "min_upload_rate", "upload_grace_s") if getattr(self, name) < 0]
        if bad:
            raise ValueError(f"settings out of range: {', '.join(PREFIX + b.upper() for b in bad)}")
        return self


def _parse(f: dataclasses.Field, raw: str):
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "Path":
            return Path(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError
            return raw.lower() in ("1", "true", "yes", "on")
        return raw
    except ValueError:
        raise ValueError(f"{PREFIX}{f.name.upper()}={raw!r} is not a valid {kind}") from None
