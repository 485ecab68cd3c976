"""The no-face closer look as the small-face look too: ONE look at the whole photo at 640 px on
its longer side (the photo's ratio kept) in place of the 2x2 tiles. A study, NOT shipped: it
passed on training photos, then on validation gained nothing and put a second dog photo over
issue 12's false-face line (benchmarks/results/zoom-none-look-2026-12-04.json).

Why: validation's small faces in a wide (16:9) photo are found at 0.896 against 0.95 in square
ones (models/MODEL_CARD.md). Where the whole-photo look keeps no face, the server looks again
through 2x2 tiles, each 0.6 of the photo stretched to 256 px: an 800-px-wide photo's faces at 0.53
of their size. Where it keeps a small face, the 640 look shows them at 0.8, in one row of about
0.7x the four tiles' pixels for a 4:3 photo. The candidate runs that look in both cases; the
no-face look still brings no candidate windows (candidates_from), every other rule as served.

/detect's lines on select_zoom's TRAINING photos (zoom_cost.measure, small faces in square and
wide frames included) and, with --baseline, issue 12's cost line, against the served looks in one
run.

    python benchmarks/zoom_none_look.py --baseline runs/models-v1/models
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.zoom_sizes import VALIDATION_DETECT_LINES, WITHIN_ONE_PHOTO, run_study, study_args  # noqa: E402
from service.pipeline import CatFace, load  # noqa: E402


class NoneLook(CatFace):
    """CatFace whose closer look after no face is the small-face look (one row at 640 px); that
    look still brings no candidate windows (`why` stays "none")."""
    whole_looks = ("small", "none")


def main():
    args = study_args()
    report = {"date": datetime.date.today().isoformat(), "threads": args.threads,
              "rule_set_beforehand": WITHIN_ONE_PHOTO + " Then one validation run (training.evaluate): it ships only "
              "if no /detect line there is worse than the served one's by more than one photo or face "
              + VALIDATION_DETECT_LINES + " and the repository's tests pass."}
    served = load(args.models, args.threads)
    run_study(args, report, [({"none_look": "2x2 tiles"}, "served", served),
                             ({"none_look": "the 640 look"}, "none: the 640 look", NoneLook(served.models))],
              "zoom-none-look")


if __name__ == "__main__":
    main()
