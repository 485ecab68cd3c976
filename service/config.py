"""Settings of the service, read once from CATFACE_* environment variables.

A plain dataclass: every field is a CATFACE_<FIELD NAME IN CAPITALS> variable, so the list below
is also the documentation of what can be set.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from .runtime import DEFAULT_MODELS_DIR

PREFIX = "CATFACE_"


@dataclass(frozen=True)
class Settings:
    models_dir: Path = DEFAULT_MODELS_DIR
    # Batching engine, per model.
    max_batch_size: int = 16        # rows (photos or face crops) per onnxruntime call; 1 = batching off
    max_wait_ms: float = 2.0        # longest wait for more rows, counted from the oldest queued item
    queue_size: int = 32            # queued requests per model before answering 503
    # Admission: bodies are read and decoded before they reach a queue, so bound them too.
    # Concurrent /detect + /breeds requests before answering 503. At most queue_size: beyond it the
    # surplus was uploaded and decoded only to find the detector's queue full (slow 503s, wasted CPU,
    # and RSS that stayed up after a 4x overload).
    max_inflight: int = 32
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000    # width x height of the stored image (decompression bombs)
    decode_side: int = 800          # JPEGs are decoded at reduced size, keeping this longer side
    request_timeout_s: float = 10.0  # deadline of a request from arrival; late work is dropped
    retry_after_s: int = 1          # Retry-After of 503 answers
    # CPU.
    threads: int = 0                # onnxruntime intra-op threads per model; 0 = onnxruntime's default
    image_threads: int = field(default_factory=lambda: os.cpu_count() or 1)  # decode and crop workers
    # Process.
    drain_s: float = 0.0            # after SIGTERM, keep serving with /readyz 503 this long before stopping
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(PREFIX + f.name.upper())
            if raw is not None and raw.strip() != "":
                values[f.name] = _parse(f, raw.strip())
        values.update(overrides)
        return cls(**values).checked()

    def checked(self) -> "Settings":
        positive = ["max_batch_size", "queue_size", "max_inflight", "max_body_bytes", "max_pixels",
                    "decode_side", "request_timeout_s", "image_threads"]
        bad = [name for name in positive if getattr(self, name) <= 0]
        bad += [name for name in ("max_wait_ms", "threads", "drain_s", "retry_after_s") if getattr(self, name) < 0]
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
        return raw
    except ValueError:
        raise ValueError(f"{PREFIX}{f.name.upper()}={raw!r} is not a valid {kind}") from None
