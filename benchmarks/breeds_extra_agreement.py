"""How often /breeds' top breed agrees with the owners' labels of cat-breeds-extra, for model folders.

catbreeds learns only the cat output from cat-breeds-extra (train_breeds --extra cat): the owners'
breed labels were never trained on, so these 2,094 photos can choose between classifiers of that
recipe without the validation split. The labels are noisy (an owner's sense of a breed is not
Oxford's), so only differences between models mean something, not the level.

    python benchmarks/breeds_extra_agreement.py --data ../shared/data models runs/models-candidate

--ensemble also scores the mean of the folders' product-rule probabilities (every classifier on the
rows cut around the first folder's faces; a diagnostic: several networks cannot ship, issue 13's
Core ML file must stay under 12 MB). It asks whether the runs' disagreement is where the errors
are: an ensemble far ahead of its members would make distilling it worth a run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from service.pipeline import load  # noqa: E402
from training.metrics import breed_metrics  # noqa: E402
from training.train_breeds import datasets  # noqa: E402


def agreement(models: Path, photos: list[tuple[Path, int]], threads: int) -> dict:
    """/breeds' answers (CatFace.classify) against the labels: breed_metrics of the product rule,
    an answer without breeds counted as wrong."""
    catface = load(models, threads)
    picks = []
    for path, _ in photos:
        (answer,) = catface.classify([Image.open(path).convert("RGB")])
        picks.append(catface.breed_labels.index(answer.breeds[0][0]) if answer.cat and answer.breeds else -1)
    return scored(np.array(picks), photos)


def scored(picks: np.ndarray, photos: list[tuple[Path, int]]) -> dict:
    """Picked breed indices (-1: no answer) against the photos' labels: right, and breed_metrics."""
    labels = np.array([b for _, b in photos])
    table = breed_metrics(picks, labels)
    return {"right": int((picks == labels).sum()), **{k: v for k, v in table.items() if k != "confusion"}}


def ensemble_agreement(folders: list[Path], photos: list[tuple[Path, int]], threads: int) -> dict:
    """The product rule's photo probabilities of each folder's classifier, averaged, against the labels."""
    catfaces = [load(folder, threads) for folder in folders]
    mean = []
    for path, _ in photos:
        image = Image.open(path).convert("RGB")
        (faces,) = catfaces[0].faces([image], zoom=False)
        rows = catfaces[0].breed_inputs(image, faces)
        mean.append(np.mean([c.photo_probabilities(c.classifier.run(rows)[0]) for c in catfaces], axis=0))
    return scored(np.argmax(mean, axis=1), photos)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="model folders (a manifest and its files)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ensemble", action="store_true", help="also the mean of the folders' probabilities")
    args = parser.parse_args()
    _, extra, _ = datasets(args.data)
    for folder in args.folders:
        print(json.dumps({"models": str(folder), **agreement(folder, extra, args.threads)}), flush=True)
    if args.ensemble:
        print(json.dumps({"ensemble": [str(f) for f in args.folders],
                          **ensemble_agreement(args.folders, extra, args.threads)}), flush=True)


if __name__ == "__main__":
    main()
