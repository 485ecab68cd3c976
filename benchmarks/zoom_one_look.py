"""The small-face closer look as ONE larger look at the whole photo instead of 3x3 tiles (issue 12's
cost).

A 3x3 tile is (1 + overlap) / 3 = 0.4 of the photo's side stretched to the 256-px input, so the
whole photo at 640 px sees every face as large as the tiles do, in 6.25 rows' worth of pixels
instead of 9 rows (the tiles overlap); at 512 px, at 0.8 of that size in 4 rows' worth. The
detector is fully convolutional (zoom_sizes.detectors_at exports the served weights at any side).
Per candidate (side of the one small-face look; the no-face tiles and the candidate windows stay
as served):

1. /detect's lines on select_zoom's TRAINING photos (zoom_cost.measure);
2. with --baseline, issue 12's cost line (bench_models.against_baseline) on the bench's 8 photos.

    python benchmarks/zoom_one_look.py --baseline runs/models-v1/models
"""
from __future__ import annotations

import datetime
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.zoom_sizes import SidedDetector, detectors_at, row_ms, run_study, study_args  # noqa: E402
from service.contract import DETECTOR_INPUT  # noqa: E402
from service.pipeline import WHOLE_PHOTO, CatFace, load, model_row  # noqa: E402

# (small-face look's side, no-face look's side or 0 = the served 2x2 tiles, 256-px rows in float32).
# A 2x2 tile is 0.6 of the photo: the whole photo at 427 px sees faces as large.
CANDIDATES = [(576, 0, False), (640, 0, False), (576, 448, False), (640, 448, False), (576, 448, True),
              (640, 448, True)]


class OneLook(CatFace):
    """CatFace whose small-face tiles (and, with `none`, its no-face tiles) are one look at the
    whole photo at that side; with float256, its 256-px rows run the float file, not the int8 one."""

    def __init__(self, models, others, small: int, none: int = 0, float256: bool = False):
        super().__init__(models)
        self.detector = SidedDetector(models["catface"], others, float256)
        self.detectors = [self.detector]
        self.small_look = None  # (the study's own looks at its sides; the served one is what it chose)
        self.sides, self._next = {"small": small, "none": none}, DETECTOR_INPUT

    def detector_for(self, rows):
        return self.detector  # (it runs every side)

    def zoom_windows(self, faces, image):
        windows, why = super().zoom_windows(faces, image)
        self._next = (self.sides[why] or DETECTOR_INPUT) if len(windows) else DETECTOR_INPUT
        return (WHOLE_PHOTO if self._next != DETECTOR_INPUT else windows), why

    def candidate_windows(self, candidates, faces, image):
        self._next = DETECTOR_INPUT
        return super().candidate_windows(candidates, faces, image)

    def tile_inputs(self, image: Image.Image, windows: np.ndarray) -> np.ndarray:
        if self._next == DETECTOR_INPUT:
            return super().tile_inputs(image, windows)
        return model_row(image, (self._next, self._next))[None]


def main():
    args = study_args()
    report = {"date": datetime.date.today().isoformat(), "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        served = load(args.models, args.threads)
        sides = sorted({side for small, none, _ in CANDIDATES for side in (small, none) if side} | {DETECTOR_INPUT})
        others = detectors_at(served.detector, args.models, sides, args.threads, Path(tmp))
        report["row_ms"] = row_ms([("256 served", DETECTOR_INPUT, served.detector),
                                   *((f"{side} float32", side, model) for side, model in others.items())],
                                  args.repeats, False)
        run_study(args, report, ((
            {"small_look_side": small, "none_look_side": none, "float256": float256},
            f"small {small} / none {none or 'tiles'} / 256 {'float32' if float256 else 'served'}",
            OneLook(served.models, others, small, none, float256)) for small, none, float256 in CANDIDATES),
            "zoom-one-look")

if __name__ == "__main__":
    main()
