"""The small-face look at the photo's own aspect ratio (issue 12's cost). Shipped 2026-12-04.

The look used to stretch the whole photo to 640 x 640 px. A 4:3 photo's look at 640 x 480 holds
the same pixels along its longer side in 0.75 of the rows' worth (30 ms against 41 here), and shows
the faces unstretched, as a square candidate window larger than the photo does (those windows
find faces the stretched looks half-see: zoom-closer-windows-2026-12-04.json). Along the shorter
side it magnifies less than the tiles did. The look's file is the detector at any input size
(nets.AnySizeDetector, training.export.export_small_look).

Candidates, in one run: the square look (640 x 640, served until this study) and the served look
(longer side 640, the photo's ratio: detection.small_look_size). /detect's lines on select_zoom's
TRAINING photos (zoom_cost.measure) and, with --baseline, issue 12's cost line.

    python benchmarks/zoom_aspect_look.py --baseline runs/models-v1/models
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_models import median_ms  # noqa: E402
from benchmarks.zoom_sizes import WITHIN_ONE_PHOTO, run_study, study_args  # noqa: E402
from service.pipeline import CatFace, load, model_row  # noqa: E402


class SquareLook(CatFace):
    """CatFace whose small-face look stretches the photo to a square of the look's side."""

    def small_look_row(self, image: Image.Image) -> np.ndarray:
        side = self.zoom["small_look"]["side"]
        return model_row(image, (side, side))[None]


def main():
    args = study_args()
    report = {"date": datetime.date.today().isoformat(), "threads": args.threads,
              "rule_set_beforehand": WITHIN_ONE_PHOTO}
    served = load(args.models, args.threads)
    look = served.small_look
    assert look is not None, "a models folder with the small-face look"
    report["row_ms"] = {}
    for h, w in [(640, 640), (480, 640)]:
        x = np.random.default_rng(0).uniform(0, 255, (1, 3, h, w)).astype(np.float32)
        report["row_ms"][f"look {w}x{h}"] = {"weights": look.entry["weights"],
                                             "batch1_ms": round(median_ms(lambda x=x: look.run(x), args.repeats), 2)}
    print(report["row_ms"], flush=True)
    run_study(args, report, [({"look": "640 x 640"}, "square", SquareLook(served.models)),
                             ({"look": "longer side 640, the photo's ratio"}, "aspect", served)], "zoom-aspect-look")

if __name__ == "__main__":
    main()
