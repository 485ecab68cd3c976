"""Choose which views of the whole photo /breeds averages, on the selection folds of the Oxford
TRAINING photos, never on validation: the full photo alone (served), or the full photo and a
centre crop of it (the coat at a higher resolution). Each fold is scored by a
`train_breeds --select FOLD` run, which trained without that fold; its checkpoint runs here as
the exported graph does (each view averaged with its mirror), on the rows the service cuts
(CatFace.breed_inputs), with the faces the shipped detector's whole-photo pass finds (as /breeds).

    python -m training.select_photo_views runs/fold0-small runs/fold1-small --models models \
        --out benchmarks/results/breeds-photo-views-2026-12-03.json

Prints, per candidate, the photos right per fold and pooled, and the pooled recall of every
breed; adds them to --out (a results file holding the rule written before the runs).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from service import geometry
from service.pipeline import load

from .metrics import fold_summary
from .nets import CatBreedClassifier, EfficientNetLite0
from .train_breeds import product_rule

SHARES = (None, 0.875, 0.7)  # None: the full photo alone (served); else full + that centre crop


def fold_model(run: Path) -> CatBreedClassifier:
    checkpoint = torch.load(run / "checkpoint.pt", map_location="cpu")
    model = CatBreedClassifier(EfficientNetLite0(checkpoint["backbone"]))
    model.load_state_dict(checkpoint["model"])
    model.flip_average = True  # as 2.1.0 was exported (what this study measured; 2.2.0: export.MIRROR)
    return model.eval()


@torch.no_grad()
def fold_probabilities(model, catface, paths) -> dict:
    """Per photo: the face crop's breed probabilities (NaN unless exactly one face: the product
    rule's case), the full photo's, and each centre crop's."""
    out: dict = {"face": [], "full": [], **{share: [] for share in SHARES if share}}
    for path in paths:
        image = Image.open(path).convert("RGB")
        faces = catface.faces([image], zoom=False)[0]
        rows = catface.breed_inputs(image, faces)  # face crops, then the full photo
        centres = [catface.breed_input(image.crop(geometry.centre_box(image.size, s))) for s in SHARES if s]
        probabilities, _ = model(torch.from_numpy(np.concatenate([rows, np.stack(centres)]).astype(np.float32)))
        p = probabilities.numpy()
        out["face"].append(p[0] if len(faces) == 1 else np.full(p.shape[1], np.nan))
        out["full"].append(p[len(faces)])
        for k, share in enumerate(s for s in SHARES if s):
            out[share].append(p[len(faces) + 1 + k])
    return {k: np.array(v) for k, v in out.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="train_breeds --select runs, one per fold")
    parser.add_argument("--models", type=Path, default=Path("models"), help="the detector that finds the faces")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    catface = load(args.models, args.threads)
    folds = []
    for run in args.runs:
        kept = np.load(run / "selection_probabilities.npz")
        folds.append({**fold_probabilities(fold_model(run), catface, [Path(p) for p in kept["paths"]]),
                      "labels": kept["labels"]})
        print(f"{run}: {len(kept['labels'])} photos", flush=True)
    table = {}
    for share in SHARES:
        name = "full" if share is None else f"full + centre {share}"
        photo = [f["full"] if share is None else (f["full"] + f[share]) / 2 for f in folds]
        predicted = [product_rule(p, f["face"]).argmax(1) for p, f in zip(photo, folds)]
        row = table[name] = fold_summary(predicted, [f["labels"] for f in folds])
        print(f"{name}: {row['right']}/{row['photos']} right {row['right_per_fold']}, macro F1 "
              f"{row['macro_f1']:.4f}, lowest {row['lowest_breed']}")
    if args.out:
        report = json.loads(args.out.read_text()) if args.out.exists() else {}
        report["folds"] = {"runs": [str(r) for r in args.runs], "candidates": table}
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
