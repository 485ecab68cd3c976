"""Choose the product rule's weight of the face crop (against the whole photo, when one face is
found) on the selection folds of the Oxford TRAINING photos, never on validation: each fold's
probabilities come from a `train_breeds --select FOLD` run, which trained without that fold and
kept them (selection_probabilities.npz).

    python -m training.select_face_weight runs/fold0-small runs/fold1-small \
        --out benchmarks/results/breeds-face-weight-2026-12-03.json

Prints, per weight, the photos right per fold and pooled, and the pooled recall of every breed;
adds them to --out (a results file holding the rule written before the runs).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import data
from .metrics import fold_summary
from .train_breeds import FACE_WEIGHT, product_rule

WEIGHTS = (FACE_WEIGHT, 0.25, 0.0)  # the served rule's first; 0.0: the whole photo alone (a diagnostic)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="train_breeds --select runs, one per fold")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    folds = [np.load(run / "selection_probabilities.npz") for run in args.runs]
    table = {}
    for weight in WEIGHTS:
        predicted = [product_rule(f["whole"], f["face"], weight).argmax(1) for f in folds]
        row = table[str(weight)] = fold_summary(predicted, [f["labels"] for f in folds])
        print(f"face weight {weight}: {row['right']}/{row['photos']} right {row['right_per_fold']}, macro F1 "
              f"{row['macro_f1']:.4f}, lowest {row['lowest_breed']}")
    with_face = sum(int((~np.isnan(f["face"][:, 0])).sum()) for f in folds)
    print(f"({with_face} of {sum(len(f['labels']) for f in folds)} photos with a face; breeds {len(data.BREEDS)})")
    if args.out:
        report = json.loads(args.out.read_text()) if args.out.exists() else {}
        report["folds"] = {"runs": [str(r) for r in args.runs], "photos_with_a_face": with_face, "weights": table}
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
