"""Re-fit catbreeds' cat / not-a-cat output alone, on the views the service asks it about, in a
copy of the models folder, and measure what that changes.

    python -m training.refit_cat --data ../shared/data --models models --out runs/cat-refit
    python -m training.evaluate --models runs/cat-refit/models --out runs/cat-refit   # validation

The `cat` output is one logistic unit on the pooled embedding. `train_breeds` taught it cat and dog
photos whole and in random crops, but /detect's cat check asks it about the crop around each face
the detector keeps, and a dog's face-like crop was never among its negatives. This keeps the whole
network, so every breed probability is unchanged, and fits that one unit again on training photos
only, each seen as the service sees it (KINDS): whole; cut around the detector's best box from
HARD_NEGATIVE_SCORE up (far under the served threshold, so dogs get their face-like crops); and that
crop with the photo shrunk so the box is a small face (20-60 px, as the closer looks find faces far
away); each view with its mirror, as catbreeds 2.1.0's graph averaged them (2.2.0's does not).
Cats: the Oxford and extra breed photos and Crawford's; not cats: the dog photos. The fitted bias
is then raised, if needed, until every kind of cat view of the fit part is called a cat as often as by the old unit.

CHECK_PERCENT of the photos (by name hash) are left out of the fit; the unit before and after is
compared on them, view by view and as /detect and /breeds answer (mosaics of small faces too), in
--out/cat_refit.json. Whether the re-fitted unit ships is decided on that table, before any
validation run; copy --out/models over models/ (and bump export.VERSIONS) to ship it.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from PIL import Image

from service.pipeline import CatFace, Face, load

from . import data, export
from .evaluate import SMALL_FACE_SIDES, boxes_found, small_faces_recall
from .train_breeds import datasets
from .train_detector import split_sources

HARD_NEGATIVE_SCORE = 0.1  # a photo's face view: around the detector's best box from this score up
CHECK_PERCENT = 20         # photos left out of the fit to compare the unit before and after on
L2 = 1e-4                  # ridge on the unit's weights (set beforehand, not tuned)


def embedding_model(path: Path) -> tuple[onnx.ModelProto, str]:
    """catbreeds' graph with the cat unit's input (the pooled embedding of each view and of its
    mirror, stacked) as one more output."""
    model = onnx.load(path)
    unit = next(n for n in model.graph.node if "cat.weight" in n.input)
    model.graph.output.append(onnx.helper.make_tensor_value_info(unit.input[0], onnx.TensorProto.FLOAT, None))
    return model, unit.input[0]


KINDS = ("whole", "face", "small face")


def served_views(low: CatFace, image: Image.Image, rng) -> list[np.ndarray]:
    """The views the service asks the cat output about (KINDS): the whole photo, the crop around
    the detector's best box (from `low`'s threshold up) when there is one, and the same crop with
    the photo shrunk so that box is a small face (when it is larger)."""
    views = [low.breed_input(image)]
    for face in low.faces([image], zoom=False)[0][:1]:
        views.append(low.breed_input(image, face))
        k = rng.uniform(*SMALL_FACE_SIDES) / max(face.box[2] - face.box[0], face.box[3] - face.box[1], 1.0)
        if k < 1:
            small = image.resize((max(1, round(image.width * k)), max(1, round(image.height * k))), Image.BILINEAR)
            views.append(low.breed_input(small, Face(face.box * k, face.score)))
    return views


def embed(session: ort.InferenceSession, name: str, rows: np.ndarray) -> np.ndarray:
    """(V, 3, H, W) views -> (V, M, D) embeddings: each view's, and its mirror's where the graph
    averages with the mirror (M = 2, catbreeds up to 2.1.0; else M = 1)."""
    (x,) = session.run([name], {"image": rows.astype(np.float32)})
    return x.reshape(len(x) // len(rows), len(rows), -1).transpose(1, 0, 2)


def embeddings(low: CatFace, session, name, photos: list[tuple[Path, bool]], rng) -> dict[str, np.ndarray]:
    """Every view of every photo: "pairs" (V, 2, D) embeddings (the view's and its mirror's),
    "is_cat", "owner" (photo index) and "kind" (one of KINDS)."""
    pairs, is_cat, owner, kind, batch = [], [], [], [], []

    def flush():
        pairs.extend(embed(session, name, np.stack(batch)))
        batch.clear()

    for i, (path, cat) in enumerate(photos):
        for k, v in zip(KINDS, served_views(low, Image.open(path).convert("RGB"), rng)):
            batch.append(v)
            is_cat.append(cat)
            owner.append(i)
            kind.append(k)
        if len(batch) >= 16:
            flush()
        if i % 500 == 0:
            print(f"  {i}/{len(photos)} photos", flush=True)
    if batch:
        flush()
    return {"pairs": np.stack(pairs), "is_cat": np.array(is_cat), "owner": np.array(owner), "kind": np.array(kind)}


def fit_unit(x: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression from the shipped unit: x (N, D) embeddings, y (N,) 1 = cat."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    w = torch.tensor(w0.reshape(-1), requires_grad=True)
    b = torch.tensor(b0.reshape(-1), requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ w + b, yt) + L2 * (w ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return w.detach().numpy().reshape(w0.shape), b.detach().numpy().reshape(b0.shape)


def cat_probability(pairs: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What the graph's `cat` output answers for each view: its sigmoid (and its mirror's, averaged)."""
    logits = pairs @ w.reshape(-1) + b.reshape(-1)
    return (1 / (1 + np.exp(-logits))).mean(axis=1)


def keep_cats(pairs, kind, w, b, w0, b0, threshold: float) -> np.ndarray:
    """The fitted unit's bias, raised as little as needed that each kind of cat view (`pairs`: cat
    views of the fit part) is called a cat at least as often as the old unit called it: the re-fit
    may turn more dogs away, not more cats."""
    old = {k: (cat_probability(pairs[kind == k], w0, b0) >= threshold).mean() for k in KINDS}

    def short(bias):
        return any((cat_probability(pairs[kind == k], w, bias) >= threshold).mean() < old[k] for k in KINDS)

    low, high = 0.0, 20.0
    if not short(b):
        return b
    for _ in range(40):  # bisection on the shift
        mid = (low + high) / 2
        low, high = (mid, high) if short(b + mid) else (low, mid)
    return b + high


def product_check(catface: CatFace, cats: list[Path], dogs: list[Path], crawford: list[data.CatPhoto]) -> dict:
    """What /detect and /breeds answer for the left-out photos, and /detect's recall on mosaics of
    small faces (evaluate's, from the left-out Crawford cats and dogs)."""
    def answers(paths):
        images = [Image.open(p).convert("RGB") for p in paths]
        faces = [len(catface.detect([im], breeds=True)[0]) for im in images]
        return faces, [r.cat for r in catface.classify(images)]

    dog_faces, dog_cat = answers(dogs)
    cat_faces, cat_cat = answers(cats)
    return {"false_faces_per_dog_photo": float(np.mean(dog_faces)),
            "dog_photos_answered_cat": float(np.mean(dog_cat)),
            "cat_photos_with_a_face": float(np.mean(np.array(cat_faces) > 0)),
            "cat_photos_answered_cat": float(np.mean(cat_cat)),
            "small_faces_recall": small_faces_recall(crawford, dogs, boxes_found(catface))["recall_iou50"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("runs/cat-refit"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="use only N photos of each kind: smoke runs")
    args = parser.parse_args(argv)
    catface = load(args.models, args.threads)
    low = copy.copy(catface)
    low.score_threshold = HARD_NEGATIVE_SCORE

    oxford, extra, _ = datasets(args.data)  # training photos only
    crawford, dogs = split_sources(args.data, "train")
    lim = slice(None, args.limit)
    cats = [p for p, _ in oxford[lim]] + [p for p, _ in extra[lim]] + [c.path for c in crawford[lim]]
    photos = [(p, True) for p in cats] + [(p, False) for p in dogs[lim]]
    left_out = np.array([data.split_of("catcheck/" + p.name, CHECK_PERCENT) == "val" for p, _ in photos])
    print(f"{len(cats)} cat and {len(dogs[lim])} dog training photos; {left_out.sum()} left out to check", flush=True)

    path = args.models / "catbreeds.onnx"
    model, name = embedding_model(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    cache = args.out / f"embeddings-{export.file_facts(path)['sha256'][:12]}-{args.limit}.npz"
    if cache.exists():  # (the same file and photos: the views' embeddings do not change)
        views = dict(np.load(cache))
    else:
        views = embeddings(low, session, name, photos, np.random.default_rng(0))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **views)
    pairs, is_cat, owner, kind = views["pairs"], views["is_cat"], views["owner"], views["kind"]
    checked = left_out[owner]

    init = {i.name: i for i in model.graph.initializer}
    w0, b0 = numpy_helper.to_array(init["cat.weight"]), numpy_helper.to_array(init["cat.bias"])
    fit = ~checked
    w, b = fit_unit(pairs[fit].reshape(-1, pairs.shape[-1]), np.repeat(is_cat[fit], pairs.shape[1]), w0, b0)
    threshold = catface.cat_threshold
    cats_fit = fit & is_cat
    fitted_bias = float(b.reshape(-1)[0])
    b = keep_cats(pairs[cats_fit], kind[cats_fit], w, b, w0, b0, threshold)
    print(f"bias {fitted_bias:.3f} -> {float(b.reshape(-1)[0]):.3f} to keep the fit part's cats", flush=True)

    views_table = []
    for animal, want in (("cat", True), ("dog", False)):
        for k in KINDS:
            rows = checked & (is_cat == want) & (kind == k)
            views_table.append({"photos": animal, "view": k, "views": int(rows.sum()),
                                "called_cat_before": float((cat_probability(pairs[rows], w0, b0) >= threshold).mean()),
                                "called_cat_after": float((cat_probability(pairs[rows], w, b) >= threshold).mean())})
            print(json.dumps(views_table[-1]), flush=True)

    refit = onnx.load(path)
    for initializer in refit.graph.initializer:
        if initializer.name in ("cat.weight", "cat.bias"):
            value = w if initializer.name == "cat.weight" else b
            initializer.CopyFrom(numpy_helper.from_array(value.astype(np.float32), initializer.name))

    noisy = {p for p, _ in extra}  # (small web photos: the product check reads Oxford and Crawford)
    left_paths = {p for (p, _), out in zip(photos, left_out) if out}
    check_cats = [p for p, c in photos if c and p in left_paths and p not in noisy]
    check_dogs = [p for p, c in photos if not c and p in left_paths]
    out_crawford = [c for c in crawford[lim] if c.path in left_paths]
    product = {"before": product_check(catface, check_cats, check_dogs, out_crawford)}
    catface.classifier.session = ort.InferenceSession(refit.SerializeToString(), options,
                                                      providers=["CPUExecutionProvider"])
    product["after"] = product_check(catface, check_cats, check_dogs, out_crawford)
    print(json.dumps(product), flush=True)

    copy_dir = args.out / "models"
    shutil.copytree(args.models, copy_dir, dirs_exist_ok=True)
    onnx.save(refit, copy_dir / path.name)
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    (entry,) = [m for m in manifest["models"] if m["name"] == "catbreeds" and m["format"] == "onnx"]
    export.update_manifest(copy_dir, [{**entry, **export.file_facts(copy_dir / path.name)}])
    (args.out / "cat_refit.json").write_text(json.dumps({
        "split": "train", "photos": f"{len(cats)} cat and {len(dogs[lim])} dog training photos",
        "left_out": f"{left_out.sum()} photos ({CHECK_PERCENT}% by name); /detect and /breeds on its "
                    f"{len(check_cats)} Oxford and Crawford cat photos and {len(check_dogs)} dog photos",
        "hard_negative_score": HARD_NEGATIVE_SCORE, "l2": L2, "bias": {"fitted": fitted_bias, "kept_cats": float(
            b.reshape(-1)[0])}, "views": views_table, "served": product},
        indent=1) + "\n")


if __name__ == "__main__":
    main()
