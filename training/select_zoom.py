"""Choose the detector's closer looks (contract.ZOOM_*) on TRAINING-split photos only:
each candidate pair of grids runs through the service's own pipeline (CatFace.detect, cat
check included) on Crawford training cats and dogs, mosaics of small faces made from them, and
Oxford training cat photos. Writes models/zoom_selection.json, which the model card shows.

    python -m training.select_zoom --data ../shared/data --models models
    python -m training.select_zoom --models runs/models-new --shipped-only --out runs/new-zoom.json

--shipped-only measures the manifest's own closer look alone on the same photos: how a new detector
compares with the shipped one before any validation run. A detector trained on these photos looks
better on them than on new ones (a retrained catface passed such a gate and then lost small faces on
validation), so runs are compared with --select: both trained with train_detector --select and
measured on the selection part neither saw. The validation split never enters: evaluate.py
reports the chosen rule there.

    python -m training.select_zoom --models runs/models-a --shipped-only --select --out runs/a-zoom.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from service.pipeline import load

from .evaluate import boxes_found, detection_table, small_faces_recall
from .train_breeds import datasets as breed_datasets
from .train_breeds import labelled_photos, splits
from .train_detector import hold_out_selection, split_sources

# Each candidate overrides the manifest's postprocess.zoom: grids = tiles a side after a small face
# and after no face (0 = no tiles); candidates_from = the looks whose half-seen boxes get a window of
# their own ([] = none); window = that window's side in boxes; score = where half-seen starts.
NO_WINDOWS = {"candidates_from": []}
CANDIDATES = [
    {"grid_small": 0, "grid_none": 0, **NO_WINDOWS},
    {"grid_small": 3, "grid_none": 0, **NO_WINDOWS},
    {"grid_small": 2, "grid_none": 2, **NO_WINDOWS},
    {"grid_small": 3, "grid_none": 2, **NO_WINDOWS},
    {"grid_small": 3, "grid_none": 3, **NO_WINDOWS},
    *({"grid_small": 3, "grid_none": 2, "candidates_from": looks, "candidate_window": window, "candidate_score": 0.3}
      for looks, window in ((["photo"], 3), (["photo"], 4), (["photo", "small"], 4), (["photo", "small", "none"], 4))),
    *({"grid_small": grid, "grid_none": 2, "candidates_from": ["photo", "small"], "candidate_window": 4,
       "candidate_score": score} for grid, score in ((3, 0.2), (3, 0.15), (4, 0.2))),
]
RULE = ("Chosen: grids (3, 2), windows of 4 around the boxes scored from 0.2 up that the whole photo's look and the "
        "small-face tiles half-saw. Tiles alone: (3, 2) gains small faces, Oxford coverage and Crawford recall against "
        "no closer look and keeps precision >= 0.98 and false faces per dog photo <= 0.01; (3, 3) gains a little more "
        "small-face recall but loses Oxford coverage, precision and dogs, at 9 instead of 4 tiles per photo without a "
        "face. The windows add small faces and Oxford coverage; those of the no-face tiles raise the false faces on "
        "dogs and lower precision, so they are left out. Half-seen from 0.2 instead of 0.3 gains small faces and "
        "Crawford recall for one more false face in 400 dog photos, precision kept; from 0.15 costs dogs and "
        "precision for no more; 4x4 small-face tiles add a point of small-face recall but cost precision, at 16 "
        "instead of 9 tiles.")


def photo_sets(data_dir: Path, select: bool = False) -> tuple[list, list, list]:
    """Crawford cat photos, dog photos and Oxford cat photos (path, breed) of the training split
    that closer looks are chosen on: a fixed draw of 250, 400 and 300, or with `select` every photo
    of the selection part."""
    rng = np.random.default_rng(1)
    cats, dogs = split_sources(data_dir, "train")
    if select:  # every photo of the selection part, which --select runs did not train on
        _, _, cats, dogs = hold_out_selection(data_dir, cats, dogs)  # Crawford sessions and dogs
        pets, extra, groups = labelled_photos(data_dir)
        return cats, dogs, splits(pets, extra, groups, select=0)[2]
    cats = [cats[i] for i in sorted(rng.choice(len(cats), 250, replace=False))]
    dogs = [dogs[i] for i in sorted(rng.choice(len(dogs), 400, replace=False))]
    oxford, _, _ = breed_datasets(data_dir)  # Oxford *training* cat photos
    return cats, dogs, [oxford[i] for i in sorted(rng.choice(len(oxford), 300, replace=False))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shipped-only", action="store_true", help="only the manifest's closer look")
    parser.add_argument("--select", action="store_true",
                        help="measure on the selection part (train_detector --select runs never trained on it)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <models>/zoom_selection.json)")
    args = parser.parse_args(argv)
    catface = load(args.models, args.threads)
    shipped = dict(catface.zoom)
    cats, dogs, oxford = photo_sets(args.data, args.select)
    served = boxes_found(catface)  # what /detect answers
    out = []
    for candidate in [{}] if args.shipped_only else CANDIDATES:
        catface.zoom = {**shipped, **candidate}
        row = detection_table(json.dumps(candidate), cats, dogs, served)
        row = {"zoom": candidate, **{k: row[k] for k in (
            "recall_iou50", "precision_iou50", "false_faces_per_dog_photo", "photos_with_two_boxes_on_one_face")}}
        row["small_faces_recall"] = small_faces_recall(cats, dogs, served)["recall_iou50"]
        faces = np.array([len(served(Image.open(p).convert("RGB"))) for p, _ in oxford])
        row["oxford_with_a_face"] = float(np.mean(faces > 0))
        row["oxford_with_several_faces"] = int((faces > 1).sum())  # (most show one cat: extra boxes)
        print(json.dumps(row), flush=True)
        out.append(row)
    photos = f"{len(cats)} Crawford cat photos, {len(dogs)} dog photos, {len(oxford)} Oxford cat photos"
    (args.out or args.models / "zoom_selection.json").write_text(json.dumps(
        {"split": "train: selection part" if args.select else "train", "photos": photos, "shipped": shipped,
         "detector": f"catface {catface.detector.entry['version']}",
         "cat_check": f"catbreeds {catface.classifier.entry['version']}", "candidates": out,
         "rule": None if args.shipped_only else RULE},
        indent=1) + "\n")


if __name__ == "__main__":
    main()
