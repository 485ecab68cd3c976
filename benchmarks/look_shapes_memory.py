"""Memory of the small-face look's many input shapes.

The look keeps the photo's aspect ratio (detection.small_look_size): its longer side is always
ZOOM_SMALL_LOOK px and its shorter side a multiple of ZOOM_SMALL_LOOK_MULTIPLE, so there are
2 x 640 / 32 = 40 shapes at most, and the server's warm-up runs only the largest (640 x 640).
onnxruntime's arena keeps what each new shape asked for: this measures how much that adds, once
every shape has run, and that a second pass adds nothing (the models loaded as the server loads
them: runtime.load_models, arena on).

    python benchmarks/look_shapes_memory.py

Writes benchmarks/results/look-shapes-memory-<date>.json.
"""
from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from service.contract import ZOOM_SMALL_LOOK, ZOOM_SMALL_LOOK_MULTIPLE  # noqa: E402
from service.runtime import SMALL_LOOK, load_models  # noqa: E402


def rss_mb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))


def main():
    look = load_models(threads=2)[SMALL_LOOK]
    shorter = range(ZOOM_SMALL_LOOK_MULTIPLE, ZOOM_SMALL_LOOK + 1, ZOOM_SMALL_LOOK_MULTIPLE)
    shapes = [(s, ZOOM_SMALL_LOOK) for s in shorter] + [(ZOOM_SMALL_LOOK, s) for s in shorter]
    report = {"date": datetime.date.today().isoformat(), "shapes": len(shapes), "rss_mb": {"warmed_up": rss_mb()}}
    for _ in range(3):
        look.run(np.zeros((1, 3, ZOOM_SMALL_LOOK, ZOOM_SMALL_LOOK), np.float32))
    report["rss_mb"]["largest_shape_3_times"] = rss_mb()
    for n in (1, 2):
        for h, w in shapes:
            look.run(np.zeros((1, 3, h, w), np.float32))
        report["rss_mb"][f"every_shape_pass_{n}"] = rss_mb()
    print(json.dumps(report))
    out = Path(__file__).resolve().parent / "results" / f"look-shapes-memory-{report['date']}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
