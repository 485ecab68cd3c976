"""Pseudo-labels: 9 landmarks for the cat faces of training photos that have none, so the
detector learns faces from more than Crawford's one photographer.

    python -m training.pseudo_labels --data ../shared/data --models models --out runs/labels

Photos: Oxford-IIIT trainval cats of the training split, cat-breeds-extra (training only) and
cat-faces-voc's training split; never a validation photo.

Candidates for a face: the shipped detector's boxes at a low threshold, and the boxes people
drew (cat-faces-voc `cat_face`, Oxford head boxes). For each candidate the shipped landmarker
places the 9 points on the service's own crop, then again on the crop around those points (the
label is the second answer, whose box is our convention by construction). A candidate becomes a
label only when it passes checks that do not trust either model alone:

- found twice: a detector box is also found in the mirrored photo (a drawn box counts as found);
- stable points: the two crops' answers agree (mean distance <= STABLE x the face's side);
- the two models agree: the points' box overlaps the candidate box (IoU >= AGREE, looser for
  drawn boxes, which are drawn without the ears);
- plausible geometry: eyes apart, and the mouth on the other side of the eye line from the ears.

A photo is kept only when every detector candidate is a label or overlaps one: a rejected box
might be a face, and training would call it background. Photos with no label are listed in
missed.txt (exactly the faces we miss) and are not used. --sheets draws every breed's labels
and the missed photos as contact sheets, to look at before training on them.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from service.detection import iou, select_faces
from service.pipeline import CatFace, Face, load

from . import data
from .train_breeds import datasets as breed_datasets

LOW = 0.3  # detector score for a candidate (the service serves 0.6)
STABLE = 0.08
AGREE, AGREE_DRAWN = 0.5, 0.3
MIN_EYES = 0.15  # interocular distance, as a share of the face's side


def photos(data_dir: Path) -> list[tuple[str, str, Path, list[np.ndarray]]]:
    """(source, breed or "", path, drawn boxes) for every training photo without landmarks."""
    out = []
    train, extra, _ = breed_datasets(data_dir)
    heads = {p.path: p.head_box for p in data.oxford_pets(data_dir / "oxford-iiit-pet") if p.head_box is not None}
    out += [("oxford", data.BREEDS[b], p, [heads[p]] if p in heads else []) for p, b in train]
    out += [("extra", data.BREEDS[b], p, []) for p, b in extra]
    voc = data_dir / "cat-faces-voc"
    if voc.exists():
        out += [("voc", "", p, boxes) for p, boxes in data.cat_faces_voc(voc)
                if data.split_of("voc/" + p.stem) == "train"]
    return out


def detector_boxes(catface: CatFace, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    (s,), (b,) = catface.detector.run(catface.detector_input(image)[None])
    kept, scores = select_faces(s, b, LOW, catface.iou_threshold, catface.containment, catface.max_faces)
    return kept * [image.width, image.height, image.width, image.height], scores


def points_in(catface: CatFace, image: Image.Image, box: np.ndarray) -> np.ndarray:
    return catface.face_points(image, Face(np.asarray(box, np.float32), 1.0))


def plausible(points: np.ndarray) -> bool:
    side = max(np.ptp(points[:, 0]), np.ptp(points[:, 1]), 1e-6)
    left, right, mouth = points[0], points[1], points[2]
    if np.linalg.norm(right - left) < MIN_EYES * side:
        return False
    eye_line = right - left
    side_of = lambda p: np.sign(eye_line[0] * (p[1] - left[1]) - eye_line[1] * (p[0] - left[0]))
    ear_tips = (points[4] + points[7]) / 2
    return bool(side_of(mouth) != side_of(ear_tips) and side_of(mouth) != 0)


def label(catface: CatFace, image: Image.Image, box: np.ndarray, drawn: bool) -> np.ndarray | None:
    """The candidate's 9 points, or None when a check fails."""
    first = points_in(catface, image, box)
    refined = points_in(catface, image, data.landmark_box(first, np.inf, np.inf))
    side = max(np.ptp(refined[:, 0]), np.ptp(refined[:, 1]), 1e-6)
    if np.linalg.norm(first - refined, axis=1).mean() > STABLE * side:
        return None
    own_box = data.landmark_box(refined, image.width, image.height)
    if iou(own_box, np.asarray(box, np.float32)[None])[0] < (AGREE_DRAWN if drawn else AGREE):
        return None
    return refined if plausible(refined) else None


def label_photo(catface: CatFace, image: Image.Image, drawn: list[np.ndarray]) -> tuple[list[np.ndarray], bool]:
    """-> labels, and whether the photo can be trained on (no rejected detector box left over)."""
    boxes, _ = detector_boxes(catface, image)
    mirrored, _ = detector_boxes(catface, ImageOps.mirror(image))
    mirrored = mirrored[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [image.width, 0, image.width, 0]
    labels: list[np.ndarray] = []
    rejected = []
    for box in boxes:
        twice = len(mirrored) and iou(box.astype(np.float32), mirrored.astype(np.float32)).max() >= 0.5
        points = label(catface, image, box, drawn=False) if twice else None
        (labels if points is not None else rejected).append(points if points is not None else box)
    for box in drawn:
        points = label(catface, image, box, drawn=True)
        if points is not None:
            labels.append(points)
    # one label per face: drop a label whose box overlaps an earlier one's
    unique: list[np.ndarray] = []
    for points in labels:
        b = data.landmark_box(points, image.width, image.height)
        if all(iou(b, data.landmark_box(u, image.width, image.height)[None])[0] < 0.3 for u in unique):
            unique.append(points)
    label_boxes = np.array([data.landmark_box(u, image.width, image.height) for u in unique]).reshape(-1, 4)
    leftover = [b for b in rejected if not len(label_boxes) or iou(b.astype(np.float32), label_boxes).max() < 0.3]
    return unique, bool(unique) and not leftover


def read_labels(path: Path, data_dir: Path) -> list[data.CatPhoto]:
    """The usable labelled photos of a labels file, as training photos."""
    rows = json.loads(path.read_text())["photos"]
    return [data.CatPhoto(data_dir / r["path"], r["source"] + "/" + r["path"],
                          [np.array(p, np.float32) for p in r["landmarks"]])
            for r in rows if r["usable"] and r["path"] not in data.TEST_PHOTOS]


def contact_sheet(items: list[tuple[Path, list[np.ndarray]]], out: Path, tile: int = 160, columns: int = 8) -> None:
    rows = max(1, -(-len(items) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * tile), "white")
    for k, (path, faces) in enumerate(items):
        image = Image.open(path).convert("RGB")
        draw = ImageDraw.Draw(image)
        for points in faces:
            draw.rectangle(tuple(data.landmark_box(points, image.width, image.height)), outline=(0, 255, 0), width=2)
            for n, (x, y) in enumerate(points):
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(255, 0, 0) if n < 3 else (255, 255, 0))
        image.thumbnail((tile, tile))
        sheet.paste(image, ((k % columns) * tile, (k // columns) * tile))
    sheet.save(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("runs/labels"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sheets", action="store_true", help="draw contact sheets per breed and of the misses")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    catface = load(args.models, args.threads)
    rows, counts = [], Counter()
    for source, breed, path, drawn in photos(args.data):
        faces, usable = label_photo(catface, Image.open(path).convert("RGB"), drawn)
        rows.append({"path": str(path.relative_to(args.data)), "source": source, "breed": breed, "usable": usable,
                     "landmarks": [f.round(1).tolist() for f in faces]})
        counts[(source, "photos")] += 1
        counts[(source, "usable photos")] += usable
        counts[(source, "faces")] += len(faces) if usable else 0
        counts[(source, "no label")] += not faces
    summary = {f"{s}: {k}": v for (s, k), v in sorted(counts.items())}
    (args.out / "faces.json").write_text(json.dumps({"summary": summary, "photos": rows}) + "\n")
    (args.out / "missed.txt").write_text("".join(r["path"] + "\n" for r in rows if not r["landmarks"]))
    print(json.dumps(summary, indent=1))
    if args.sheets:
        rng = np.random.default_rng(0)
        for breed in sorted({r["breed"] for r in rows}):
            kept = [r for r in rows if r["breed"] == breed and r["usable"]]
            pick = [kept[i] for i in rng.choice(len(kept), min(24, len(kept)), replace=False)]
            contact_sheet([(args.data / r["path"], [np.array(p) for p in r["landmarks"]]) for r in pick],
                          args.out / f"sheet-{(breed or 'voc').replace(' ', '_')}.png")
        missed = [r for r in rows if not r["landmarks"]]
        contact_sheet([(args.data / r["path"], []) for r in missed[:96]], args.out / "sheet-missed.png")


if __name__ == "__main__":
    main()
