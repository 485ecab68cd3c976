"""Soak: a long stream of mixed valid and invalid uploads; memory must not creep and no answer
may be a 5xx.

Four clients (under the service's capacity and its admission limits, so a 503 is a failure too)
send real cat and dog photos as JPEG, PNG, WebP and raw bodies to /detect and /breeds, mixed
with empty, truncated, oversized, non-image, decompression-bomb and malformed-multipart uploads
and a few GETs. The server's RSS is sampled every second.

Passes when: no 5xx and no dropped connection; every request gets the status its kind expects;
RSS at the end (median of the last 10% of the run) is less than GROWTH_LIMIT above RSS after the
warm-up (median of the second half of the first 10%, at least 5 s).

    python benchmarks/soak.py [--seconds 600] [--threads 2]

Writes benchmarks/results/soak-<date>.json. tests/test_load.py runs a short version in CI.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import random
import statistics
import struct
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import (  # noqa: E402
    REPO,
    RssSampler,
    Server,
    closed_loop,
    latency_ms,
    machine,
    metric,
    model_versions,
    multipart,
    real_photos,
    request_bytes,
)

GROWTH_LIMIT = 0.05


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _png_bomb(side: int = 200_000) -> bytes:
    """A PNG header claiming side x side pixels over a few bytes of data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def mix(photos: list[tuple[str, bytes]], seed: int = 0) -> list[tuple[str, bytes]]:
    """(kind, raw request) jobs in a fixed shuffled order, about 60% valid uploads. The kind
    names the expected status: 'valid-...' 200, 'e415-...' 415, and so on."""
    rng = random.Random(seed)
    cats = [d for n, d in photos if n.startswith("crawford")]
    dogs = [d for n, d in photos if not n.startswith("crawford")]
    cat = Image.open(io.BytesIO(cats[0])).convert("RGB")
    gif = _encode(Image.new("RGB", (64, 64), "red"), "GIF")
    jobs: list[tuple[str, bytes]] = []

    def upload(kind: str, data: bytes, path: str, filename="photo.jpg", ctype="image/jpeg", field="image"):
        body, content_type = multipart(data, field=field, filename=filename, content_type=ctype)
        jobs.append((kind, request_bytes("POST", path, body, content_type)))

    for path in ("/detect", "/breeds"):
        for data in cats[:12]:
            upload("valid-cat-jpeg", data, path)
        for data in dogs[:4]:
            upload("valid-dog-jpeg", data, path)
        upload("valid-cat-png", _encode(cat, "PNG"), path, "cat.png", "image/png")
        upload("valid-cat-webp", _encode(cat, "WEBP", quality=80), path, "cat.webp", "image/webp")
        jobs.append(("valid-raw-jpeg", request_bytes("POST", path, cats[1], "image/jpeg")))
        jobs.append(("valid-raw-jpeg", request_bytes("POST", path, cats[2], "image/jpeg")))
        upload("e422-empty", b"", path)
        upload("e422-truncated", cats[3][: len(cats[3]) // 2], path)
        upload("e415-text", b"not a photo " * 40, path)
        upload("e415-random", rng.randbytes(3000).replace(b"\xff\xd8", b"\x00\x00"), path)
        upload("e415-gif", gif, path, "a.gif", "image/gif")
        upload("e413-bomb", _png_bomb(), path, "bomb.png", "image/png")
        upload("e422-one-pixel", _encode(Image.new("RGB", (1, 1)), "PNG"), path, "a.png", "image/png")
        upload("e422-wrong-field", cats[4], path, field="photo")
        jobs.append(("e400-bad-multipart", request_bytes("POST", path, b"--x\r\nnonsense", "multipart/form-data")))
        jobs.append(("e415-text-body", request_bytes("POST", path, b"hello", "text/plain")))
        # A declared length over the limit: refused from the header, so the body is never sent.
        declared = request_bytes("POST", path, b"", "image/jpeg", {"Connection": "close"})
        jobs.append(("e413-declared", declared.replace(b"Content-Length: 0", b"Content-Length: 999999999")))
    jobs.append(("valid-get-manifest", request_bytes("GET", "/models")))
    jobs.append(("valid-get-model-range",
                 request_bytes("GET", "/models/catlandmarks.onnx", headers={"Range": "bytes=0-1023"})))
    jobs.append(("valid-get-livez", request_bytes("GET", "/livez")))
    jobs.append(("e404-unknown", request_bytes("GET", "/no-such-thing")))
    jobs.append(("e405-method", request_bytes("DELETE", "/detect")))
    rng.shuffle(jobs)
    return jobs


def expected(kind: str) -> int:
    return 206 if kind.endswith("range") else 200 if kind.startswith("valid") else int(kind[1:4])


def run(seconds: float = 600, threads: int = 2, concurrency: int = 4, env: dict[str, str] | None = None,
        log_path: Path | None = None) -> dict:
    photos = real_photos(cats=16, dogs=4)
    jobs = mix(photos)
    server_env = {"CATFACE_THREADS": str(threads), "CATFACE_LOG_LEVEL": "warning", **(env or {})}
    with Server(server_env, log_path=log_path) as server:
        sampler = RssSampler(server.pid, 1.0 if seconds >= 60 else 0.25)
        results, wall = asyncio.run(closed_loop(server.port, jobs, concurrency, max_requests=int(seconds * 400),
                                                max_seconds=seconds, timeout=60, warm=False))
        counters = server.metrics()
        samples = sampler.stop()
        code = server.stop()

    warm = max(5.0, seconds * 0.1)
    base = [b for t, b in samples if warm / 2 <= t <= warm]
    tail = [b for t, b in samples if t >= samples[-1][0] - max(seconds * 0.1, 2)]
    rss_base, rss_end = statistics.median(base) / 2**20, statistics.median(tail) / 2**20
    by_status = Counter(str(r.status) for r in results)
    wrong = Counter(f"{r.tag} -> {r.status}" for r in results if r.status != expected(r.tag))
    server_5xx = sum(v for k, v in counters.items()
                     if k.startswith("catface_requests_total{") and 'status="5' in k)
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "models": model_versions(),
        "settings": {"seconds": seconds, "threads": threads, "concurrency": concurrency},
        "requests": len(results), "wall_s": round(wall, 1), "rps": round(len(results) / wall, 1),
        "by_status": dict(sorted(by_status.items())),
        "by_kind": dict(sorted(Counter(r.tag for r in results).items())),
        "unexpected_status": dict(wrong),
        "valid_latency_ms": latency_ms([r for r in results if r.tag.startswith("valid") and r.status == 200]),
        "server_5xx_counted": server_5xx,
        "server_photos_run": metric(counters, "catface_batch_size_sum", model="catface"),
        "rss_mb": {"after_warm_up": round(rss_base, 1), "end": round(rss_end, 1),
                   "first": round(samples[0][1] / 2**20, 1), "max": round(max(b for _, b in samples) / 2**20, 1),
                   "growth": round(rss_end / rss_base - 1, 4),
                   "series": [(round(t, 1), round(b / 2**20, 1)) for t, b in samples[:: max(1, len(samples) // 120)]]},
        "exit_code": code,
    }
    report["checks"] = {
        "no 5xx": not any(k.startswith("5") for k in by_status) and server_5xx == 0,
        "every request answered": "None" not in by_status,
        "every kind got its expected status": not wrong,
        f"RSS growth < {GROWTH_LIMIT:.0%}": rss_end < rss_base * (1 + GROWTH_LIMIT),
        "clean exit on SIGTERM": code == 0,
    }
    report["passed"] = all(report["checks"].values())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    t0 = time.monotonic()
    report = run(args.seconds, args.threads, args.concurrency)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{report['date'][:10]}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("machine", "rss_mb")}, indent=1))
    print("rss_mb:", {k: v for k, v in report["rss_mb"].items() if k != "series"})
    print(f"wrote {path} after {time.monotonic() - t0:.0f} s; {'PASSED' if report['passed'] else 'FAILED'}")
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
