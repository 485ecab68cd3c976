"""Measure the shipped ONNX models (through the service's own pipeline) on the validation split
and write models/MODEL_CARD.md's tables, plus the OpenCV Haar cat cascade on the same photos.

    python -m training.evaluate --data ../shared/data --models models

Validation = the groups that data.split_of() puts aside (15%, by photo session or
near-duplicate cluster). These numbers are validation numbers, not a test set.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from service.detection import intersection, iou, select_faces
from service.pipeline import CatFace, Face, load

from . import data
from .haar import haar_cascade, haar_faces
from .metrics import breed_metrics
from .model_card import draw_confusion, write_card
from .train_breeds import datasets as breed_datasets
from .train_detector import split_sources

FIVE_POINTS = [0, 1, 2, 4, 7]  # eyes, mouth, ear tips: the published anchor's points


ONE_PASS = "catface, one pass (the Core ML detector)"
ZOOMED = "catface + closer look"
SERVED = "catface + closer look + cat check (what /detect answers)"


def boxes_found(catface: CatFace, **how):
    """detect(PIL image) -> the face boxes CatFace.detect(..., **how) answers (the defaults: what
    /detect answers), for the tables below."""
    def detect(image: Image.Image) -> list[np.ndarray]:
        return [f.box for f in catface.detect([image], **how)[0]]
    return detect


def match(truth: list[np.ndarray], found: list[np.ndarray], threshold: float = 0.5) -> list[int | None]:
    """Greedy one-to-one matching by IoU; index of the found box for each true box."""
    taken, out = set(), []
    for t in truth:
        best, best_iou = None, threshold
        for j, f in enumerate(found):
            if j not in taken and (v := iou(t, f[None])[0]) >= best_iou:
                best, best_iou = j, v
        if best is not None:
            taken.add(best)
        out.append(best)
    return out


def covers_face(points: np.ndarray, box: np.ndarray, margin: float = 0.1) -> bool:
    """Convention-free hit: the box, grown by 10% of its size per side, holds both eyes and the
    mouth (the mouth is the lowest landmark, so it sits on the edge of a landmark box)."""
    p = points[:3]
    w, h = box[2] - box[0], box[3] - box[1]
    x0, y0, x1, y1 = box[0] - margin * w, box[1] - margin * h, box[2] + margin * w, box[3] + margin * h
    return bool(np.all((p[:, 0] >= x0) & (p[:, 0] <= x1) & (p[:, 1] >= y0) & (p[:, 1] <= y1)))


def inside_share(box: np.ndarray, found: list[np.ndarray]) -> np.ndarray:
    """For each found box, the share of its area that lies inside `box`."""
    f = np.array(found, np.float32).reshape(-1, 4)
    return intersection(box, f) / np.maximum(np.prod(f[:, 2:] - f[:, :2], axis=1), 1e-9)


def detection_table(name: str, cats, dogs, detect) -> dict:
    """detect(PIL image) -> list of (4,) boxes in pixels."""
    truths = found_total = hits = covered = doubled = 0
    false_on_dogs = 0
    seconds = []
    for photo in cats:
        image = Image.open(photo.path).convert("RGB")
        t0 = time.perf_counter()
        found = detect(image)
        seconds.append(time.perf_counter() - t0)
        boxes = [data.landmark_box(p, image.width, image.height) for p in photo.landmarks]
        matched = match(boxes, found)
        truths += len(boxes)
        found_total += len(found)
        hits += sum(m is not None for m in matched)
        covered += sum(any(covers_face(p, f) for f in found) for p in photo.landmarks)
        # two boxes on one face: two found boxes that each lie mostly (>= half) on the same face
        doubled += any((inside_share(b, found) >= 0.5).sum() >= 2 for b in boxes) if len(found) >= 2 else 0
    for path in dogs:
        image = Image.open(path).convert("RGB")
        false_on_dogs += len(detect(image))
    return {"detector": name, "recall_iou50": hits / truths,
            "precision_iou50": hits / max(found_total + false_on_dogs, 1),
            "face_found_rate": covered / truths, "false_faces_per_dog_photo": false_on_dogs / len(dogs),
            "photos_with_two_boxes_on_one_face": int(doubled), "cat_faces": truths, "dog_photos": len(dogs)}


def mosaic_recall(cats, dogs, detect, count: int = 40, tile: int = 320, seed: int = 0) -> dict:
    """Several cats per photo: 2x2 mosaics of three validation cat photos and a dog photo."""
    rng = np.random.default_rng(seed)
    hits = extra = 0
    for _ in range(count):
        mosaic, truths = Image.new("RGB", (2 * tile, 2 * tile)), []
        for t, i in enumerate(rng.choice(len(cats), 3, replace=False)):
            image = Image.open(cats[i].path).convert("RGB")
            x, y, sx, sy = tile * (t % 2), tile * (t // 2), tile / image.width, tile / image.height
            mosaic.paste(image.resize((tile, tile), Image.BILINEAR), (x, y))
            box = data.landmark_box(cats[i].landmarks[0], image.width, image.height)
            truths.append(box * [sx, sy, sx, sy] + [x, y, x, y])
        mosaic.paste(Image.open(dogs[rng.integers(len(dogs))]).convert("RGB").resize((tile, tile)), (tile, tile))
        found = detect(mosaic)
        matched = sum(m is not None for m in match(truths, found))
        hits += matched
        extra += len(found) - matched
    return {"mosaics": count, "recall_iou50": hits / (3 * count), "extra_boxes_per_mosaic": extra / count}


SMALL_FACE_SIDES = (20, 60)  # px: the small faces the detector issue asks /detect to find
# The same small faces in a wide (16:9) photo, 4 x 2 tiles: the square mosaics cannot show what a
# look at the photo's own aspect ratio does to them (benchmarks/zoom_aspect_whole.py).
WIDE_FRAME, WIDE_GRID = (800, 450), (4, 2)


def small_faces_recall(cats, dogs, detect, count: int = 40, frame: tuple[int, int] = (640, 640),
                       grid: tuple[int, int] = (3, 3), face_sides: tuple[int, int] = SMALL_FACE_SIDES,
                       seed: int = 0) -> dict:
    """Many small faces: mosaics of grid = (columns, rows) validation photos in a frame = (width,
    height) px, each photo scaled so its face's longer side is drawn from `face_sides` and centred
    in its tile (one tile per mosaic is a dog). Faces cut by their tile's edge are not counted."""
    rng = np.random.default_rng(seed)
    (width, height), (cols, rows) = frame, grid
    cw, ch = width // cols, height // rows
    hits = truths_total = extra = 0
    for _ in range(count):
        mosaic, truths = Image.new("RGB", (width, height), (128, 128, 128)), []
        dog_tile = rng.integers(cols * rows)
        for t in range(cols * rows):
            x, y = cw * (t % cols), ch * (t // cols)
            if t == dog_tile:
                mosaic.paste(Image.open(dogs[rng.integers(len(dogs))]).convert("RGB").resize((cw, ch)), (x, y))
                continue
            photo = cats[rng.integers(len(cats))]
            image = Image.open(photo.path).convert("RGB")
            face = data.landmark_box(photo.landmarks[0], image.width, image.height)
            k = rng.uniform(*face_sides) / max(face[2] - face[0], face[3] - face[1], 1.0)
            image = image.resize((max(1, round(image.width * k)), max(1, round(image.height * k))), Image.BILINEAR)
            # put the face's centre at the tile's centre, keep only what falls inside the tile
            dx, dy = x + cw / 2 - k * (face[0] + face[2]) / 2, y + ch / 2 - k * (face[1] + face[3]) / 2
            tile = Image.new("RGB", (cw, ch), (128, 128, 128))
            tile.paste(image, (round(dx - x), round(dy - y)))
            mosaic.paste(tile, (x, y))
            box = face * k + [dx, dy, dx, dy]
            if box[0] >= x and box[1] >= y and box[2] <= x + cw and box[3] <= y + ch:
                truths.append(box)
        found = detect(mosaic)
        matched = sum(m is not None for m in match(truths, found))
        hits, truths_total, extra = hits + matched, truths_total + len(truths), extra + len(found) - matched
    shape = f"{width} px" if width == height else f"{width}x{height} px"
    return {"mosaics": count, "tiles": f"{cols}x{rows} at {shape}", "face_sides_px": list(face_sides),
            "faces": truths_total, "recall_iou50": hits / max(truths_total, 1), "extra_boxes_per_mosaic": extra / count}


def kittens_frame(data_dir: Path, scale: float) -> tuple[Image.Image, list[np.ndarray]]:
    """The three kittens (a real photo, held out of training) shrunk by `scale` into the middle
    of an 800x450 frame, and their hand-drawn face boxes in the frame's pixels."""
    path = data_dir / data.KITTENS_PHOTO
    drawn = data.voc_boxes(path.parent.parent / "annotations" / (path.stem + ".xml"), {"cat_face"})
    photo = Image.open(path).convert("RGB")
    frame = Image.new("RGB", (800, 450), (96, 96, 96))
    offset = np.array([(800 - photo.width * scale) // 2, (450 - photo.height * scale) // 2])
    shrunk = photo.resize((round(photo.width * scale), round(photo.height * scale)))
    frame.paste(shrunk, (int(offset[0]), int(offset[1])))
    return frame, [b * scale + np.tile(offset, 2) for b in drawn]


def kittens(data_dir: Path, detect, scales=(1.0, 0.7, 0.5)) -> dict:
    """Three kittens side by side in an 800x450 frame: how many of their hand-drawn face boxes
    hold the centre of exactly one found box."""
    out = {}
    for scale in scales:
        frame, drawn = kittens_frame(data_dir, scale)
        found = detect(frame)
        centres = [((f[:2] + f[2:]) / 2) for f in found]
        hits = sum(sum(bool(np.all(c >= b[:2]) and np.all(c <= b[2:])) for c in centres) == 1 for b in drawn)
        face = float(np.mean([max(b[2] - b[0], b[3] - b[1]) for b in drawn]))
        out[f"{scale:g}"] = {"face_px": round(face), "kittens": len(drawn), "found": int(hits), "boxes": len(found)}
    return out


def threshold_sweep(catface: CatFace, cats, dogs, scores=(0.5, 0.6, 0.7), ious=(0.3, 0.4)) -> list[dict]:
    """The shipped detector under other post-processing settings (the manifest's are among them),
    so the card shows what the chosen thresholds trade. Boxes only: no landmarks are needed."""
    def detector(score: float, nms: float):
        def detect(image: Image.Image) -> list[np.ndarray]:
            (s,), (b,) = catface.detector.run(catface.detector_input(image)[None])
            kept, _ = select_faces(s, b, score, nms, catface.containment, catface.max_faces)
            return list(kept * [image.width, image.height, image.width, image.height])
        return detect

    rows = []
    for score in scores:
        for nms in ious:
            detect = detector(score, nms)
            row = detection_table("catface", cats, dogs, detect)
            rows.append({"score_threshold": score, "iou_threshold": nms, "recall_iou50": row["recall_iou50"],
                         "precision_iou50": row["precision_iou50"],
                         "false_faces_per_dog_photo": row["false_faces_per_dog_photo"],
                         "mosaic_recall_iou50": mosaic_recall(cats, dogs, detect)["recall_iou50"],
                         "small_faces_recall_iou50": small_faces_recall(cats, dogs, detect)["recall_iou50"]})
    return rows


def haar_detector():
    cascade = haar_cascade()
    return lambda image: haar_faces(cascade, np.asarray(image))


def point_errors(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, np.ndarray]:
    """One face's 9-point NME (of the inter-ocular distance), 5-point error (of the true points'
    longer side) and each point's error / inter-ocular distance."""
    err = np.linalg.norm(pred - truth, axis=1)
    iod = np.linalg.norm(truth[0] - truth[1])
    side = max(np.ptp(truth[:, 0]), np.ptp(truth[:, 1]))
    return float(err.mean() / iod), float(err[FIVE_POINTS].mean() / side), err / iod


def landmark_errors(catface: CatFace, cats) -> dict:
    """Errors on validation faces, cropped from the true box (the model alone) and from the
    detector's matched box (the product end to end)."""
    rows = {"true box": [], "detected box": []}
    for photo in cats:
        image = Image.open(photo.path).convert("RGB")
        truth = photo.landmarks[0]
        box = data.landmark_box(truth, math.inf, math.inf)
        detected = catface.detect([image], breeds=False)[0]
        candidates = [("true box", Face(box, 1.0))]
        j = match([data.landmark_box(truth, image.width, image.height)], [f.box for f in detected])[0]
        if j is not None:
            candidates.append(("detected box", detected[j]))
        for kind, face in candidates:
            rows[kind].append(point_errors(catface.face_points(image, face), truth))
    out = {}
    for kind, r in rows.items():
        per_point = np.stack([e for _, _, e in r]).mean(0)
        out[kind] = {"faces": len(r), "nme_9pt_interocular": float(np.mean([a for a, _, _ in r])),
                     "error_5pt_of_box": float(np.mean([b for _, b, _ in r])),
                     "per_point_nme": dict(zip(data.LANDMARK_NAMES, per_point.round(4).tolist()))}
    return out


def faces_per_photo(counts: list[int], breeds: list[int]) -> dict:
    """Cat photos of another collection (Oxford pets: other photographers, often big heads) where
    we have no boxes in our convention: how often /detect finds none, one, or several faces,
    and per breed the share of photos with at least one face."""
    c, b = np.array(counts), np.array(breeds)
    per_breed = {name: {"photos": int((b == i).sum()), "no_face": int(((b == i) & (c == 0)).sum())}
                 for i, name in enumerate(data.BREEDS)}
    return {"photos": len(c), "no_face": int((c == 0).sum()), "one_face": int((c == 1).sum()),
            "several_faces": int((c >= 2).sum()), "with_a_face": float((c > 0).mean()), "per_breed": per_breed}


def breed_evaluation(catface: CatFace, val, dogs: list[Path]) -> tuple[dict, list[int], dict]:
    """The classifier on the whole photo, on the detected face's crop, and as POST /breeds
    answers (CatFace.photo_breeds: every photo, an answer without breeds counts as wrong): the
    measurement behind that rule. Also the faces /detect answers per photo, and how often cat
    photos and dog photos are answered `cat: true`."""
    probs: dict[str, list] = {"whole photo": [], "face crop": []}
    product, counts, cat_answers = [], [], 0
    for path, _ in val:
        image = Image.open(path).convert("RGB")
        faces = catface.faces([image], zoom=False)[0]  # what /breeds looks at (CatFace.classify)
        counts.append(len(catface.detect([image])[0]))  # what /detect answers
        rows, cat = catface.classifier.run(catface.breed_inputs(image, faces))
        probs["whole photo"].append(int(np.argmax(rows[-1])))
        probs["face crop"].append(int(np.argmax(rows[0])))  # no face found: only the photo
        answer = catface.photo_breeds(rows, cat[:, 0])
        cat_answers += answer.cat and bool(answer.breeds)
        product.append(catface.breed_labels.index(answer.breeds[0][0]) if answer.cat and answer.breeds else -1)
    labels = np.array([b for _, b in val])
    tables = {k: breed_metrics(np.array(v), labels) for k, v in probs.items()}
    tables["product rule"] = breed_metrics(np.array(product), labels)
    dog_cats = sum(answer.cat for answer in catface.classify([Image.open(p).convert("RGB") for p in dogs]))
    catness = {"cat_photos": len(val), "cat_photos_answered_cat": cat_answers / len(val),
               "dog_photos": len(dogs), "dog_photos_answered_cat": dog_cats / len(dogs)}
    return tables, counts, catness


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=None, help="where to write eval.json (default: the models dir)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--card-only", action="store_true", help="rewrite MODEL_CARD.md from the saved eval.json")
    args = parser.parse_args(argv)
    out = args.out or args.models
    out.mkdir(parents=True, exist_ok=True)
    if args.card_only:
        write_card(json.loads((out / "eval.json").read_text()), args.models)
        return

    catface = load(args.models, args.threads)
    cats, dogs = split_sources(args.data, "val")
    results = {"validation": {"cat_photos": len(cats), "dog_photos": len(dogs)}}
    detector = partial(boxes_found, catface)
    rows = {ONE_PASS: detector(breeds=False, zoom=False), ZOOMED: detector(breeds=False), SERVED: detector(),
            "OpenCV Haar (frontalcatface_extended)": haar_detector()}
    results["detection"] = []
    for name, detect in rows.items():
        row = detection_table(name, cats, dogs, detect)
        row["mosaic"] = mosaic_recall(cats, dogs, detect)
        row["small_faces"] = small_faces_recall(cats, dogs, detect)
        row["small_faces_wide"] = small_faces_recall(cats, dogs, detect, frame=WIDE_FRAME, grid=WIDE_GRID)
        results["detection"].append(row)
    results["kittens"] = {name: kittens(args.data, rows[name]) for name in (ONE_PASS, SERVED)}
    print(json.dumps(results["detection"], indent=1), flush=True)
    results["detection_alternatives"] = threshold_sweep(catface, cats, dogs)
    print(json.dumps(results["detection_alternatives"], indent=1), flush=True)
    results["landmarks"] = landmark_errors(catface, cats)
    print(json.dumps(results["landmarks"], indent=1), flush=True)
    _, _, val = breed_datasets(args.data)
    results["breeds"], face_counts, results["catness"] = breed_evaluation(catface, val, dogs)
    print(json.dumps(results["catness"]), flush=True)
    results["oxford_cat_photos"] = faces_per_photo(face_counts, [b for _, b in val])
    print(json.dumps(results["oxford_cat_photos"]), flush=True)
    shown = {k: {m: v for m, v in r.items() if m != "confusion"} for k, r in results["breeds"].items()}
    print(json.dumps(shown, indent=1))
    draw_confusion(np.array(results["breeds"]["product rule"]["confusion"]), out / "breeds_confusion.png")
    (out / "eval.json").write_text(json.dumps(results, indent=1) + "\n")
    write_card(results, args.models)


if __name__ == "__main__":
    main()
