"""Memory against throughput: the batch size and onnxruntime's arena that the service ships.

For each configuration, one `python -m service` (default settings otherwise) is measured for:
idle RSS after start-up (models loaded and warmed up), photos/s of POST /detect at concurrency
16, and the peak RSS (VmHWM) through that and a burst of 64 concurrent /detect.

    python benchmarks/memory.py [--seconds 20] [--batch 1 4 8 16] [--arena on off]

Writes benchmarks/results/memory-<date>.json; the defaults in service/config.py and the
container limits in docker/ are chosen from it (see README, Performance).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import REPO, Server, closed_loop, machine, model_versions, multipart, real_photos, request_bytes


def measure(env: dict[str, str], seconds: float, photos: list[bytes]) -> dict:
    jobs = []
    for data in photos:
        body, content_type = multipart(data)
        jobs.append(("detect", request_bytes("POST", "/detect", body, content_type)))
    with Server({"CATFACE_LOG_LEVEL": "warning", **env}) as server:
        idle = server.rss()
        results, wall = asyncio.run(closed_loop(server.port, jobs, 16, 100_000, seconds))
        ok = [r for r in results if r.status == 200]
        burst, _ = asyncio.run(closed_loop(server.port, jobs, 64, 64, 60, warm=False))
        after = server.rss()
        peak = server.peak_rss()
    return {"env": env, "idle_rss_mb": round(idle / 2**20, 1), "photos_per_s": round(len(ok) / wall, 2),
            "p50_ms": round(statistics.median(r.seconds for r in ok) * 1000, 1) if ok else None,
            "burst_statuses": sorted({str(r.status) for r in burst}),
            "peak_rss_mb": round(peak / 2**20, 1), "rss_after_mb": round(after / 2**20, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 4, 8, 16])
    parser.add_argument("--arena", nargs="*", default=["on", "off"], choices=["on", "off"])
    args = parser.parse_args(argv)
    photos = [data for _, data in real_photos(cats=24, dogs=8)]
    rows = []
    for arena in args.arena:
        for batch in args.batch:
            row = measure({"CATFACE_MAX_BATCH_SIZE": str(batch), "CATFACE_CPU_ARENA": "1" if arena == "on" else "0"},
                          args.seconds, photos)
            print(json.dumps(row), flush=True)
            rows.append(row)
    report = {"date": datetime.date.today().isoformat(), "machine": machine(), "models": model_versions(),
              "seconds": args.seconds, "rows": rows}
    out = REPO / "benchmarks" / "results" / f"memory-{report['date']}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
