"""What POST /breeds costs per photo in model time, for two catbreeds files in one run.

A /breeds photo with one cat face runs the detector once and the classifier on two views (the
face crop and the whole photo; a graph that averages with the mirror, as catbreeds 1.0.0-2.1.0 did,
runs each twice inside). This times exactly
that, in-process with onnxruntime (2 threads), alternating the two classifiers round by round so
that both see the same machine, and prints medians and their ratio.

    python benchmarks/bench_breeds.py --baseline OLD.onnx [--candidate models/catbreeds.onnx]

Writes benchmarks/results/breeds-cost-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import REPO, machine  # noqa: E402
from service.runtime import read_manifest  # noqa: E402


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def views(s: ort.InferenceSession, rows: int) -> dict:
    _, _, h, w = s.get_inputs()[0].shape
    return {s.get_inputs()[0].name: np.random.default_rng(0).uniform(0, 255, (rows, 3, h, w)).astype(np.float32)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the catbreeds.onnx shipped before")
    parser.add_argument("--candidate", type=Path, default=REPO / "models" / "catbreeds.onnx")
    served = {m["name"]: m["file"] for m in read_manifest(REPO / "models")["models"] if m["format"] == "onnx"}
    parser.add_argument("--detector", type=Path, default=REPO / "models" / served["catface"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default: benchmarks/results/breeds-cost-<date>.json)")
    args = parser.parse_args(argv)

    detector = session(args.detector, args.threads)
    classifiers = {"baseline": session(args.baseline, args.threads), "candidate": session(args.candidate, args.threads)}
    feeds = {k: views(s, 2) for k, s in classifiers.items()}
    detector_feed = views(detector, 1)
    times: dict[str, list[float]] = {k: [] for k in classifiers}
    for _ in range(args.rounds):
        for name, s in classifiers.items():
            s.run(None, feeds[name])  # warm
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                detector.run(None, detector_feed)
                s.run(None, feeds[name])
            times[name].append((time.perf_counter() - t0) / args.repeats * 1000)
    medians = {k: statistics.median(v) for k, v in times.items()}
    report = {"date": datetime.date.today().isoformat(), "machine": machine(), "threads": args.threads,
              "files": {"baseline": str(args.baseline), "candidate": str(args.candidate)},
              "bytes": {"baseline": args.baseline.stat().st_size, "candidate": args.candidate.stat().st_size},
              "ms_per_photo_median": {k: round(v, 2) for k, v in medians.items()},
              "ratio": round(medians["candidate"] / medians["baseline"], 3)}
    out = args.out or REPO / "benchmarks" / "results" / f"breeds-cost-{report['date']}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["ms_per_photo_median"]), f"ratio {report['ratio']}", f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
