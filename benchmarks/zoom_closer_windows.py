"""A candidate window only where it is a closer look (issue 12's cost).

A half-seen box gets a window of its own: a square of ZOOM_CANDIDATE_WINDOW x its longer side,
stretched to the detector's input. Around a large box that square can be larger than the photo
(bench photo 2: a 0.27-wide box, a 673-px window on a 640x480 photo), so the window shows the box
SMALLER than the whole photo's look already did; and after the 640-px small-face look a window can
show the box no larger than that look did (bench photo 8). Such a window costs a detector row and
brings no closer view. Rules measured here (the served one as control, in the same run):

- "served": every candidate window (up to ZOOM_MAX_CANDIDATES);
- "both": a window only where it shows the box larger in BOTH directions than every look the
  photo already had (the whole photo, the small-face look or the no-face tiles);
- "either": larger in at least one direction than every earlier look.

Per rule: /detect's lines on select_zoom's TRAINING photos (zoom_cost.measure) and, with
--baseline, issue 12's cost line (bench_models.against_baseline).

    python benchmarks/zoom_closer_windows.py --baseline runs/models-v1/models
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.zoom_sizes import WITHIN_ONE_PHOTO, run_study, study_args  # noqa: E402
from service.detection import around  # noqa: E402
from service.pipeline import CatFace, load  # noqa: E402

RULES = ("served", "both", "either")


class CloserWindows(CatFace):
    """CatFace whose candidate windows must show their box larger than every earlier look."""

    def __init__(self, models, rule: str):
        super().__init__(models)
        self.rule, self._closest = rule, 0.0

    def zoom_windows(self, faces, image):
        windows, why = super().zoom_windows(faces, image)
        w, h = image.size
        # input px per photo px of each look, along its x and y
        looks = [(self.detector.input_size[1] / w, self.detector.input_size[0] / h)]
        if len(windows) and why == "small" and self.small_look is not None:
            side = self.small_look.input_size[0]
            looks.append((side / w, side / h))
        elif len(windows):
            tile = windows[0, 2:] - windows[0, :2]
            looks.append((self.detector.input_size[1] / (tile[0] * w), self.detector.input_size[0] / (tile[1] * h)))
        pick = max if self.rule == "both" else min
        self._closest = max(pick(x, y) for x, y in looks)
        return windows, why

    def candidate_windows(self, candidates, faces, image):
        if self.rule == "served":
            return super().candidate_windows(candidates, faces, image)
        rows = self._best(np.concatenate([faces, candidates]), None)
        chosen = rows[rows[:, 4] < self.score_threshold]
        w, h = image.size
        windows = around(chosen[:, :4] * [w, h, w, h], self.zoom["candidate_window"], w, h)
        sides = (windows[:, 2] - windows[:, 0]) * w  # px: the windows are square in the photo
        closer = self.detector.input_size[0] / np.maximum(sides, 1e-6) > self._closest
        cap = self.zoom["max_candidates"]
        return windows[closer][:cap], chosen[closer][:cap]


def main():
    args = study_args()
    report = {"date": datetime.date.today().isoformat(), "threads": args.threads,
              "rule_set_beforehand": WITHIN_ONE_PHOTO + " Of two that pass, the cheaper."}
    served = load(args.models, args.threads)
    run_study(args, report, (({"rule": rule}, rule, CloserWindows(served.models, rule)) for rule in RULES),
              "zoom-closer-windows")

if __name__ == "__main__":
    main()
