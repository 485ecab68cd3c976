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

    python benchmarks/landmarks_scales.py --data ../shared/data --models models
"""
from __future__ import annotations

import datetime
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.landmarks_second_look import look  # noqa: E402
from benchmarks.zoom_sizes import study_args  # noqa: E402
from service.pipeline import CatFace, load  # noqa: E402
from training import data  # noqa: E402
from training.evaluate import match, point_errors  # noqa: E402
from training.select_landmarks import held_out_faces  # noqa: E402

VARIANTS = {"one look": (1.0,), "scales 0.9-1.1": (0.9, 1.0, 1.1), "scales 0.95/1.05": (0.95, 1.05)}

RULE = ("Set before the run. Selection (these faces): a variant goes on only if it is better than one look on "
        "all four numbers (true-box 5-point error and 9-point NME, detected-box 5-point error and 9-point NME); "
        "of those, the one with the lower detected-box 5-point error (what /detect serves). Then it is built into "
        "the service and issue 12's cost line (bench_models.py --baseline, detector + landmarks per photo) must "
        "stay <= 1.5x; only then one validation run (training.evaluate with the variant served): it ships only if "
        "true-box 5-point < 0.0175 AND true-box 9-point NME <= 0.069575 AND detected-box 5-point <= 0.018989 AND "
        "detected-box 9-point NME <= 0.073537 (catlandmarks 1.0.0 with one look) and every /detect line unchanged.")


def looks(catface: CatFace, image: Image.Image, box: np.ndarray, scales: tuple[float, ...]) -> np.ndarray:
    served = catface.crop_scale
    try:
        points = []
        for s in scales:
            catface.crop_scale = served * s
            points.append(look(catface, image, box))
    finally:
        catface.crop_scale = served
    return np.mean(points, axis=0)


def main():
    args = study_args()
    catface = load(args.models, args.threads)
    faces = held_out_faces(args.data / "crawford")
    rows: dict[str, dict[str, list]] = {}
    for photo in faces:
        image = Image.open(photo.path).convert("RGB")
        truth = photo.landmarks[0]
        boxes = {"true box": data.landmark_box(truth, math.inf, math.inf)}
        detected = catface.detect([image], breeds=False)[0]
        j = match([data.landmark_box(truth, image.width, image.height)], [f.box for f in detected])[0]
        if j is not None:
            boxes["detected box"] = detected[j].box
        for kind, box in boxes.items():
            for name, scales in VARIANTS.items():
                pred = looks(catface, image, box, scales)
                rows.setdefault(name, {}).setdefault(kind, []).append(point_errors(pred, truth)[:2])
    table = {name: {kind: {"faces": len(r), "nme_9pt_interocular": round(float(np.mean([a for a, _ in r])), 6),
                           "error_5pt_of_box": round(float(np.mean([b for _, b in r])), 6)}
                    for kind, r in kinds.items()} for name, kinds in rows.items()}
    print(json.dumps(table, indent=1))
    base = table["one look"]
    better = [name for name in table if name != "one look" and all(
        table[name][kind][k] < base[kind][k] for kind in base for k in ("nme_9pt_interocular", "error_5pt_of_box"))]
    chosen = min(better, key=lambda n: table[n]["detected box"]["error_5pt_of_box"]) if better else None
    date = datetime.date.today().isoformat()
    out = REPO / "benchmarks" / "results" / f"landmarks-scales-{date}.json"
    out.write_text(json.dumps({"date": date, "rule_set_beforehand": RULE, "faces": len(faces), "selection": table,
                               "better_on_all_four": better, "chosen": chosen}, indent=1) + "\n")
    print(f"better on all four: {better}; chosen: {chosen}; wrote {out}")


if __name__ == "__main__":
    main()
