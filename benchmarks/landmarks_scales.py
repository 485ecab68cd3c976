"""Landmark looks at several crop sizes, averaged: test-time augmentation over the crop's scale.

catlandmarks trained on crops whose size was jittered (train_landmarks: a factor exp(N(0, 0.1)) on the
square's side), and it is served one crop of LANDMARK_CROP_SCALE x the box's longer side. The mean of
the points from a few crop sizes around that one should average out part of each look's error, the
way the graph's mirror average already does. Variants, each with the served models:
  one look          the served crop (scale 1.0 x LANDMARK_CROP_SCALE)
  scales 0.9-1.1    mean of the looks at 0.9, 1.0 and 1.1 x that side (three landmark runs per face)
  scales 0.95/1.05  mean of the looks at 0.95 and 1.05 x that side (two landmark runs per face)

Measured on training.select_landmarks' faces (Crawford photos on cleaning.json's remove list: no run
trained on them, validation does not hold them), from the true box and from the detector's matched
box, as training.evaluate measures validation.

    python benchmarks/landmarks_scales.py --data ../shared/data --models runs/models-lm100/models

The chosen variant (scales 0.9-1.1) ran three of the served landmark graph per face, and the served
graph runs each crop twice (with its mirror): 1.77x issue 12's cost line against 1.5x, so it stopped
at its rule's cost step. A second try, disclosed as such, with its own rule set before it ran
(SECOND_RULE): the same catlandmarks 1.0.0 exported without the mirror inside the graph (one run per
crop), and three looks per face, some of them mirrored by the service (each point put back in its
place: CatFace.landmarks_from):
  mirror in the service   1.0 and 1.0 mirrored: the served answer, rebuilt (a check, no candidate)
  plain 0.9-1.1           0.9, 1.0, 1.1
  ends mirrored           0.9 mirrored, 1.0, 1.1 mirrored
  middle mirrored         0.9, 1.0 mirrored, 1.1

    python benchmarks/landmarks_scales.py --data ../shared/data --models runs/models-lm100/models \
        --plain runs/lm-plain/models
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.landmarks_second_look import boxes_of, mean_errors  # noqa: E402
from benchmarks.zoom_sizes import study_args, write_study  # noqa: E402
from service.pipeline import CatFace, load  # noqa: E402
from training import data  # noqa: E402
from training.evaluate import point_errors  # noqa: E402
from training.pseudo_labels import points_in  # noqa: E402
from training.select_landmarks import held_out_faces  # noqa: E402

# (crop size x the served one, mirrored by the service) per look
VARIANTS = {"one look": ((1.0, False),), "scales 0.9-1.1": ((0.9, False), (1.0, False), (1.1, False)),
            "scales 0.95/1.05": ((0.95, False), (1.05, False))}
SECOND_VARIANTS = {"mirror in the service": ((1.0, False), (1.0, True)),
                   "plain 0.9-1.1": ((0.9, False), (1.0, False), (1.1, False)),
                   "ends mirrored": ((0.9, True), (1.0, False), (1.1, True)),
                   "middle mirrored": ((0.9, False), (1.0, True), (1.1, False))}
SECOND_CHECK = "mirror in the service"

RULE = ("Set before the run. Selection (these faces): a variant goes on only if it is better than one look on "
        "all four numbers (true-box 5-point error and 9-point NME, detected-box 5-point error and 9-point NME); "
        "of those, the one with the lower detected-box 5-point error (what /detect serves). Then it is built into "
        "the service and issue 12's cost line (bench_models.py --baseline, detector + landmarks per photo) must "
        "stay <= 1.5x; only then one validation run (training.evaluate with the variant served): it ships only if "
        "true-box 5-point < 0.0175 AND true-box 9-point NME <= 0.069575 AND detected-box 5-point <= 0.018989 AND "
        "detected-box 9-point NME <= 0.073537 (catlandmarks 1.0.0 with one look) and every /detect line unchanged.")
SECOND_RULE = (
    "Set before the run; a second try, written after the first rule's chosen variant failed its cost step (1.77x). "
    "Selection (these faces): of plain 0.9-1.1, ends mirrored and middle mirrored (catlandmarks 1.0.0 exported "
    "without the in-graph mirror: three landmark runs per face, against two today), a variant goes on only if it "
    "is better than the served one look on all four numbers; of those, the one with the lower detected-box "
    "5-point error. 'mirror in the service' is a check that the export and the service's mirror rebuild the served "
    "answer (every number within 0.0001 of one look), not a candidate. Then the chosen variant is built into the "
    "service and issue 12's cost line (bench_models.py --baseline) must stay <= 1.5x; if it does not, the next "
    "variant in that order gets the same step. Then one validation run, with the first rule's ship conditions.")


def looks(catface: CatFace, image: Image.Image, box: np.ndarray, variant: tuple[tuple[float, bool], ...]) -> np.ndarray:
    served = catface.landmark_looks
    try:
        catface.landmark_looks = variant
        return points_in(catface, image, box)
    finally:
        catface.landmark_looks = served


def measure(catfaces: dict[str, CatFace], faces: list[data.CatPhoto], variants: dict) -> dict:
    """Each variant's mean errors from the true and the detected box; catfaces: the served models
    (boxes, and the variants of VARIANTS) and, for SECOND_VARIANTS, the graph without the mirror."""
    rows: dict[str, dict[str, list]] = {}
    for image, truth, boxes in boxes_of(catfaces["served"], faces):
        for kind, box in boxes.items():
            for name, (catface, variant) in variants.items():
                pred = looks(catfaces[catface], image, box, variant)
                rows.setdefault(name, {}).setdefault(kind, []).append(point_errors(pred, truth)[:2])
    return mean_errors(rows)


def better_than(table: dict, base: dict, names) -> list[str]:
    return [name for name in names if all(table[name][kind][k] < base[kind][k]
                                          for kind in base for k in ("nme_9pt_interocular", "error_5pt_of_box"))]


def main():
    args = study_args()
    catfaces = {"served": load(args.models, args.threads)}
    variants = {name: ("served", v) for name, v in VARIANTS.items()}
    if args.plain:
        catfaces["plain"] = load(args.plain, args.threads)
        variants = {"one look": variants["one look"], **{name: ("plain", v) for name, v in SECOND_VARIANTS.items()}}
    faces = held_out_faces(args.data / "crawford")
    table = measure(catfaces, faces, variants)
    print(json.dumps(table, indent=1))
    base = table["one look"]
    if args.plain:
        check = all(abs(table[SECOND_CHECK][kind][k] - base[kind][k]) <= 1e-4 for kind in base for k in base[kind])
        better = better_than(table, base, [n for n in SECOND_VARIANTS if n != SECOND_CHECK])
        order = sorted(better, key=lambda n: table[n]["detected box"]["error_5pt_of_box"])
        stem = "landmarks-scales-plain"
        record = {"rule_set_beforehand": SECOND_RULE, "faces": len(faces), "selection": table,
                  "mirror_in_the_service_rebuilds_the_served_answer": check, "better_on_all_four": better,
                  "order": order}
    else:
        better = better_than(table, base, [n for n in table if n != "one look"])
        order = sorted(better, key=lambda n: table[n]["detected box"]["error_5pt_of_box"])[:1]
        stem = "landmarks-scales"
        record = {"rule_set_beforehand": RULE, "faces": len(faces), "selection": table,
                  "better_on_all_four": better, "chosen": order[0] if order else None}
    out = write_study(stem, record)
    print(f"better on all four: {better}; in order: {order}; wrote {out}")


if __name__ == "__main__":
    main()
