"""What exact int8 costs on this CPU: the shipped int8 catface with onnxruntime's
`session.x64quantprecision`, without it, and the float file it was made from, at batch 1 and 8,
in alternating rounds of one run, and how far the two int8 arms' outputs differ. On x86 CPUs
without VNNI the option swaps the saturating u8 x s8 kernels for exact u8 x u8 ones (and
service/runtime.py sets it there); with VNNI the default kernels are exact already, and the option
changes no output but costs time.

    python benchmarks/bench_int8_cpu.py [--data ../shared/data] [--rounds 5]

Writes benchmarks/results/int8-cpu-cost-<date>.json.
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import REPO, machine  # noqa: E402
from service.pipeline import load  # noqa: E402
from service.runtime import cpu_flags, has_vnni, new_session  # noqa: E402


def int8_flags() -> str:
    """The CPU flags that decide onnxruntime's int8 kernels."""
    flags = cpu_flags()
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags) or "none"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    models = REPO / "models"
    catface = load(models)
    entry = catface.detector.entry
    photos = sorted((args.data / "crawford" / "CAT_01").glob("*.jpg"))[:8]
    rows = np.stack([catface.detector_input(Image.open(p).convert("RGB")) for p in photos]).astype(np.float32)
    arms = {"int8, exact (x64quantprecision)": new_session(models / entry["file"], args.threads, exact_int8=True),
            "int8, default kernels": new_session(models / entry["file"], args.threads),
            "float32": new_session(models / entry["float_reference"]["file"], args.threads)}
    times: dict[str, dict[int, list[float]]] = {name: {1: [], 8: []} for name in arms}
    for _ in range(args.rounds):
        for name, s in arms.items():
            for batch in (1, 8):
                x = rows[:batch]
                s.run(None, {"image": x})  # warm-up at this size
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    s.run(None, {"image": x})
                    times[name][batch].append((time.perf_counter() - t0) * 1000 / batch)
    exact, default = (arms[k].run(None, {"image": rows}) for k in list(arms)[:2])
    report = {"date": datetime.date.today().isoformat(), "machine": machine(), "cpu_flags": int8_flags(),
              "threads": args.threads, "onnxruntime": ort.__version__,
              "served": "int8, default kernels" if has_vnni() else "int8, exact (x64quantprecision)",
              "int8_default_vs_exact_max_abs_difference": max(float(np.abs(a - b).max())
                                                              for a, b in zip(exact, default)),
              "ms_per_image_median": {name: {f"batch{b}": round(statistics.median(t), 2) for b, t in per.items()}
                                      for name, per in times.items()}}
    for name, per in report["ms_per_image_median"].items():
        print(f"{name:42s} batch 1 {per['batch1']:6.2f} ms   batch 8 {per['batch8']:6.2f} ms/img")
    out = REPO / "benchmarks" / "results" / f"int8-cpu-cost-{report['date']}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
