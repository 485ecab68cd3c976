"""Train catbreeds: the 12 Oxford-IIIT cat breeds, on the whole photo.

    python -m training.train_breeds --data ../shared/data --out runs/breeds

CPU-friendly in two stages. The frozen part of EfficientNet-Lite0 (stem to block 10) runs
once per view and its stride-16 features are cached on disk; then blocks 11-15, the head and a
new 12-way layer are fine-tuned on the cache. Views: the photo stretched to the input (as the
server sends it), its mirror, and random crops. Oxford trainval cats are split by
near-duplicate cluster; the noisy cat-breeds-extra photos are training data only, with label
smoothing, and any of them that near-duplicates a validation photo is dropped.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import data
from .nets import CatBreedClassifier, pretrained_backbone

# ---- config -------------------------------------------------------------------------------
INPUT = 224
TAP = 10  # last frozen block; its output is cached
RANDOM_CROPS = 1  # extra views per training photo
EPOCHS = 8
BATCH = 64
LR = 1e-3
LABEL_SMOOTHING = 0.1
EXTRA_WEIGHT = 0.5  # loss weight of the noisy extra photos


def view(image: Image.Image, rng, kind: str) -> np.ndarray:
    if kind == "crop":
        w, h = image.size
        s = rng.uniform(0.65, 1.0)
        cw, ch = w * s * rng.uniform(0.85, 1.15), h * s
        cw = min(cw, w)
        x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        image = image.crop((int(x0), int(y0), int(x0 + cw), int(y0 + ch)))
        if rng.random() < 0.5:
            kind = "flip"
    image = image.resize((INPUT, INPUT), Image.BILINEAR)
    if kind == "flip":
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(image, np.float32).transpose(2, 0, 1)


@torch.no_grad()
def cache_features(backbone, items, rng, kinds, batch=32) -> torch.Tensor:
    """Frozen features (block TAP output) for every (path, kind) view, as float16."""
    out = []
    views = [(p, k) for p, _ in items for k in kinds]
    for i in range(0, len(views), batch):
        x = np.stack([view(Image.open(p).convert("RGB"), rng, k) for p, k in views[i : i + batch]])
        (f,) = backbone.features(backbone.normalise(torch.from_numpy(x)), (TAP,))
        out.append(f.half())
    return torch.cat(out)


def tail(model: CatBreedClassifier, features: torch.Tensor) -> torch.Tensor:
    """Logits from cached block-TAP features: the trainable rest of the network."""
    x = features
    for block in model.backbone._blocks[TAP + 1 :]:
        x = block(x)
    return model.fc(model.dropout(model.backbone.head(x)))


def datasets(data_dir: Path):
    pets = [p for p in data.oxford_pets(data_dir / "oxford-iiit-pet") if p.species == "cat"]
    extra = data.breed_folders(data_dir / "cat-breeds-extra") if (data_dir / "cat-breeds-extra").exists() else []
    groups = data.near_duplicate_groups([p.path for p in pets] + [p for p, _ in extra])
    val = [(p.path, p.breed) for p in pets if data.split_of("oxford/" + groups[p.path]) == "val"]
    train = [(p.path, p.breed) for p in pets if data.split_of("oxford/" + groups[p.path]) == "train"]
    val_groups = {groups[p] for p, _ in val}
    extra = [(p, b) for p, b in extra if groups[p] not in val_groups]
    return train, extra, val


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    pred = logits.argmax(1)
    f1s = []
    for c in range(len(data.BREEDS)):
        tp = ((pred == c) & (labels == c)).sum().item()
        prec = tp / max((pred == c).sum().item(), 1)
        rec = tp / max((labels == c).sum().item(), 1)
        f1s.append(2 * prec * rec / max(prec + rec, 1e-9))
    return {"top1": (pred == labels).float().mean().item(), "macro_f1": float(np.mean(f1s))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/breeds"))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--limit", type=int, default=None, help="use only N photos per set (smoke runs)")
    parser.add_argument("--no-extra", action="store_true", help="Oxford photos only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "log.jsonl", "a")

    train, extra, val = datasets(args.data)
    if args.no_extra:
        extra = []
    train, extra, val = train[: args.limit], extra[: args.limit], val[: args.limit]
    print(f"train: {len(train)} Oxford + {len(extra)} extra photos; val: {len(val)} Oxford photos", flush=True)

    model = CatBreedClassifier(pretrained_backbone())
    model.eval()
    kinds = ["full", "flip"] + ["crop"] * RANDOM_CROPS
    cache = args.out / f"features-{len(train)}-{len(extra)}-{len(val)}.pt"
    if cache.exists():
        feats = torch.load(cache)
    else:
        t0 = time.time()
        feats = {"train": cache_features(model.backbone, train + extra, rng, kinds),
                 "val": cache_features(model.backbone, val, rng, ["full"])}
        torch.save(feats, cache)
        print(f"cached features in {time.time() - t0:.0f}s", flush=True)
    labels = torch.tensor([b for _, b in train + extra]).repeat_interleave(len(kinds))
    weights = torch.tensor([1.0] * len(train) + [EXTRA_WEIGHT] * len(extra)).repeat_interleave(len(kinds))
    val_labels = torch.tensor([b for _, b in val])

    for p in model.backbone.parameters():
        p.requires_grad_(False)
    trainable = [*model.backbone._blocks[TAP + 1 :], model.backbone._conv_head, model.backbone._bn1, model.fc]
    params = [p for m in trainable for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW([{"params": model.fc.parameters(), "lr": LR},
                                   {"params": [p for m in trainable[:-1] for p in m.parameters()], "lr": LR / 5}],
                                  weight_decay=1e-2)
    base_lrs = [g["lr"] for g in optimiser.param_groups]
    steps_per_epoch = math.ceil(len(labels) / BATCH)
    total, step, best = args.epochs * steps_per_epoch, 0, -1.0
    for epoch in range(args.epochs):
        t0 = time.time()
        for m in trainable:
            m.train()
        order = torch.randperm(len(labels))
        losses = []
        for b in range(steps_per_epoch):
            for g, lr in zip(optimiser.param_groups, base_lrs):
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            idx = order[b * BATCH : (b + 1) * BATCH]
            logits = tail(model, feats["train"][idx].float())
            loss = (F.cross_entropy(logits, labels[idx], label_smoothing=LABEL_SMOOTHING, reduction="none") * weights[idx]).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            step += 1
        model.eval()
        with torch.no_grad():
            val_logits = torch.cat([tail(model, feats["val"][i : i + 128].float()) for i in range(0, len(val), 128)])
        record = {"epoch": epoch, "loss": float(np.mean(losses)), **evaluate_logits(val_logits, val_labels),
                  "seconds": round(time.time() - t0, 1)}
        print(json.dumps(record), flush=True)
        log.write(json.dumps(record) + "\n")
        log.flush()
        torch.save({"model": model.state_dict(), "epoch": epoch, "input": INPUT}, args.out / "checkpoint.pt")
    return model


if __name__ == "__main__":
    main()
