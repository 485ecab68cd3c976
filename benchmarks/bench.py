"""The service's speed in one run, on real photos (Crawford cats and some dogs):

- `python -m service` (a subprocess on loopback) with batching on (max batch 16) and off
  (CATFACE_MAX_BATCH_SIZE=1): throughput and p50/p95/p99 latency of POST /detect and
  POST /breeds at concurrency 1, 4, 16 and 64, and the server's peak RSS;
- the in-process pipeline on the same models (service.imaging.decode + service.pipeline
  CatFace.detect in batches of 16 and of 1, no HTTP): the better of the two is the ceiling the
  service is measured against;
- the OpenCV Haar cat cascade (decode + detection only) on the same photos: the peer.

    python benchmarks/bench.py [--threads 2] [--requests 300] [--seconds 15]

Prints one table and writes benchmarks/results/bench-<date>.json and .png (latency against
throughput). The load generator shares the machine with the server: compare rows of one run.
`--requests 20 --seconds 3 --concurrency 1,4 --threads 1` is a smoke run of a few seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import (  # noqa: E402
    REPO,
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
from service import imaging  # noqa: E402
from service.config import Settings  # noqa: E402
from service.pipeline import load  # noqa: E402
from training.haar import haar_cascade, haar_faces  # noqa: E402

MAX_BATCH = 16
MODES = {  # name -> server environment
    "on": {"CATFACE_MAX_BATCH_SIZE": str(MAX_BATCH), "CATFACE_MAX_WAIT_MS": "2"},
    "off": {"CATFACE_MAX_BATCH_SIZE": "1", "CATFACE_MAX_WAIT_MS": "0"},
}
# Queues and admission above the largest concurrency: the bench measures capacity, not refusals
# (overload.py measures those).
COMMON_ENV = {"CATFACE_QUEUE_SIZE": "256", "CATFACE_MAX_INFLIGHT": "256", "CATFACE_LOG_LEVEL": "warning"}
ENDPOINTS = ("/detect", "/breeds")
NO_BREEDS = "/detect without breeds (detector + landmarks)"  # an in-process row, no endpoint


def jobs_for(photos: list[tuple[str, bytes]], path: str) -> list[tuple[str, bytes]]:
    jobs = []
    for name, data in photos:
        body, content_type = multipart(data)
        jobs.append((name, request_bytes("POST", path, body, content_type)))
    return jobs


def service_rows(photos, args, modes: dict[str, dict[str, str]] = MODES) -> tuple[list[dict], dict]:
    rows, peaks = [], {}
    for mode, env in modes.items():
        server = Server({**COMMON_ENV, **env, "CATFACE_THREADS": str(args.threads)})
        try:
            for path in ENDPOINTS:
                jobs = jobs_for(photos, path)
                for concurrency in args.levels:
                    before = server.metrics()
                    results, wall = asyncio.run(
                        closed_loop(server.port, jobs, concurrency, args.requests, args.seconds))
                    after = server.metrics()
                    ok = [r for r in results if r.status == 200]
                    batches = metric(after, "catface_batch_size_count", model="catface") - metric(
                        before, "catface_batch_size_count", model="catface")
                    photos_run = metric(after, "catface_batch_size_sum", model="catface") - metric(
                        before, "catface_batch_size_sum", model="catface")
                    rows.append({"setup": "service", "endpoint": path, "batching": mode, "concurrency": concurrency,
                                 "requests": len(results), "ok": len(ok), "errors": len(results) - len(ok),
                                 "rps": round(len(ok) / wall, 2), **latency_ms(ok),
                                 "mean_detector_batch": round(photos_run / max(batches, 1), 2)})
                    print(f"  service {path} batching {mode} c={concurrency}: {rows[-1]['rps']} /s", file=sys.stderr)
            peaks[mode] = server.peak_rss()
        finally:
            server.stop()
    return rows, peaks


def timed(step, total: int, seconds: float) -> tuple[float, list[float], int]:
    """Calls step(i) until `total` photos or `seconds` pass: (wall, per-call seconds, photos)."""
    times, done, t0 = [], 0, time.perf_counter()
    while done < total and time.perf_counter() - t0 < seconds:
        s = time.perf_counter()
        done += step(done)
        times.append(time.perf_counter() - s)
    return time.perf_counter() - t0, times, done


def in_process_rows(photos, args) -> tuple[list[dict], dict]:
    """The ceiling: the same decode and models in this process, photos in batches of MAX_BATCH."""
    settings = Settings()
    decode_kw = settings.decode_limits()  # the service's own intake
    imaging.configure(settings.max_pixels)
    catface = load(REPO / "models", args.threads)
    blobs = [data for _, data in photos]

    def decoded(i: int, n: int):
        return [imaging.decode(blobs[(i + k) % len(blobs)], **decode_kw) for k in range(n)]

    def detect(i: int, n: int, decode: bool = True, breeds: bool = True) -> int:
        batch = decoded(i, n) if decode else pre[i % len(blobs): i % len(blobs) + n]
        catface.detect([p.image for p in batch], breeds=breeds)
        return len(batch)

    def breeds(i: int, n: int) -> int:
        # What /breeds does (CatFace.classify), photos batched: the detector's whole-photo look, then the
        # classifier on every photo's face crops and the photo itself (a photo without a face too).
        batch = [p.image for p in decoded(i, n)]
        found = catface.faces(batch, zoom=False)
        catface.classifier.run(np.concatenate([catface.breed_inputs(im, faces) for im, faces in zip(batch, found)]))
        return len(batch)

    pre = decoded(0, len(blobs)) * 2  # for the model-only row; doubled so slices wrap around
    catface.detect([p.image for p in pre[:MAX_BATCH]])  # warm-up at the batch size
    rows = []
    cases = [("/detect", MAX_BATCH, lambda i: detect(i, MAX_BATCH)),
             ("/detect", 1, lambda i: detect(i, 1)),
             ("/breeds", MAX_BATCH, lambda i: breeds(i, MAX_BATCH)),
             ("/breeds", 1, lambda i: breeds(i, 1)),
             ("/detect (models only)", MAX_BATCH, lambda i: detect(i, MAX_BATCH, decode=False)),
             # /detect's floor: the same photos through the detector's looks and the landmarks,
             # no breed classifier (and so no cat check): what any classifier would add to
             (NO_BREEDS, MAX_BATCH, lambda i: detect(i, MAX_BATCH, breeds=False))]
    for path, batch, step in cases:
        wall, times, done = timed(step, args.requests, args.seconds)
        rows.append({"setup": "in-process", "endpoint": path, "batching": f"batch {batch}", "concurrency": None,
                     "requests": done, "ok": done, "errors": 0, "rps": round(done / wall, 2),
                     **latency_ms_from(times),
                     "mean_detector_batch": float(batch)})
        print(f"  in-process {path} batch {batch}: {rows[-1]['rps']} /s", file=sys.stderr)

    # What each finds on the same photos (cats should have a face, dogs none).
    found = [len(f) > 0 for f in catface.detect([p.image for p in pre[:len(blobs)]])]
    return rows, {"ours": found}


def latency_ms_from(times: list[float]) -> dict:
    from benchmarks.harness import percentile

    return {f"p{q}": round(percentile(times, q / 100) * 1000, 1) for q in (50, 95, 99)}


def haar_row(photos, args) -> tuple[dict, list[bool]]:
    import cv2

    cv2.setNumThreads(args.threads)
    settings = Settings()
    cascade = haar_cascade()
    blobs = [data for _, data in photos]

    def step(i: int) -> int:
        photo = imaging.decode(blobs[i % len(blobs)], **settings.decode_limits())
        haar_faces(cascade, np.asarray(photo.image))
        return 1

    step(0)
    wall, times, done = timed(step, args.requests, args.seconds)
    found = []
    for data in blobs:
        photo = imaging.decode(data, **settings.decode_limits())
        found.append(len(haar_faces(cascade, np.asarray(photo.image))) > 0)
    row = {"setup": "Haar cascade", "endpoint": "detection only", "batching": "-", "concurrency": None,
           "requests": done, "ok": done, "errors": 0, "rps": round(done / wall, 2), **latency_ms_from(times),
           "mean_detector_batch": 1.0}
    print(f"  Haar: {row['rps']} /s", file=sys.stderr)
    return row, found


def find(rows, **match) -> dict | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def ceiling(rows: list[dict], endpoint: str) -> dict | None:
    """The best in-process row of an endpoint (batch 16 or 1: batching does not always pay on CPU)."""
    found = [r for r in rows if r["setup"] == "in-process" and r["endpoint"] == endpoint]
    return max(found, key=lambda r: r["rps"]) if found else None


def summary(rows: list[dict], levels: list[int]) -> dict:
    out = {"batching_gain": {}}
    for path in ENDPOINTS:
        for c in levels:
            on, off = find(rows, setup="service", endpoint=path, batching="on", concurrency=c), \
                find(rows, setup="service", endpoint=path, batching="off", concurrency=c)
            if on and off and off["rps"]:
                out["batching_gain"][f"{path} c={c}"] = round(on["rps"] / off["rps"], 2)
    c16 = 16 if 16 in levels else max(levels)
    haar = find(rows, setup="Haar cascade")
    for path in ENDPOINTS:
        service = find(rows, setup="service", endpoint=path, batching="on", concurrency=c16)
        top = ceiling(rows, path)
        if service and top:
            out[f"service_over_ceiling {path} c={c16}"] = round(service["rps"] / top["rps"], 3)
            out[f"ceiling {path}"] = f"{top['rps']} photos/s ({top['batching']})"
        if service and haar:
            out[f"service_over_haar {path} c={c16}"] = round(service["rps"] / haar["rps"], 2)
    top = ceiling(rows, "/detect")
    if top and haar:
        out["in_process_detect_over_haar"] = round(top["rps"] / haar["rps"], 2)
    floor = find(rows, setup="in-process", endpoint=NO_BREEDS)
    if floor and haar:
        out["detector_landmarks_over_haar"] = round(floor["rps"] / haar["rps"], 2)
    return out


def table(rows: list[dict]) -> str:
    lines = [f"{'setup':<13}{'endpoint':<22}{'batching':<10}{'conc.':>6}{'photos/s':>10}{'p50 ms':>9}"
             f"{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}{'batch':>7}"]
    for r in rows:
        conc = "-" if r["concurrency"] is None else r["concurrency"]
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(f"{r['setup']:<13}{r['endpoint']:<22}{r['batching']:<10}{conc!s:>6}{r['rps']:>10.1f}"
                     f"{fmt(r['p50']):>9}{fmt(r['p95']):>9}{fmt(r['p99']):>9}{r['errors']:>8}"
                     f"{r['mean_detector_batch']:>7.1f}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, endpoint in zip(axes, ENDPOINTS):
        for mode, color in (("on", "tab:blue"), ("off", "tab:orange")):
            pts = [r for r in rows if r["setup"] == "service" and r["endpoint"] == endpoint and r["batching"] == mode]
            if not pts:
                continue
            x = [r["rps"] for r in pts]
            ax.plot(x, [r["p50"] for r in pts], "o-", color=color, label=f"batching {mode}, p50")
            ax.plot(x, [r["p99"] for r in pts], "s--", color=color, alpha=0.6, label=f"batching {mode}, p99")
            for r in pts:
                ax.annotate(f"c={r['concurrency']}", (r["rps"], r["p50"]), textcoords="offset points",
                            xytext=(4, -12), fontsize=7, color=color)
        top = ceiling(rows, endpoint)
        if top:
            ax.axvline(top["rps"], color="green", ls=":", label=f"in-process ceiling ({top['batching']})")
        haar = find(rows, setup="Haar cascade")
        if haar and endpoint == "/detect":
            ax.axvline(haar["rps"], color="grey", ls="-.", label="Haar cascade (detection only)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("throughput (photos/s)")
        ax.set_title(f"POST {endpoint}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency (ms)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads per model (server and in-process)")
    parser.add_argument("--requests", type=int, default=300, help="most requests per row")
    parser.add_argument("--seconds", type=float, default=15, help="longest measure per row")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--cats", type=int, default=48)
    parser.add_argument("--dogs", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]

    photos = real_photos(cats=args.cats, dogs=args.dogs)
    started = datetime.datetime.now(datetime.UTC)
    service, peaks = service_rows(photos, args)
    ceiling, found = in_process_rows(photos, args)
    haar, haar_found = haar_row(photos, args)
    rows = service + ceiling + [haar]
    result = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "models": model_versions(),
        "settings": {"threads": args.threads, "max_batch_size_on": MAX_BATCH, "requests_per_row": args.requests,
                     "seconds_per_row": args.seconds, "server_env": COMMON_ENV},
        "photos": {"cats": args.cats, "dogs": args.dogs, "names": [name for name, _ in photos]},
        "rows": rows,
        "server_peak_rss_mb": {mode: round(v / 2**20, 1) for mode, v in peaks.items()},
        "faces_found": {
            who: {"cat_photos_with_a_face": round(sum(f[:args.cats]) / args.cats, 3),
                  "dog_photos_with_a_face": round(sum(f[args.cats:]) / max(args.dogs, 1), 3)}
            for who, f in (("catface", found["ours"]), ("haar", haar_found))},
        "summary": summary(rows, args.levels),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench-{started:%Y-%m-%d}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, stem.with_suffix(".png"),
         f"catface on {result['machine'].get('cpus')} CPUs, {args.threads} onnxruntime threads, "
         f"{args.cats} cat + {args.dogs} dog photos, {started:%Y-%m-%d}")

    print(f"\n{args.cats} Crawford cat + {args.dogs} dog photos, {args.threads} onnxruntime threads per model, "
          f"{result['machine'].get('cpus')} CPUs. In-process rows: latency of one call (a whole batch).\n")
    print(table(rows))
    print(f"\nserver peak RSS (MB): {result['server_peak_rss_mb']}")
    print(f"faces found: {result['faces_found']}")
    print(json.dumps(result["summary"], indent=1))
    print(f"\nwrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
