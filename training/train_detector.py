"""Train catface, the single-shot cat face detector.

    python -m training.train_detector --data ../shared/data --out runs/detector

    python -m training.train_detector --data ../shared/data --labels runs/labels/faces.json \
        --out runs/detector

Training images are made on the fly: single photos (zoomed, rotated, flipped, recoloured) and
2x2, 3x3 and 4x4 mosaics of cat and dog photos, so the net sees 0..16 faces per image from
about 10 px to the whole image, then the whole image gets users' photo noise (exposure, hue,
blur, JPEG). Boxes are always re-derived from the moved landmarks (our box convention), never
from warped boxes. The faces are Crawford's hand-placed landmarks plus, with --labels, the
checked pseudo-labels of training/pseudo_labels.py (Oxford, cat-breeds-extra, cat-faces-voc).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from service.contract import (
    CONTAINMENT_THRESHOLD,
    DETECTOR_INPUT,
    DETECTOR_TRAIN_INPUT,
    IOU_THRESHOLD,
    MAX_FACES,
    SCORE_THRESHOLD,
)
from service.geometry import to_chw

from . import data, loop
from .augment import affine, jitter_colour, move_points, user_photo_noise, warp
from .nets import CatFaceDetector, pretrained_backbone
from .pseudo_labels import read_labels

# ---- config -------------------------------------------------------------------------------
INPUT = DETECTOR_TRAIN_INPUT  # served at DETECTOR_INPUT: see service/contract.py
BATCH = 32
STEPS_PER_EPOCH = 40
EPOCHS = 40
LR_HEAD, LR_BACKBONE = 2e-3, 5e-4
FROZEN_BLOCKS = 3  # stem and blocks 0-2 (stride <= 4) keep their ImageNet weights
# Layout of a training image: one photo, a 2x2 mosaic with a random split point, or a uniform
# 3x3 / 4x4 grid (many small faces, as in litters of kittens), the grids together GRIDS_P of them.
GRIDS_P = 0.3
# How far a photo may shrink in its cell: in the 3x3 and 4x4 grids down to faces of ~6 px.
SMALLEST_ZOOM = {1: 0.75, 2: 0.75, 3: 0.5, 4: 0.5}
# Near a level's size boundary a face is neither positive nor background for the neighbour level.
LEVEL_MARGIN = 1.5
DOG_P = 0.3  # chance that a single photo or a mosaic tile is a dog photo
# Hard negatives of cats: a tile that is a cat photo cut so that no face is in it (chest, paws, back,
# tail: where users saw a second box), default none (catface 2.0.0 had none); BODY_MARGIN of the
# face's longer side is kept clear around every face, so no ear or cut face is called background.
BODY_P = 0.0
BODY_MARGIN = 0.25
BODY_MIN_SIDE = 48  # cached pixels: a thinner strip of photo is no body
CACHE_SIDE = 320  # photos are kept in memory at this longer side
# Hard poses, given to a share of the tiles (the first two training cycles had neither):
# cats lying on their backs (any roll angle) and close-ups whose face overflows the photo.
# Before them the validation misses were mostly these (4 of 8 faces rolled past 90 degrees).
ANY_ANGLE_P = 0.25
CLOSE_UP_P = 0.1


def load_small(path: Path, side: int = CACHE_SIDE) -> tuple[Image.Image, float]:
    image = Image.open(path).convert("RGB")
    scale = min(1.0, side / max(image.size))
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    return image, scale


def strip_without_faces(size: tuple[int, int], faces: list[np.ndarray],
                        margin: float = BODY_MARGIN) -> tuple[int, int, int, int] | None:
    """The largest strip (x0, y0, x1, y1) of a cat photo of `size` (below, above, left or right of
    all its faces, each face's box grown by `margin` of its longer side) that holds no face, or
    None if none is BODY_MIN_SIDE wide and high."""
    w, h = size
    boxes = np.array([data.landmark_box(p, w, h) for p in faces]).reshape(-1, 4)
    grow = margin * np.max(boxes[:, 2:] - boxes[:, :2], axis=1, keepdims=True)
    x0, y0 = (boxes[:, :2] - grow).min(0)
    x1, y1 = (boxes[:, 2:] + grow).max(0)
    strips = [(0, int(np.ceil(y1)), w, h), (0, 0, w, int(y0)), (0, 0, int(x0), h), (int(np.ceil(x1)), 0, w, h)]
    strips = [b for b in strips if min(b[2] - b[0], b[3] - b[1]) >= BODY_MIN_SIDE]
    return max(strips, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])) if strips else None


class Sources:
    """Training photos held in memory: cats with landmarks (every cat face in them labelled),
    dogs (no cat face), and the cat photos' strips without a face (`strip_without_faces`)."""

    def __init__(self, cats: list[data.CatPhoto], dogs: list[Path]):
        self.cats = []
        for photo in cats:
            image, s = load_small(photo.path)
            self.cats.append((image, [p * s for p in photo.landmarks]))
        self.dogs = [(load_small(p)[0], []) for p in dogs]
        # The strips are kept as boxes on the cats' photos and cut when drawn: cut up front they
        # would copy most of every cat photo, in every run, --bodies or not.
        boxes = ((image, strip_without_faces(image.size, faces)) for image, faces in self.cats if faces)
        self.bodies = [(image, box) for image, box in boxes if box is not None]

    def pick(self, rng, dog_p=DOG_P, body_p=BODY_P):
        draw = rng.random()
        if draw < dog_p:
            return self.dogs[rng.integers(len(self.dogs))]
        if draw < dog_p + body_p and self.bodies:
            image, box = self.bodies[rng.integers(len(self.bodies))]
            return image.crop(box), []
        return self.cats[rng.integers(len(self.cats))]


@dataclass
class Poses:
    """What a training image is drawn with (shares of tiles or of images)."""

    any_angle: float = ANY_ANGLE_P  # share of tiles rolled by a uniform angle in -180..180
    close_up: float = CLOSE_UP_P  # share of tiles zoomed in 1.35..2.2x
    grids: float = GRIDS_P  # share of images that are 3x3 or 4x4 grids
    bodies: float = BODY_P  # share of tiles that are a cat photo's strip without a face

    def layouts(self) -> dict[int, float]:
        """Tiles per side -> share of images."""
        return {1: (1 - self.grids) / 2, 2: (1 - self.grids) / 2, 3: self.grids / 2, 4: self.grids / 2}


def place(image, landmarks, rng, cell, canvas, poses: Poses, smallest_zoom: float = 0.75):
    """Warp a photo into `cell` (x0, y0, x1, y1) of the canvas with random zoom/rotation/flip."""
    x0, y0, x1, y1 = cell
    w, h = image.size
    zoom = rng.uniform(1.35, 2.2) if rng.random() < poses.close_up else rng.uniform(smallest_zoom, 1.35)
    if poses.any_angle and rng.random() < poses.any_angle:
        angle = rng.uniform(-180, 180)
    else:
        angle = rng.normal(0, 12) if rng.random() < 0.6 else 0.0
    flip = rng.random() < 0.5
    # Stretch to the cell like the server stretches a photo to the input, then zoom about a
    # random point near the middle.
    sx, sy = (x1 - x0) / w, (y1 - y0) / h
    stretch = np.diag([sx, sy, 1.0])
    focus = (rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h)
    to = ((x0 + x1) / 2 + rng.uniform(-0.1, 0.1) * (x1 - x0), (y0 + y1) / 2 + rng.uniform(-0.1, 0.1) * (y1 - y0))
    m = affine(zoom, angle, flip, (focus[0] * sx, focus[1] * sy), to) @ stretch
    tile = warp(image, m, canvas.size)
    mask = Image.new("L", canvas.size, 0)
    mask.paste(255, (int(x0), int(y0), int(x1), int(y1)))
    canvas.paste(tile, (0, 0), mask)
    faces = []
    for pts in landmarks:
        moved = move_points(pts, m, flip)
        full = np.concatenate([moved.min(0), moved.max(0)])
        clipped = np.concatenate([np.maximum(full[:2], [x0, y0]), np.minimum(full[2:], [x1, y1])])
        area = lambda b: max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
        faces.append((clipped, area(clipped) / max(area(full), 1e-6)))
    return faces


def make_sample(sources: Sources, rng, poses: Poses, size: int = INPUT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> image (3, S, S) 0..255, boxes (K, 4) pixels, ignore boxes (J, 4) pixels."""
    canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
    layouts = poses.layouts()
    tiles = int(rng.choice(list(layouts), p=list(layouts.values())))
    if tiles == 2:
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        cells = [(0, 0, cx, cy), (cx, 0, size, cy), (0, cy, cx, size), (cx, cy, size, size)]
    else:
        edges = np.linspace(0, size, tiles + 1)
        cells = [(edges[i], edges[j], edges[i + 1], edges[j + 1]) for j in range(tiles) for i in range(tiles)]
    faces = []
    for cell in cells:
        faces += place(*sources.pick(rng, body_p=poses.bodies), rng, cell, canvas, poses, SMALLEST_ZOOM[tiles])
    canvas = user_photo_noise(jitter_colour(canvas, rng), rng)
    keep = [b for b, vis in faces if vis >= 0.6 and min(b[2] - b[0], b[3] - b[1]) >= 4]
    ignore = [b for b, vis in faces if not (vis >= 0.6 and min(b[2] - b[0], b[3] - b[1]) >= 4) and vis > 0.05]
    return to_chw(canvas), np.array(keep, np.float32).reshape(-1, 4), np.array(ignore, np.float32).reshape(-1, 4)


def assign(boxes: np.ndarray, ignore: np.ndarray, grid: int, stride: int):
    """Cells near a face's centre are positives (the smaller face wins a shared cell); cells
    inside a face but off-centre or inside an ignored face are left out of the score loss."""
    centres = (np.arange(grid) + 0.5) * stride
    cx, cy = np.meshgrid(centres, centres)
    cx, cy = cx.reshape(-1), cy.reshape(-1)
    target = np.full(grid * grid, -1, np.int64)  # index of the assigned box, -1 = background
    weight = np.ones(grid * grid, np.float32)
    best_area = np.full(grid * grid, np.inf)
    for j, (x0, y0, x1, y1) in enumerate(boxes):
        w, h = x1 - x0, y1 - y0
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        inside = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
        central = (inside & (np.abs(cx - mx) <= max(0.25 * w, 0.75 * stride))
                   & (np.abs(cy - my) <= max(0.25 * h, 0.75 * stride)))
        nearest = np.argmin((cx - mx) ** 2 + (cy - my) ** 2)
        central[nearest] = True
        weight[inside & ~central] = 0.0  # ambiguous: neither face nor background
        take = central & (w * h < best_area)
        target[take] = j
        best_area[take] = w * h
    for x0, y0, x1, y1 in ignore:
        weight[(cx > x0) & (cx < x1) & (cy > y0) & (cy < y1) & (target < 0)] = 0.0
    weight[target >= 0] = 1.0
    return target, weight


def giou_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    lo, hi = torch.max(pred[:, :2], gt[:, :2]), torch.min(pred[:, 2:], gt[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(1)
    area = lambda b: (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area(pred) + area(gt) - inter
    hull = (torch.max(pred[:, 2:], gt[:, 2:]) - torch.min(pred[:, :2], gt[:, :2])).prod(1)
    iou = inter / union.clamp(min=1e-9)
    return (1 - iou + (hull - union) / hull.clamp(min=1e-9)).mean()


def assign_levels(boxes: np.ndarray, ignore: np.ndarray, size: int):
    """`assign` on every level of CatFaceDetector, each with the faces of its size range; faces
    within LEVEL_MARGIN of a level's range are ignored there. Targets index `boxes`."""
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    targets, weights = [], []
    for stride, (low, high) in zip(CatFaceDetector.STRIDES, CatFaceDetector.LEVEL_SIZES):
        own = (sides >= low) & (sides < high)
        near = (sides >= low / LEVEL_MARGIN) & (sides < high * LEVEL_MARGIN) & ~own
        index = np.nonzero(own)[0]
        t, w = assign(boxes[own], np.concatenate([ignore, boxes[near]]), size // stride, stride)
        targets.append(np.where(t >= 0, index[np.maximum(t, 0)] if len(index) else -1, -1))
        weights.append(w)
    return np.concatenate(targets), np.concatenate(weights)


def make_batch(sources, rng, poses: Poses, size: int = INPUT):
    images, targets, weights, gts = [], [], [], []
    for _ in range(BATCH):
        image, boxes, ignore = make_sample(sources, rng, poses, size)
        t, w = assign_levels(boxes, ignore, size)
        images.append(image)
        weights.append(w)
        targets.append(t)
        gts.append(np.concatenate([boxes / size, np.zeros((1, 4), np.float32)])[t])  # -1 -> dummy row
    return (torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets)),
            torch.from_numpy(np.stack(weights)), torch.from_numpy(np.stack(gts)))


def detector_loss(model, images, targets, weights, gts):
    logits, ltrb = model.raw(images)
    positive = targets >= 0
    labels = positive.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    p_t = p * labels + (1 - p) * (1 - labels)
    alpha = 0.25 * labels + 0.75 * (1 - labels)
    focal = (alpha * (1 - p_t) ** 2 * ce * weights).sum() / positive.sum().clamp(min=1)
    boxes = model.decode(ltrb)  # the exported graph's own decoding
    box = giou_loss(boxes[positive], gts[positive]) if positive.any() else logits.sum() * 0
    return focal + 2.0 * box, focal.item(), box.item()


def faces_by_source(cats: list[data.CatPhoto]) -> dict[str, int]:
    """Training faces per collection (the group's prefix: crawford, oxford, extra, voc)."""
    counts: dict[str, int] = {}
    for photo in cats:
        source = photo.group.split("/")[0]
        counts[source] = counts.get(source, 0) + len(photo.landmarks)
    return counts


def split_sources(data_dir: Path, split: str, limit: int | None = None):
    cats = [p for p in data.crawford(data_dir / "crawford") if p.split == split]
    dogs = [p for p in data.folder_images(data_dir / "negatives" / "dogs") if data.split_of("dogs/" + p.name) == split]
    dogs += [p.path for p in data.oxford_pets(data_dir / "oxford-iiit-pet")
             if p.species == "dog" and data.split_of("oxford/" + p.name) == split]
    return (cats[:limit], dogs[:limit]) if limit else (cats, dogs)


def dog_in_selection(path: Path) -> bool:
    return data.in_selection("dogs/" + path.name)


def selection_of(data_dir: Path) -> set[Path]:
    """The labelled Oxford and extra training photos of the selection part: the Oxford photos that
    train_breeds --select holds out, and the extra photos near-duplicate to them (one selection
    part for both models, grouped as that split groups them)."""
    from .train_breeds import labelled_photos, splits

    pets, extra, groups = labelled_photos(data_dir)
    held = {groups[p] for p, _ in splits(pets, extra, groups, select=0)[2]}
    return {p for p, group in groups.items() if group in held}


def hold_out_selection(data_dir: Path, cats: list[data.CatPhoto], dogs: list[Path]):
    """--select: the training photos (Crawford sessions, dog photos, labelled photos) split into
    those trained on and the selection part runs are compared on (data.in_selection)."""
    labelled = ("oxford/", "extra/")
    # selection_of reads every Oxford and extra photo: only when some of them are here
    oxford_held = selection_of(data_dir) if any(c.group.startswith(labelled) for c in cats) else set()

    def held(photo: data.CatPhoto) -> bool:
        if photo.group.startswith(labelled):
            return photo.path in oxford_held
        return data.in_selection(photo.group)  # Crawford sessions and cat-faces-voc photos

    return ([c for c in cats if not held(c)], [d for d in dogs if not dog_in_selection(d)],
            [c for c in cats if held(c)], [d for d in dogs if dog_in_selection(d)])


@torch.no_grad()
def quick_check(model, cats, dogs):
    """Recall at IoU 0.5 on cats and false faces per dog photo, at the serving input size and
    threshold (one pass): the per-epoch look at the selection part."""
    from service.detection import iou, select_faces

    model.eval()
    model.set_input_size(DETECTOR_INPUT)
    hits = total = false_on_dogs = 0
    for batch_start in range(0, len(cats) + len(dogs), 32):
        chunk = (cats + dogs)[batch_start : batch_start + 32]
        images = [Image.open(p.path if isinstance(p, data.CatPhoto) else p).convert("RGB") for p in chunk]
        x = torch.from_numpy(np.stack([to_chw(im, (DETECTOR_INPUT, DETECTOR_INPUT)) for im in images]))
        scores, boxes = model(x)
        for item, im, s, b in zip(chunk, images, scores.numpy(), boxes.numpy()):
            found, _ = select_faces(s, b, SCORE_THRESHOLD, IOU_THRESHOLD, CONTAINMENT_THRESHOLD, MAX_FACES)
            found = found * [im.width, im.height, im.width, im.height]
            if isinstance(item, data.CatPhoto):
                for pts in item.landmarks:
                    total += 1
                    gt = data.landmark_box(pts, im.width, im.height)
                    hits += bool(len(found)) and iou(gt, found).max() >= 0.5
            else:
                false_on_dogs += len(found)
    model.set_input_size(INPUT)
    model.train()
    return hits / max(total, 1), false_on_dogs / max(len(dogs), 1)


def main(argv=None):
    parser = loop.arguments(__doc__, out="runs/detector", epochs=EPOCHS)
    parser.add_argument("--steps", type=int, default=STEPS_PER_EPOCH, help="steps per epoch")
    parser.add_argument("--any-angle", type=float, default=ANY_ANGLE_P, help="share of tiles rolled by any angle")
    parser.add_argument("--close-up", type=float, default=CLOSE_UP_P, help="share of tiles zoomed in 1.35-2.2x")
    parser.add_argument("--grids", type=float, default=GRIDS_P, help="share of images that are 3x3 or 4x4 grids")
    parser.add_argument("--bodies", type=float, default=BODY_P,
                        help="share of tiles that are a cat photo's strip without a face (hard negatives)")
    parser.add_argument("--freeze-bn", action="store_true",
                        help="keep every BatchNorm in eval mode (needed from a checkpoint of training.from_onnx)")
    parser.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[INPUT, DETECTOR_INPUT],
                        help="input sides, one drawn per batch (multiples of 32), e.g. 192,256,320")
    parser.add_argument("--select", action="store_true",
                        help="hold out the selection part of the training photos (data.in_selection) and "
                             "check each epoch on it; select_zoom --select compares runs there")
    parser.add_argument("--labels", type=Path, default=None,
                        help="pseudo-labelled faces from training/pseudo_labels.py (training photos only)")
    args = parser.parse_args(argv)
    rng = loop.start(args)

    cats, dogs = split_sources(args.data, "train", args.limit)
    if args.labels:
        cats += read_labels(args.labels, args.data)[: args.limit]
    check_cats: list[data.CatPhoto] = []
    check_dogs: list[Path] = []
    if args.select:
        cats, dogs, held_cats, check_dogs = hold_out_selection(args.data, cats, dogs)
        check_cats = [c for c in held_cats if c.group.startswith("crawford")]  # hand-placed faces only
    sources = Sources(cats, dogs)
    sources_faces = faces_by_source(cats)  # recorded in every checkpoint (the exporter reads it)
    print(f"train: {len(sources.cats)} cat photos, {len(sources.dogs)} dog photos, {len(sources.bodies)} strips "
          f"without a face" + (f"; selection part: {len(check_cats)} Crawford cats, {len(check_dogs)} dogs"
                               if args.select else ""), flush=True)

    model = loop.initialised(CatFaceDetector(pretrained_backbone(), INPUT), args.init)
    optimiser, frozen = loop.fine_tuning(model, FROZEN_BLOCKS, LR_HEAD * args.lr_scale, LR_BACKBONE * args.lr_scale)
    schedule = loop.WarmupCosine(optimiser, args.epochs * args.steps, warmup_steps=100)

    poses = Poses(args.any_angle, args.close_up, args.grids, args.bodies)
    step = 0
    with loop.JsonLog(args.out / "log.jsonl") as log:
        for epoch in range(args.epochs):
            loop.train_mode(model, frozen, args.freeze_bn)
            t0, losses = time.time(), []
            for _ in range(args.steps):
                schedule.set(step)
                size = int(rng.choice(args.sizes))
                model.set_input_size(size)
                loss, focal, box = detector_loss(model, *make_batch(sources, rng, poses, size))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append((loss.item(), focal, box))
                step += 1
            loss, focal, giou = (float(np.mean([parts[k] for parts in losses])) for k in range(3))
            row = {"epoch": epoch, "loss": loss, "focal": focal, "giou": giou, "seconds": round(time.time() - t0, 1)}
            if args.select:  # never the validation split: the last epoch is the run's model whatever it shows
                row["select_recall"], row["select_false_per_dog"] = quick_check(model, check_cats, check_dogs)
            log.write(row)
            torch.save({"model": model.state_dict(), "epoch": epoch, "input": INPUT,
                        "faces_by_source": sources_faces}, args.out / "checkpoint.pt")
    return model


if __name__ == "__main__":
    main()
