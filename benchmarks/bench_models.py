"""Per-image inference time of each shipped ONNX model at batch 1 and 8, their sizes, and the
OpenCV Haar cat cascade on the same 640x480 photos, in one run.

    python benchmarks/bench_models.py [--data ../shared/data] [--threads 2] [--repeats 30] \
        [--baseline <models folder shipped before>]

With --baseline, also detector + landmarks per photo of the baseline's catface + catlandmarks,
timed in alternating rounds in the same run, and the ratio (the detector's cost budget): on the
Crawford cat photos, and on dog photos (no cat face: where the closer looks cost the most).

Prints medians (this machine is noisy: compare ratios from one run, not across runs).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from service.pipeline import load  # noqa: E402
from service.runtime import OnnxModel  # noqa: E402
from training.haar import haar_cascade, haar_faces  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def bench_photos(data: Path) -> list[Image.Image]:
    """The cost line's photos: the first 8 Crawford CAT_01 photos, at 640x480."""
    paths = sorted(glob.glob(str(data / "crawford" / "CAT_01" / "*.jpg")))[:8]
    return [Image.open(p).convert("RGB").resize((640, 480), Image.BILINEAR) for p in paths]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--baseline", type=Path, default=None, help="a models folder to compare face finding with")
    args = parser.parse_args()

    catface = load(args.models, args.threads)
    photos = bench_photos(args.data)

    print(f"{'model':<24}{'input':>10}{'MB':>8}{'batch 1 ms/img':>16}{'batch 8 ms/img':>16}")
    rows = []
    for name, model in catface.models.items():
        h, w = model.input_size
        one = np.random.default_rng(0).uniform(0, 255, (1, 3, h, w)).astype(np.float32)
        eight = np.repeat(one, 8, 0)
        # An int8 file is timed beside the float export it was made from, in the same loop.
        files = [(model.entry["weights"], model)]
        if "float_reference" in model.entry:
            entry = {**model.entry, **model.entry["float_reference"]}
            files.append(("float32", OnnxModel(entry, args.models / entry["file"], args.threads)))
        for weights, session in files:
            b1 = median_ms(lambda session=session, one=one: session.run(one), args.repeats)
            b8 = median_ms(lambda session=session, eight=eight: session.run(eight), args.repeats) / 8
            size = (args.models / session.entry["file"]).stat().st_size / 1e6
            print(f"{f'{name} ({weights})':<24}{f'{w}x{h}':>10}{size:>8.2f}{b1:>16.2f}{b8:>16.2f}")
            rows.append({"model": name, "weights": weights, "served": session is model, "input": f"{w}x{h}",
                         "mb": round(size, 2), "batch1_ms": round(b1, 2), "batch8_ms_per_image": round(b8, 2)})

    cascade = haar_cascade()
    arrays = [np.asarray(p) for p in photos]
    haar = median_ms(lambda: [haar_faces(cascade, a) for a in arrays], max(3, args.repeats // 5)) / len(arrays)
    ours_faces = median_ms(lambda: catface.detect(photos, breeds=False), max(3, args.repeats // 5)) / len(photos)
    ours_one = median_ms(lambda: catface.detect(photos[:1], breeds=False), args.repeats)
    print(f"\nper 640x480 photo (median, {len(photos)} Crawford photos, {args.threads} threads):")
    print(f"  Haar cascade (detection only)              {haar:8.2f} ms")
    print(f"  catface + catlandmarks, one photo at a time {ours_one:8.2f} ms"
          f"  ({haar / ours_one:.1f}x faster than Haar)")
    print(f"  catface + catlandmarks, batch of 8          {ours_faces:8.2f} ms"
          f"  ({haar / ours_faces:.1f}x faster than Haar)")

    report = {"date": datetime.date.today().isoformat(), "threads": args.threads, "models": rows,
              "per_640x480_photo_ms": {"haar": round(haar, 2), "detector_landmarks_one": round(ours_one, 2),
                                      "detector_landmarks_batch8": round(ours_faces, 2)}}
    if args.baseline:
        baseline = load(args.baseline, args.threads)
        report["against_baseline"] = against_baseline(catface, baseline, photos, args.repeats)
        # a photo without a cat face is where the closer looks cost the most (tiles + windows)
        dog_paths = sorted(glob.glob(str(args.data / "negatives" / "dogs" / "*.jpg")))[:8]
        dogs = [Image.open(p).convert("RGB").resize((640, 480), Image.BILINEAR) for p in dog_paths]
        report["against_baseline_dogs"] = against_baseline(catface, baseline, dogs, args.repeats, what="dog photo")
    out = Path(__file__).resolve().parent / "results" / f"models-{report['date']}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


def against_baseline(catface, baseline, photos, repeats: int, rounds: int = 5, what: str = "photo") -> dict:
    """Detector + landmarks on one photo at a time, shipped vs baseline, in alternating rounds."""
    shipped, before = [], []
    for _ in range(rounds):
        shipped.append(median_ms(lambda: [catface.detect([p], breeds=False) for p in photos], repeats // 5))
        before.append(median_ms(lambda: [baseline.detect([p], breeds=False) for p in photos], repeats // 5))
    ms, base = statistics.median(shipped) / len(photos), statistics.median(before) / len(photos)
    # each round's ratio (its two medians side by side in time): how far one run's drift moves the line
    rounds_ratio = sorted(round(s / b, 3) for s, b in zip(shipped, before))
    versions = lambda c: {n: m.entry["version"] for n, m in c.models.items() if n != "catbreeds"}  # noqa: E731
    rows = detector_rows(catface, photos)
    print(f"\ndetector + landmarks per {what}: {ms:.2f} ms against {base:.2f} ms for the baseline "
          f"{versions(baseline)} ({ms / base:.2f}x; rounds {rounds_ratio[0]:.2f}x-{rounds_ratio[-1]:.2f}x); "
          f"detector rows per {what}: {rows} (baseline: {detector_rows(baseline, photos)})")
    return {"shipped": versions(catface), "baseline": versions(baseline), "shipped_ms": round(ms, 2),
            "baseline_ms": round(base, 2), "ratio": round(ms / base, 3), "rounds_ratio": rounds_ratio,
            "shipped_detector_rows": rows}


@contextlib.contextmanager
def counting_rows(catface):
    """Counts the detector rows (the whole photo, tiles, windows, the small-face look: one row, of
    its larger side) catface runs inside the block: where the closer looks' cost goes. Yields a
    one-item list holding the count (reset it freely)."""
    rows, detectors = [0], list(catface.detectors)

    def counting(run):
        def counted(batch):
            rows[0] += len(batch)
            return run(batch)
        return counted
    for detector in detectors:
        detector.run = counting(detector.run)
    try:
        yield rows
    finally:
        for detector in detectors:
            del detector.run  # back to the class's method


def detector_rows(catface, photos) -> list[int]:
    """Detector rows /detect runs on each photo, counted in an untimed pass."""
    with counting_rows(catface) as rows:
        out = []
        for photo in photos:
            rows[0] = 0
            catface.detect([photo], breeds=False)
            out.append(rows[0])
        return out

if __name__ == "__main__":
    main()
