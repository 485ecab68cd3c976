"""/breeds with the face crop seen at several sizes, averaged: test-time augmentation over the crop.

With one face found, /breeds (and /detect's breeds of that face) averages the classifier on the face
crop (a square of BREED_CROP_SCALE x the box's longer side) with the whole photo. catlandmarks 1.1.0
gained from averaging looks at several crop sizes (benchmarks/landmarks_scales.py); the same for the
breed crop is measured here. Variants (the crop's probabilities averaged over its sizes, then with the
photo as served; the cat decision stays the served crop's and photo's):
  served           the crop at 1.0 x BREED_CROP_SCALE
  sizes 0.8-1.25   the crops at 0.8, 1.0 and 1.25 x it
  sizes 0.9-1.1    the crops at 0.9, 1.0 and 1.1 x it
Photos with no face or several faces answer from the photo alone, as served, in every variant.

Scored on cat-breeds-extra against its owners' labels, which no catbreeds run trains on (they teach
only its cat output): a selection set for this classifier (benchmarks/breeds_extra_agreement.py).

    python benchmarks/breeds_crop_sizes.py --data ../shared/data --models models
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.breeds_extra_agreement import scored  # noqa: E402
from benchmarks.zoom_sizes import study_args, write_study  # noqa: E402
from service import geometry  # noqa: E402
from service.contract import BREED_CROP_SCALE  # noqa: E402
from service.pipeline import load, model_row  # noqa: E402
from training.train_breeds import datasets  # noqa: E402

VARIANTS = {"served": (1.0,), "sizes 0.8-1.25": (0.8, 1.0, 1.25), "sizes 0.9-1.1": (0.9, 1.0, 1.1)}
MARGIN = 10  # photos right beyond the served rule (the soups' rule: breeds-soup-2026-12-04.json)

RULE = ("Set before the run. Selection (cat-breeds-extra, owners' labels): a variant goes on only if it gets at "
        f"least {MARGIN} more photos right than served AND its Bengal agreement is no lower than served's; of "
        "those, the one with the most right. Then it is built into the service and /breeds' cost "
        "(bench_breeds.py, against catbreeds 1.x) must stay <= 2.0x; then one validation run (training.evaluate "
        "with the variant served): it ships only if every issue-13 line passes (top-1 >= 0.94, macro F1 >= 0.94, "
        "every breed's recall >= 0.85, cats answered >= 0.99, dogs answered cat <= 0.02), top-1 and macro F1 are "
        "no lower than served (0.954, 0.950), and every /detect line is unchanged.")


def main():
    args = study_args()
    catface = load(args.models, args.threads)
    _, extra, _ = datasets(args.data)
    size = catface.classifier.input_size
    picks: dict[str, list[int]] = {name: [] for name in VARIANTS}
    for path, _ in extra:
        image = Image.open(path).convert("RGB")
        (faces,) = catface.faces([image], zoom=False)
        probabilities, cat = catface.classifier.run(catface.breed_inputs(image, faces))
        served = catface.photo_breeds(probabilities, cat[:, 0])
        scales = sorted({s for v in VARIANTS.values() for s in v} - {1.0})
        crops = {1.0: probabilities[0]} if len(faces) == 1 else {}
        if crops:
            rows = [model_row(geometry.warp(image, geometry.square_crop_matrix(faces[0].box, size[0],
                                                                                BREED_CROP_SCALE * s),
                                            (size[1], size[0])), size) for s in scales]
            crops.update(zip(scales, catface.classifier.run(np.stack(rows))[0]))
        for name, sizes in VARIANTS.items():
            if not served.cat:
                picks[name].append(-1)
                continue
            p = (np.mean([crops[s] for s in sizes], axis=0) + probabilities[-1]) / 2 if crops else probabilities[-1]
            picks[name].append(int(np.argmax(p)))
    labels = np.array([b for _, b in extra])
    table = {name: scored(np.array(p), extra) for name, p in picks.items()}
    served_right = table["served"]["right"]
    served_bengal = table["served"]["recall_per_breed"]["Bengal"]
    assert served_right == sum(1 for p, b in zip(picks["served"], labels) if p == b)
    eligible = [n for n in table if n != "served" and table[n]["right"] >= served_right + MARGIN
                and table[n]["recall_per_breed"]["Bengal"] >= served_bengal]
    chosen = max(eligible, key=lambda n: table[n]["right"]) if eligible else None
    print(json.dumps(table, indent=1))
    out = write_study("breeds-crop-sizes", {"rule_set_beforehand": RULE, "photos": len(extra), "selection": table,
                                            "eligible": eligible, "chosen": chosen})
    print(f"eligible: {eligible}; chosen: {chosen}; wrote {out}")


if __name__ == "__main__":
    main()
