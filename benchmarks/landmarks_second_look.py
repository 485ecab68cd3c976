"""A second landmark look: cut the landmark crop again around the box of the first look's points.

catlandmarks learned on crops cut around the box of a face's true points (train_landmarks), and it
is served crops cut around the detector's box, a rougher guess at that box: validation's 5-point
error is 1.75% from the true box and 1.90% from the detected one (models/MODEL_CARD.md). The box
of the first look's own points should be a closer guess. Variants, each with the served models:
  one look      the crop around the given box (served)
  second look   the points of the crop around the box of the first look's points
  both looks    the mean of the two looks' points

Measured on training.select_landmarks' faces (Crawford photos on cleaning.json's remove list: no
run trained on them, validation does not hold them), from the true box and from the detector's
matched box, as training.evaluate measures validation.

    python benchmarks/landmarks_second_look.py --data ../shared/data --models models
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.zoom_sizes import study_args, write_study  # noqa: E402
from service.pipeline import CatFace, load  # noqa: E402
from training import data  # noqa: E402
from training.evaluate import match, point_errors  # noqa: E402
from training.pseudo_labels import points_in  # noqa: E402
from training.select_landmarks import held_out_faces  # noqa: E402

RULE = ("Set before the run. Selection (these faces): a variant goes on only if it is better than one look on "
        "all four numbers (true-box 5-point error and 9-point NME, detected-box 5-point error and 9-point NME); "
        "of those, the one with the lower detected-box 5-point error (what /detect serves). Then one validation run "
        "(training.evaluate with the variant served): it ships only if true-box 5-point < 0.0175 AND true-box "
        "9-point NME <= 0.069575 AND detected-box 5-point <= 0.018989 AND detected-box 9-point NME <= 0.073537 "
        "(catlandmarks 1.0.0 with one look), every /detect line unchanged, and issue 12's cost line "
        "(bench_models.py --baseline, detector + landmarks per photo) stays <= 1.5x.")


def variants(catface: CatFace, image: Image.Image, box: np.ndarray) -> dict[str, np.ndarray]:
    first = points_in(catface, image, box)
    second = points_in(catface, image, data.landmark_box(first, math.inf, math.inf))
    return {"one look": first, "second look": second, "both looks": (first + second) / 2}


def boxes_of(catface: CatFace, faces: list[data.CatPhoto]):
    """Each held-out face's photo, its true points, and the boxes it is measured from: its true box,
    and the detector's matched box where it found one (as training.evaluate measures validation)."""
    for photo in faces:
        image = Image.open(photo.path).convert("RGB")
        truth = photo.landmarks[0]
        boxes = {"true box": data.landmark_box(truth, math.inf, math.inf)}
        detected = catface.detect([image], breeds=False)[0]
        j = match([data.landmark_box(truth, image.width, image.height)], [f.box for f in detected])[0]
        if j is not None:
            boxes["detected box"] = detected[j].box
        yield image, truth, boxes


def mean_errors(rows: dict[str, dict[str, list]]) -> dict:
    """Per variant and box kind: the faces and the mean 9-point NME and 5-point error of (nme, error) rows."""
    return {name: {kind: {"faces": len(r), "nme_9pt_interocular": round(float(np.mean([a for a, _ in r])), 6),
                          "error_5pt_of_box": round(float(np.mean([b for _, b in r])), 6)}
                   for kind, r in kinds.items()} for name, kinds in rows.items()}


def main():
    args = study_args()
    catface = load(args.models, args.threads)
    faces = held_out_faces(args.data / "crawford")
    rows: dict[str, dict[str, list]] = {}
    for image, truth, boxes in boxes_of(catface, faces):
        for kind, box in boxes.items():
            for name, pred in variants(catface, image, box).items():
                rows.setdefault(name, {}).setdefault(kind, []).append(point_errors(pred, truth)[:2])
    table = mean_errors(rows)
    print(json.dumps(table, indent=1))
    base = table["one look"]
    better = [name for name in table if name != "one look" and all(
        table[name][kind][k] < base[kind][k] for kind in base for k in ("nme_9pt_interocular", "error_5pt_of_box"))]
    chosen = min(better, key=lambda n: table[n]["detected box"]["error_5pt_of_box"]) if better else None
    out = write_study("landmarks-second-look", {"rule_set_beforehand": RULE, "faces": len(faces), "selection": table,
                                                 "better_on_all_four": better, "chosen": chosen})
    print(f"better on all four: {better}; chosen: {chosen}; wrote {out}")


if __name__ == "__main__":
    main()
