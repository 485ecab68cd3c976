"""Train catbreeds: the 12 Oxford-IIIT cat breeds, and whether a photo shows a cat at all.

    python -m training.train_breeds --data ../shared/data --out runs/breeds

One EfficientNet-Lite2 (ImageNet weights) with two outputs on its pooled embedding: a 12-way
breed softmax and a cat / not-a-cat logit. CPU-friendly in two steps:

1. The frozen part (stem to block TAP, stride 16) runs once per *view* and its features are
   cached: the photo stretched to the input as the server sends it, its mirror, the face crop
   the server cuts around a detected face (and its mirror), and random resized crops with
   colour jitter. Crawford cats and dog photos get fewer views: they only teach "cat or not".
2. Blocks TRAIN_FROM.. , the head and both output layers are fine-tuned on the cache, one
   random view of each photo per epoch, with label smoothing (blocks between TAP and TRAIN_FROM
   run frozen on the cached features, so one cache serves every depth of fine-tuning).

How deep to fine-tune was chosen with `--select`: the Oxford training photos are split once more
(by near-duplicate cluster, another hash) and the models trained on the rest are compared on that
selection part, so the validation split is never used to choose.

What the noisy `cat-breeds-extra` photos teach is `--extra`: with `breeds` (catbreeds 2.0.0) they
are cleaned first (a model trained for a few epochs on the Oxford photos alone predicts them, and a
photo it contradicts confidently is dropped) and teach breeds and the cat output; with `cat` they
teach the cat output only, since their owners' sense of a breed is not Oxford's (compared on the
selection folds); with `none` nothing. Any extra photo that near-duplicates a validation photo is
dropped in every case. Oxford trainval cats are split by near-duplicate cluster; dogs and Crawford
cats as the detector splits them.

The cat output is also /detect's cat check on each face's crop, and a far-away cat's crop is small
and blurry: `--small-faces` adds such views (and the same of dog photos) for the cat output alone,
cached in a file of their own beside the main cache.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

from service import geometry
from service.contract import BREED_CROP_SCALE, BREED_INPUT, CAT_THRESHOLD

from . import data, loop
from .metrics import breed_metrics
from .nets import CatBreedClassifier, pretrained_backbone

# ---- config -------------------------------------------------------------------------------
BACKBONE = "lite2"
INPUT = BREED_INPUT
TAP = 11             # last block whose output is cached (the first of the 120-channel stride-16 stage)
TRAIN_FROM = 15      # first fine-tuned block (default: the depth catbreeds 2.0.0 was trained at)
RANDOM_CROPS = 3     # random resized crops per breed photo, beside full/flip/face/face-flip
EPOCHS = 10
CLEAN_EPOCHS = 4     # Oxford-only model that judges the noisy extra photos
CONTRADICTED = 0.7   # drop an extra photo when that model puts >= this on another breed
BATCH = 48
LR = 1e-3
LABEL_SMOOTHING = 0.1
EXTRA_WEIGHT = 0.7   # loss weight of the (cleaned) extra photos
CATNESS_PER_EPOCH = 800  # Crawford cats + dogs drawn per epoch for the cat / not-a-cat output
MIXUP_SHARE = 0.5    # with --mixup, the share of batches mixed (the rest stay clean, as served)
# --small-faces: views of a face as the server crops it from a far-away cat (the photo shrunk until
# the face is SMALL_FACE_PX wide, then cut as /detect cuts it: an upscaled, blurry crop), and the same
# of a dog photo's middle, teach the cat output only; SMALL_PER_EPOCH of them drawn per epoch.
SMALL_FACE_PX = (16.0, 60.0)
SMALL_PER_EPOCH = 400


def jitter(image: Image.Image, rng) -> Image.Image:
    """Brightness, contrast and saturation shifts, sometimes grey (users' photos vary)."""
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
    saturation = 0.0 if rng.random() < 0.1 else rng.uniform(0.6, 1.4)
    return ImageEnhance.Color(image).enhance(saturation)


def view(image: Image.Image, rng, kind: str, face_box=None, size: int = INPUT) -> np.ndarray:
    """One training view of a photo as CHW float32 0..255 at size x size."""
    flip = kind.endswith("flip")
    if kind.startswith("face"):
        matrix = geometry.square_crop_matrix(face_box, size, BREED_CROP_SCALE)
        image = geometry.warp(image, matrix, (size, size))
    elif kind == "crop":  # random resized crop
        w, h = image.size
        area = rng.uniform(0.35, 1.0) * w * h
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = min(w, math.sqrt(area * aspect)), min(h, math.sqrt(area / aspect))
        x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        image = jitter(image.crop((int(x0), int(y0), int(x0 + cw), int(y0 + ch))), rng)
        flip = rng.random() < 0.5
    elif kind == "small":
        box = np.asarray(face_box if face_box is not None else middle_box(image.size, rng), np.float64)
        scale = min(1.0, rng.uniform(*SMALL_FACE_PX) / max(box[2] - box[0], box[3] - box[1]))
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
        image = geometry.warp(image, geometry.square_crop_matrix(box * scale, size, BREED_CROP_SCALE), (size, size))
        flip = rng.random() < 0.5
    image = image.resize((size, size), Image.BILINEAR)
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(image, np.float32).transpose(2, 0, 1)


def middle_box(size: tuple[int, int], rng) -> np.ndarray:
    """A square "face" box in a photo without one (a dog's): 15-30% of the shorter side, centred
    in the middle half of the photo, where the dog's head mostly is."""
    w, h = size
    side = rng.uniform(0.15, 0.3) * min(w, h)
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def training_views(face_box, noisy: bool) -> list[str]:
    """View kinds of a breed photo; "full" first (the cleaning step reads it). The noisy extra
    photos get fewer (caching is most of the run's time)."""
    if noisy:
        return ["full", "face" if face_box is not None else "flip", "crop"]
    faces = ["face", "face-flip"] if face_box is not None else []
    return ["full", "flip", *faces] + ["crop"] * RANDOM_CROPS


CATNESS_VIEWS = ["full", "crop"]


@torch.no_grad()
def cache_features(backbone, photos, rng, size: int = INPUT, batch=32):
    """Frozen block-TAP features (float16) of every view of every photo, and the photo index
    of each view. `photos`: (path, face box or None, view kinds)."""
    jobs = [(i, k) for i, (_, _, kinds) in enumerate(photos) for k in kinds]
    feats, owners = [], []
    for s in range(0, len(jobs), batch):
        chunk = jobs[s : s + batch]
        x = np.stack([view(Image.open(photos[i][0]).convert("RGB"), rng, k, photos[i][1], size) for i, k in chunk])
        (f,) = backbone.features(backbone.normalise(torch.from_numpy(x)), (TAP,))
        feats.append(f.half())
        owners.extend(i for i, _ in chunk)
        if s % (batch * 50) == 0:
            print(f"  cached {s + len(chunk)}/{len(jobs)} views", flush=True)
    return torch.cat(feats), torch.tensor(owners)


def tail(model: CatBreedClassifier, features: torch.Tensor, train_from: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Breed logits and cat logit from cached block-TAP features: the frozen blocks up to
    `train_from`, then the trainable rest."""
    x = features
    with torch.no_grad():
        for block in model.backbone._blocks[TAP + 1 : train_from]:
            x = block(x)
    for block in model.backbone._blocks[train_from:]:
        x = block(x)
    embedding = model.dropout(model.backbone.head(x))
    return model.fc(embedding), model.cat(embedding)[:, 0]


def labelled_photos(data_dir: Path):
    """The Oxford cat photos, the extra photos (path, breed), and every photo's near-duplicate
    group (one pass over all of them: it reads every file)."""
    pets = [p for p in data.oxford_pets(data_dir / "oxford-iiit-pet") if p.species == "cat"]
    extra = data.breed_folders(data_dir / "cat-breeds-extra") if (data_dir / "cat-breeds-extra").exists() else []
    return pets, extra, data.near_duplicate_groups([p.path for p in pets] + [p for p, _ in extra])


def splits(pets, extra, groups, select: int | None = None):
    """Oxford train, extra (noisy, training only; near-duplicates of the third list left out),
    Oxford validation. With `select` (a fold, data.in_selection), the third list is that
    selection part of the Oxford training photos instead, and the first list leaves it out."""
    val = [(p.path, p.breed) for p in pets if data.split_of("oxford/" + groups[p.path]) == "val"]
    train = [(p.path, p.breed) for p in pets if data.split_of("oxford/" + groups[p.path]) == "train"]
    if select is not None:
        val = [(p, b) for p, b in train if data.in_selection(groups[p], select)]
        train = [(p, b) for p, b in train if not data.in_selection(groups[p], select)]
    val_groups = {groups[p] for p, _ in val}
    extra = [(p, b) for p, b in extra if groups[p] not in val_groups]
    return train, extra, val


def datasets(data_dir: Path):
    """Breed photos: Oxford train, extra (noisy, training only), Oxford validation."""
    return splits(*labelled_photos(data_dir))


def catness_sources(data_dir: Path, split: str) -> tuple[list[Path], list[Path]]:
    """Cat photos without breed labels (Crawford) and dog photos, split as the detector splits them."""
    from .train_detector import split_sources  # one definition of the dog / Crawford split

    cats, dogs = split_sources(data_dir, split)
    return [c.path for c in cats], dogs


def face_boxes(paths: list[Path]) -> list[np.ndarray | None]:
    """The best face the shipped detector finds in each photo (as the server would crop it)."""
    from service.pipeline import load

    catface = load()
    out = []
    for p in paths:
        faces = catface.detect([Image.open(p).convert("RGB")], breeds=False)[0]
        out.append(faces[0].box if faces else None)
    return out


def mixed_loss(breed_logits, cat_logit, y, w, cat, pairs=None, lam=1.0):
    """Label-smoothed breed CE (weighted; only where a breed label exists, y >= 0) + cat BCE. With
    `pairs`, the batch was mixed with itself in that order: both targets count, lam and 1 - lam."""
    def ce(target, weight):
        has = target >= 0
        per = F.cross_entropy(breed_logits[has], target[has], label_smoothing=LABEL_SMOOTHING, reduction="none")
        return (per * weight[has]).sum() / max(int(has.sum()), 1)

    if pairs is None:
        return ce(y, w) + F.binary_cross_entropy_with_logits(cat_logit, cat)
    return (lam * ce(y, w) + (1 - lam) * ce(y[pairs], w[pairs])
            + F.binary_cross_entropy_with_logits(cat_logit, lam * cat + (1 - lam) * cat[pairs]))


def fit(model, feats, owners, labels, weights, is_cat, breed_items, draws, epochs, rng, log, lr,
        train_from, val=None, mixup=0.0):
    """Fine-tune the tail from block `train_from`: each epoch one random view of every breed photo
    and of a sample of each pool in `draws` ((items, how many an epoch): the catness photos, and
    the small faces). labels -1 = no breed label (Crawford cats, dogs, small faces). With
    `mixup` (a Beta alpha), some batches mix the cached features of two photos and their labels."""
    for p in model.parameters():
        p.requires_grad_(False)
    head = [model.fc, model.cat]
    body = [*model.backbone._blocks[train_from:], model.backbone._conv_head, model.backbone._bn1]
    for m in head + body:
        for p in m.parameters():
            p.requires_grad_(True)
    optimiser = torch.optim.AdamW([{"params": [p for m in head for p in m.parameters()], "lr": lr},
                                   {"params": [p for m in body for p in m.parameters()], "lr": lr / 4}],
                                  weight_decay=1e-2)
    view_lists: dict[int, list[int]] = {}
    for v, o in enumerate(owners.tolist()):
        view_lists.setdefault(o, []).append(v)
    draws = [(pool, min(n, len(pool))) for pool, n in draws]
    per_epoch = len(breed_items) + sum(n for _, n in draws)
    steps = math.ceil(per_epoch / BATCH)
    schedule = loop.WarmupCosine(optimiser, epochs * steps, warmup_steps=steps)  # one epoch of warm-up
    step = 0
    for epoch in range(epochs):
        t0 = time.time()
        for m in head + body:
            m.train()
        photos = list(breed_items) + [i for pool, n in draws for i in rng.choice(pool, n, replace=False)]
        rng.shuffle(photos)
        chosen = torch.tensor([view_lists[i][rng.integers(len(view_lists[i]))] for i in photos])
        losses = []
        for b in range(steps):
            schedule.set(step)
            idx = chosen[b * BATCH : (b + 1) * BATCH]
            photo = owners[idx]
            x = feats[idx].float()
            pairs, lam = None, 1.0
            if mixup and rng.random() < MIXUP_SHARE:
                pairs, lam = torch.from_numpy(rng.permutation(len(idx))), float(rng.beta(mixup, mixup))
                x = lam * x + (1 - lam) * x[pairs]
            breed_logits, cat_logit = tail(model, x, train_from)
            loss = mixed_loss(breed_logits, cat_logit, labels[photo], weights[photo], is_cat[photo], pairs, lam)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            step += 1
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": round(time.time() - t0, 1)}
        if val is not None:  # logged to watch training, never used to pick an epoch or a rule
            record.update(val())
        if log is not None:
            log.write(record)
        else:
            print(json.dumps(record), flush=True)


@torch.no_grad()
def predict(model, feats) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    outs = [tail(model, feats[i : i + 128].float(), TAP + 1) for i in range(0, len(feats), 128)]
    return (torch.softmax(torch.cat([o[0] for o in outs]), 1).numpy(),
            torch.sigmoid(torch.cat([o[1] for o in outs])).numpy())


def val_report_of(model, c, val_labels):
    """What training logs each epoch (to watch it; never used to pick an epoch or a rule)."""
    def report():
        whole, cat_whole = predict(model, c["val_full"])
        rows = c["val_face_rows"]
        face = whole.copy()
        if rows:
            face[rows] = predict(model, c["val_face"])[0]
        _, cat_dogs = predict(model, c["val_dogs"])
        return {"val_whole_top1": breed_metrics(whole.argmax(1), val_labels)["top1"],
                "val_face_or_whole_top1": breed_metrics(face.argmax(1), val_labels)["top1"],
                "val_both_top1": breed_metrics(((face + whole) / 2).argmax(1), val_labels)["top1"],
                "val_cat_rate": float((cat_whole >= CAT_THRESHOLD).mean()),
                "val_dog_cat_rate": float((cat_dogs >= CAT_THRESHOLD).mean())}
    return report


FACE_WEIGHT = 0.5  # the served product rule's (CatFace.photo_probabilities; a test ties the two)


def product_rule(whole: np.ndarray, face: np.ndarray, weight: float = FACE_WEIGHT) -> np.ndarray:
    """Breed probabilities per photo: weight x face crop + (1 - weight) x whole photo where a face
    was found (face rows not NaN), else the whole photo."""
    return np.where(np.isnan(face), whole, weight * np.nan_to_num(face) + (1 - weight) * whole)


def selection_probabilities(model, c, full_views, face_views) -> tuple[np.ndarray, np.ndarray]:
    """--select: breed probabilities of the held-out training photos, whole photo and face crop
    (NaN where no face was found)."""
    whole = predict(model, c["feats"][full_views])[0]
    face = np.full_like(whole, np.nan)
    with_face = [i for i, v in enumerate(face_views) if v is not None]
    if with_face:
        face[with_face] = predict(model, c["feats"][[face_views[i] for i in with_face]])[0]
    return whole, face


def selection_report_of(model, c, full_views, face_views, labels):
    """--select: breeds of the held-out training photos, face crop and whole photo averaged where
    a face was found (as the product rule does for one face), else the whole photo."""
    def report():
        both = product_rule(*selection_probabilities(model, c, full_views, face_views))
        return {"select": breed_metrics(both.argmax(1), labels)}  # its recall_per_breed included
    return report


def small_faces(model, cache: Path, breed_photos, dogs, rng, size: int = INPUT) -> dict:
    """--small-faces' own cache beside the main one: one "small" view of every labelled training
    photo where the shipped detector finds a face and of every dog photo. "sources" indexes each
    item's photo: breed photos first (train + extra), then the dogs after them."""
    path = cache.with_name(cache.stem + "-small.pt")
    if path.exists():
        return torch.load(path)
    boxes = face_boxes([p for p, _ in breed_photos])
    sources = [i for i, box in enumerate(boxes) if box is not None] + [len(breed_photos) + j for j in range(len(dogs))]
    paths = [p for p, _ in breed_photos] + list(dogs)
    photos = [(paths[i], boxes[i] if i < len(boxes) else None, ["small"]) for i in sources]
    feats, owners = cache_features(model.backbone, photos, rng, size)
    small = {"feats": feats, "owners": owners, "sources": sources}
    torch.save(small, path)
    return small


def main(argv=None):
    parser = loop.arguments(__doc__, out="runs/breeds", epochs=EPOCHS)
    parser.add_argument("--clean-epochs", type=int, default=CLEAN_EPOCHS)
    parser.add_argument("--extra", choices=["breeds", "cat", "none"], default="breeds",
                        help="what the extra photos teach: breeds (their cleaned labels) and the cat output, as "
                             "catbreeds 2.0.0; the cat output only; nothing (they stay in the shared feature cache)")
    parser.add_argument("--backbone", default=BACKBONE, choices=["lite0", "lite2"])
    parser.add_argument("--input", type=int, default=INPUT,
                        help="the views' side in pixels (a multiple of 32: static 'same' padding); served: "
                             "contract.BREED_INPUT")
    parser.add_argument("--train-from", type=int, default=TRAIN_FROM, help="first fine-tuned block (> TAP)")
    parser.add_argument("--mixup", type=float, default=0.0,
                        help="Beta alpha of mixup on the cached features (0: none, as catbreeds 2.0.0)")
    parser.add_argument("--small-faces", action="store_true",
                        help="teach the cat output small, blurry face crops (and the same of dog photos)")
    parser.add_argument("--select", type=int, nargs="?", const=0, default=None, metavar="FOLD",
                        help="train without the selection part of the Oxford training photos and report on it "
                             "(FOLD 1.. : another, disjoint part of the same size)")
    args = parser.parse_args(argv)
    rng = loop.start(args)
    lr = LR * args.lr_scale

    labelled = labelled_photos(args.data)
    train, extra, val = splits(*labelled)
    crawford_cats, dogs = catness_sources(args.data, "train")
    _, val_dogs = catness_sources(args.data, "val")  # (validation cats are the Oxford ones)
    lim = slice(None, args.limit)
    train, extra, val = train[lim], extra[lim], val[lim]
    crawford_cats, dogs, val_dogs = crawford_cats[lim], dogs[lim], val_dogs[lim]
    print(f"train: {len(train)} Oxford + {len(extra)} extra breed photos, {len(crawford_cats)} Crawford cats, "
          f"{len(dogs)} dogs; val: {len(val)} Oxford cats, {len(val_dogs)} dogs", flush=True)

    model = loop.initialised(CatBreedClassifier(pretrained_backbone(args.backbone)), args.init).eval()
    breed_photos = train + extra + val
    # Runs beside each other share this cache (--select runs and the final one). A run that finds
    # it skips the views' random draws, so its later draws (and numbers) differ from a run from
    # scratch.
    sizes = f"{len(train)}-{len(extra)}-{len(val)}-{len(dogs)}"
    at = "" if args.input == INPUT else f"-{args.input}px"  # (the served size's caches keep their names)
    cache = args.out.parent / "breeds-cache" / f"features-{args.backbone}-tap{TAP}-{sizes}{at}.pt"
    if cache.exists():
        c = torch.load(cache)
    else:
        t0 = time.time()
        boxes = face_boxes([p for p, _ in breed_photos])
        train_boxes, val_boxes = boxes[: len(train) + len(extra)], boxes[len(train) + len(extra) :]
        photos = ([(p, box, training_views(box, noisy=i >= len(train)))
                   for i, ((p, _), box) in enumerate(zip(train + extra, train_boxes))]
                  + [(p, None, CATNESS_VIEWS) for p in crawford_cats + dogs])
        feats, owners = cache_features(model.backbone, photos, rng, args.input)
        val_faces = [i for i, box in enumerate(val_boxes) if box is not None]
        c = {"feats": feats, "owners": owners, "val_face_rows": val_faces,
             "kinds": [k for _, _, kinds in photos for k in kinds],
             "val_full": cache_features(model.backbone, [(p, None, ["full"]) for p, _ in val], rng, args.input)[0],
             "val_face": cache_features(model.backbone, [(val[i][0], val_boxes[i], ["face"]) for i in val_faces],
                                        rng, args.input)[0],
             "val_dogs": cache_features(model.backbone, [(p, None, ["full"]) for p in val_dogs], rng, args.input)[0]}
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(c, cache)
        print(f"cached features in {time.time() - t0:.0f}s", flush=True)

    n_train, n_extra, n_cats = len(train), len(extra), len(crawford_cats)
    small = small_faces(model, cache, train + extra, dogs, rng, args.input) if args.small_faces else None
    n_small = len(small["sources"]) if small else 0
    labels = torch.tensor([b for _, b in train + extra] + [-1] * (n_cats + len(dogs) + n_small))
    if args.extra == "cat":  # cat photos without a breed label, as Crawford's are
        labels[n_train : n_train + n_extra] = -1
    is_cat = torch.tensor([1.0] * (n_train + n_extra + n_cats) + [0.0] * len(dogs)
                          + ([float(s < n_train + n_extra) for s in small["sources"]] if small else []))
    weights = torch.tensor([1.0] * n_train + [EXTRA_WEIGHT] * n_extra + [0.0] * (n_cats + len(dogs) + n_small))
    first_small = n_train + n_extra + n_cats + len(dogs)
    catness_items = np.arange(n_train + n_extra, first_small)
    if small:  # its items follow every photo's; their views follow the cache's
        c["feats"] = torch.cat([c["feats"], small["feats"]])
        c["owners"] = torch.cat([c["owners"], small["owners"] + first_small])
        c["kinds"] = c["kinds"] + ["small"] * len(small["owners"])
    val_labels = np.array([b for _, b in val])
    first_view: dict[int, int] = {}
    face_view: dict[int, int] = {}
    for v, (o, kind) in enumerate(zip(c["owners"].tolist(), c["kinds"])):
        first_view.setdefault(o, v)
        if kind == "face":
            face_view[o] = v
    # --extra none: the extra photos stay in the shared cache (same views for every run), out of training
    usable = np.arange(n_train if args.extra == "none" else n_train + n_extra)
    report = val_report_of(model, c, val_labels) if args.watch_validation else None
    if args.select is not None:  # the selection part and its near-duplicates leave training; compared on it
        inner, extra_kept, selection = splits(*labelled, select=args.select)
        training_paths, selection_paths = {p for p, _ in inner + extra_kept}, {p for p, _ in selection}
        usable = np.array([i for i in usable if breed_photos[i][0] in training_paths], dtype=int)
        rows = [i for i, (p, _) in enumerate(train) if p in selection_paths]
        report = selection_report_of(model, c, [first_view[i] for i in rows], [face_view.get(i) for i in rows],
                                     labels[rows].numpy())
        print(f"select: training on {len(usable)} breed photos, comparing on {len(rows)}", flush=True)
    # the small faces of the breed photos trained on, and every dog's
    trained_on = set(usable.tolist())
    small_items = np.array([first_small + j for j, s in enumerate(small["sources"] if small else [])
                            if s >= n_train + n_extra or s in trained_on], dtype=int)

    with loop.JsonLog(args.out / "log.jsonl") as log:
        if n_extra and args.clean_epochs and args.extra == "breeds":
            print("cleaning the extra photos with an Oxford-only model", flush=True)
            judge = CatBreedClassifier(pretrained_backbone(args.backbone))
            fit(judge, c["feats"], c["owners"], labels, weights, is_cat, usable[usable < n_train],
                [(catness_items, CATNESS_PER_EPOCH)], args.clean_epochs, rng, None, lr, args.train_from)
            probs, _ = predict(judge, c["feats"][[first_view[i] for i in range(n_train, n_train + n_extra)]])
            extra_labels = labels[n_train : n_train + n_extra].numpy()
            contradicted = (probs.argmax(1) != extra_labels) & (probs.max(1) >= CONTRADICTED)
            weights[n_train : n_train + n_extra][torch.from_numpy(contradicted)] = 0.0
            dropped = {data.BREEDS[b]: int(((extra_labels == b) & contradicted).sum()) for b in range(len(data.BREEDS))}
            log.write({"cleaning": {"extra": n_extra, "dropped": int(contradicted.sum()), "per_breed": dropped}})
            (args.out / "dropped_extra.txt").write_text(
                "".join(f"{extra[i][0]}\t{data.BREEDS[extra_labels[i]]}\t{data.BREEDS[probs[i].argmax()]}\t{probs[i].max():.2f}\n"
                        for i in np.nonzero(contradicted)[0]))
            del judge
        kept = usable[weights[usable].numpy() > 0]
        draws = [(catness_items, CATNESS_PER_EPOCH)] + ([(small_items, SMALL_PER_EPOCH)] if small else [])
        fit(model, c["feats"], c["owners"], labels, weights, is_cat, kept, draws, args.epochs, rng, log,
            lr, args.train_from, report, args.mixup)
        final = {"final": report() if report else None, "train_from": args.train_from, "select": args.select,
                 "mixup": args.mixup, "extra": args.extra, "small_faces": args.small_faces}
        (args.out / "report.json").write_text(json.dumps(final, indent=1))
        if args.select is not None:  # kept so product rules can be compared on the fold without training again
            whole, face = selection_probabilities(model, c, [first_view[i] for i in rows],
                                                  [face_view.get(i) for i in rows])
            np.savez(args.out / "selection_probabilities.npz", whole=whole, face=face, labels=labels[rows].numpy(),
                     paths=np.array([str(train[i][0]) for i in rows]))
    checkpoint = {"model": model.state_dict(), "input": args.input, "backbone": args.backbone}
    torch.save(checkpoint, args.out / "checkpoint.pt")
    return model


if __name__ == "__main__":
    main()
