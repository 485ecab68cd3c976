"""Compare catlandmarks checkpoints on Crawford faces that no run trained on and that validation
does not hold: the photos on cleaning.json's `remove` list (several cats with one labelled, or
edited), which data.crawford leaves out of every split. Near-duplicates of any photo in the splits
are dropped, so a face seen in training cannot count. Each face is measured as evaluate.py
measures validation: cropped from its true box and from the detector's matched box.

    python -m training.select_landmarks --data ../shared/data --models models \
        runs/landmarks-1.0.0/checkpoint.pt runs/lm-soup/soup.pt

Choosing between landmark networks here leaves the validation split to report the choice.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from service.pipeline import load

from . import data
from .evaluate import landmark_errors
from .export import load_checkpoint
from .nets import CatLandmarker


def held_out_faces(crawford: Path) -> list[data.CatPhoto]:
    """The labelled cat of each photo on the cleaning list's `remove` list, near-duplicates of
    photos in the splits left out."""
    cleaning = json.loads((crawford / "cleaning.json").read_text())
    removed = [crawford / folder / name for folder, names in cleaning["remove"].items() for name in names
               if (crawford / folder / name).exists() and (crawford / folder / (name + ".cat")).exists()]
    used = [p.path for p in data.crawford(crawford)]
    groups = data.near_duplicate_groups(used + removed)
    used_groups = {groups[p] for p in used}
    return [data.CatPhoto(p, "crawford-removed/" + p.name, [data.read_cat_file(p.with_name(p.name + ".cat"))])
            for p in removed if groups[p] not in used_groups]


class TorchLandmarker:
    """A checkpoint behind OnnxModel's interface (run, input_size, entry), as exported (export.MIRROR),
    seen through the served model's looks (its manifest entry)."""

    def __init__(self, path: Path, onnx_model):
        self.model, size = load_checkpoint(CatLandmarker, path)
        self.input_size, self.entry = (size, size), onnx_model.entry

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [self.model(torch.from_numpy(np.asarray(batch, np.float32))).numpy()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="+", help="train_landmarks checkpoint.pt files")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--models", type=Path, default=Path("models"), help="the detector that finds the boxes")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    faces = held_out_faces(args.data / "crawford")
    print(f"{len(faces)} held-out faces", flush=True)
    catface = load(args.models, args.threads)
    served = catface.landmarker
    for path in args.checkpoints:
        catface.landmarker = TorchLandmarker(path, served)
        errors = landmark_errors(catface, faces)
        print(json.dumps({"checkpoint": str(path), **{kind: {k: round(v, 6) if isinstance(v, float) else v
                                                              for k, v in e.items() if k != "per_point_nme"}
                                                       for kind, e in errors.items()}}), flush=True)


if __name__ == "__main__":
    main()
