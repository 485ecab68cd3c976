"""What the detector's closer looks cost against what they find, on select_zoom's TRAINING photos:
per candidate rule, /detect's lines (as select_zoom prints them) and the detector rows it ran past
the whole-photo look. Issue 12's cost line is mostly these rows (benchmarks/bench_models.py).

    python benchmarks/zoom_cost.py [--data ../shared/data] [--models models] > runs/zoom-cost.jsonl

The candidates of 2026-12-03 (benchmarks/results/zoom-cost-2026-12-03.json): the small-face tiles
from a lower face size (below_px), 2x2 instead of 3x3 (grid_small), or 2x2 from `graded` px up and
3x3 below it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import service.pipeline  # noqa: E402
from benchmarks.bench_models import counting_rows  # noqa: E402
from service.detection import zoom_grid  # noqa: E402
from service.pipeline import load  # noqa: E402
from training.evaluate import WIDE_FRAME, WIDE_GRID, boxes_found, detection_table, small_faces_recall  # noqa: E402
from training.select_zoom import photo_sets  # noqa: E402

CANDIDATES = [("shipped", {}, None), ("below40", {"below_px": 40}, None), ("below32", {"below_px": 32}, None),
              ("grid2", {"grid_small": 2}, None), ("graded28", {}, 28), ("graded24", {}, 24)]


def graded(from_px: float):
    """zoom_grid, but 2x2 small-face tiles when the smallest face is from `from_px` up."""
    def grid(sides, below, grid_none, grid_small):
        g = zoom_grid(sides, below, grid_none, grid_small)
        return 2 if g == grid_small and float(np.min(sides)) >= from_px else g
    return grid


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    catface = load(args.models, args.threads)
    shipped = dict(catface.zoom)
    cats, dogs, oxford = photo_sets(args.data)
    served = boxes_found(catface)
    for name, zoom, from_px in CANDIDATES:
        catface.zoom = {**shipped, **zoom}
        service.pipeline.zoom_grid = graded(from_px) if from_px else zoom_grid
        print(json.dumps(measure(catface, name, cats, dogs, oxford, served)), flush=True)


def measure(catface, name: str, cats, dogs, oxford, served) -> dict:
    """/detect's lines on select_zoom's training photos (as select_zoom prints them) and the
    detector rows run past each photo's one whole-photo row."""
    with counting_rows(catface) as rows:
        table = detection_table(name, cats, dogs, served)
    row = {"name": name, **{k: table[k] for k in ("recall_iou50", "precision_iou50", "false_faces_per_dog_photo",
                                                   "photos_with_two_boxes_on_one_face")}}
    row["cat_dog_extra_rows"] = rows[0] - len(cats) - len(dogs)
    with counting_rows(catface) as rows:
        faces = np.array([len(served(Image.open(p).convert("RGB"))) for p, _ in oxford])
    row["oxford_extra_rows_per_photo"] = (rows[0] - len(oxford)) / len(oxford)
    row["oxford_with_a_face"] = float(np.mean(faces > 0))
    row["oxford_with_several_faces"] = int((faces > 1).sum())
    row["small_faces_recall"] = small_faces_recall(cats, dogs, served)["recall_iou50"]
    row["small_faces_wide_recall"] = small_faces_recall(cats, dogs, served, frame=WIDE_FRAME,
                                                        grid=WIDE_GRID)["recall_iou50"]
    return row


if __name__ == "__main__":
    main()
