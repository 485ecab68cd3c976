"""Export trained checkpoints to ONNX in models/ and write their entries in models/manifest.json.

    python -m training.export --runs runs --out models

Each graph takes raw RGB 0..255, NCHW float32, batch dimension dynamic; normalisation and
box decoding are inside the graph. The manifest is the one place that tells the server and the
iOS app how to feed each model and read its outputs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from service.contract import (
    BREED_CROP_SCALE,
    BREED_REPORT_THRESHOLD,
    CAT_THRESHOLD,
    CONTAINMENT_THRESHOLD,
    DETECTOR_INPUT,
    IOU_THRESHOLD,
    LANDMARK_CROP_SCALE,
    LANDMARK_LOOKS,
    MAX_FACES,
    SCORE_THRESHOLD,
    ZOOM_BELOW,
    ZOOM_CANDIDATE_SCORE,
    ZOOM_CANDIDATE_WINDOW,
    ZOOM_CANDIDATES_FROM,
    ZOOM_EDGE,
    ZOOM_GRID_NONE,
    ZOOM_GRID_SMALL,
    ZOOM_MAX_CANDIDATES,
    ZOOM_OVERLAP,
    ZOOM_SMALL_LOOK,
    ZOOM_SMALL_LOOK_BATCH,
    ZOOM_SMALL_LOOK_MULTIPLE,
)

from . import data
from .nets import AnySizeDetector, CatBreedClassifier, CatFaceDetector, CatLandmarker, EfficientNetLite0

# Per model: a retrained model, or one that answers differently (catface 2.1.0: the small-face look one int8 file
# at 640 px instead of float tiles), gets a new version (the manifest says which one is shipped).
VERSIONS = {"catface": "2.1.0", "catlandmarks": "1.1.0", "catbreeds": "2.2.0"}
# The weights each model's served ONNX file has: int8 where the validation numbers held within
# issue 17's bounds (model card), float32 where they did not. CoreML files stay float16.
WEIGHTS = {"catface": "int8", "catlandmarks": "float32", "catbreeds": "float32"}
# Per model: whether its graph averages each input with its mirror. Not the detector (measured: no
# help). The landmarker up to 1.0.0; since 1.1.0 the service makes the mirror one of its looks
# (contract.LANDMARK_LOOKS). The classifier, no since 2.2.0: on the selection folds, scored as the
# service cuts rows, 2.1.0's recipe got 286 of 304 without it against 283 with it, at half the cost
# (benchmarks/results/breeds-mirror-2026-12-04.json).
MIRROR = {"catface": False, "catlandmarks": False, "catbreeds": False}
OPSET = 17
PIXELS = {"name": "image", "layout": "NCHW", "dtype": "float32", "color": "RGB",
          "range": "0..255 (normalisation is inside the graph)"}


def file_facts(path: Path) -> dict:
    blob = path.read_bytes()
    return {"file": path.name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}


MODEL_NAMES = {CatFaceDetector: "catface", CatLandmarker: "catlandmarks", CatBreedClassifier: "catbreeds"}


def load_checkpoint(kind, path: Path):
    """A trained model as shipped (eval mode; averaging with the mirror where MIRROR says)."""
    state = torch.load(path, map_location="cpu")
    size = DETECTOR_INPUT if kind is CatFaceDetector else state["input"]
    backbone = EfficientNetLite0(state.get("backbone", "lite0"))
    model = kind(backbone, size) if kind is not CatBreedClassifier else kind(backbone)
    model.load_state_dict(state["model"])
    model.flip_average = MIRROR[MODEL_NAMES[kind]]
    return model.eval(), size


def export_onnx(model: torch.nn.Module, size: int, outputs: list[str], path: Path) -> None:
    example = torch.rand(2, 3, size, size) * 255
    torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=outputs,
                      dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                      opset_version=OPSET, dynamo=False)
    assert_same_outputs(model, path, example)


def assert_same_outputs(model: torch.nn.Module, path: Path, example: torch.Tensor, atol: float = 1e-4) -> None:
    """The ONNX file computes what the torch model computes on `example` (every output)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": example.numpy()})
    with torch.no_grad():
        want = model(example)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=atol, rtol=1e-3)


def training_faces(run: Path) -> dict[str, int]:
    """The detector's training faces per collection, as its checkpoint recorded them."""
    return torch.load(run / "checkpoint.pt", map_location="cpu").get("faces_by_source", {})


def detector_entry(size: int) -> dict:
    grids = CatFaceDetector.grids(size)
    anchors = CatFaceDetector.anchor_count(size)
    return {
        "name": "catface", "format": "onnx", "version": VERSIONS["catface"], "task": "cat face detection",
        "inputs": [{**PIXELS, "shape": ["batch", 3, size, size],
                    "resize": f"the whole photo stretched to {size}x{size} (aspect ratio not kept)"}],
        "outputs": [
            {"name": "scores", "shape": ["batch", anchors], "meaning": "face probability per anchor"},
            {"name": "boxes", "shape": ["batch", anchors, 4],
             "meaning": "x_min, y_min, x_max, y_max per anchor, normalised to the input (0..1), already decoded"},
        ],
        "anchors": {"kind": "grids", "levels": [{"stride": s, "grid": [g, g], "face_sides_px": list(r)}
                                                for s, g, r in zip(CatFaceDetector.STRIDES, grids,
                                                                   CatFaceDetector.LEVEL_SIZES)],
                    "order": "levels in this order, each row-major",
                    "centre": "((col + 0.5) / grid, (row + 0.5) / grid) of the anchor's level",
                    "decoding": "box = centre -/+ exp(ltrb) * stride / input, done inside the graph"},
        "postprocess": {"score_threshold": SCORE_THRESHOLD, "iou_threshold": IOU_THRESHOLD,
                        "containment_threshold": CONTAINMENT_THRESHOLD, "max_faces": MAX_FACES,
                        "method": "greedy NMS over boxes with score >= threshold: a box goes when its IoU with a "
                                  "better box is over iou_threshold, or when containment_threshold of the smaller "
                                  "of the two lies inside the other; multiply by the photo's width/height",
                        "zoom": zoom_entry()},
        "box_convention": "the tight box around the 9 Crawford landmarks (ears included), clamped to the image",
        "labels": ["cat"],
    }


def zoom_entry() -> dict:
    return {"below_px": ZOOM_BELOW, "grid_none": ZOOM_GRID_NONE, "grid_small": ZOOM_GRID_SMALL,
            "overlap": ZOOM_OVERLAP, "edge_px": ZOOM_EDGE, "candidate_score": ZOOM_CANDIDATE_SCORE,
            "candidate_window": ZOOM_CANDIDATE_WINDOW, "max_candidates": ZOOM_MAX_CANDIDATES,
            "candidates_from": list(ZOOM_CANDIDATES_FROM),
            "small_look": {"side": ZOOM_SMALL_LOOK, "multiple": ZOOM_SMALL_LOOK_MULTIPLE,
                           "max_batch": ZOOM_SMALL_LOOK_BATCH},
            "method": "closer looks after the whole photo's: (1) when it keeps no face, tiles of grid_none x grid_none "
                      "('none'): windows (1 + overlap) / grid of the photo's width and height, evenly spaced from "
                      "edge to edge, row-major, each stretched to the input and post-processed as above; a "
                      "window's box within edge_px (at the input) of an edge shared with another window goes. When "
                      "it keeps a face whose longer side is under below_px at the input ('small'): the whole photo "
                      "resized to small_look.side px on its longer side and its aspect ratio on the other, rounded "
                      "to a multiple of small_look.multiple, through small_look.file (the same weights, any input "
                      "size: the magnification grid_small x grid_small such tiles had along the longer side), "
                      "post-processed as above. "
                      "(2) Boxes scored from candidate_score up but under "
                      "score_threshold by the looks named in candidates_from ('photo', 'small'), after one NMS "
                      "with the faces and away from them (IoU <= iou_threshold, containment under "
                      "containment_threshold), best first, at most max_candidates: each gets a square window of "
                      "candidate_window x its longer side, centred on it (black outside the photo); the best box "
                      "there scoring >= score_threshold with IoU > iou_threshold with it is a face. All faces "
                      "(photo coordinates) go through the same NMS and max_faces"}


def export_small_look(model: CatFaceDetector, out: Path) -> dict:
    """The detector's weights for the small-face look at any input height and width
    (nets.AnySizeDetector), for the zoom entry's small_look (float32 here; training.quantize makes
    its int8 file where WEIGHTS says so); checked against the torch model at the square side and at
    a 4:3 one."""
    path = out / f"catface.{ZOOM_SMALL_LOOK}.onnx"
    look = AnySizeDetector(model).eval()
    example = torch.rand(1, 3, ZOOM_SMALL_LOOK * 3 // 4, ZOOM_SMALL_LOOK) * 255
    torch.onnx.export(look, (example,), str(path), input_names=["image"], output_names=["scores", "boxes"],
                      dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                    "scores": {0: "batch", 1: "anchors"}, "boxes": {0: "batch", 1: "anchors"}},
                      opset_version=OPSET, dynamo=False)
    for shape in [(2, 3, ZOOM_SMALL_LOOK, ZOOM_SMALL_LOOK), (1, 3, ZOOM_SMALL_LOOK, ZOOM_SMALL_LOOK * 3 // 4)]:
        assert_same_outputs(look, path, torch.rand(*shape) * 255)
    return {"side": ZOOM_SMALL_LOOK, "multiple": ZOOM_SMALL_LOOK_MULTIPLE, "max_batch": ZOOM_SMALL_LOOK_BATCH,
            "weights": "float32", **file_facts(path)}


def add_small_look(out: Path) -> None:
    """Export the small-face look from the shipped float catface file (a model exported before the
    look existed; its weights, BatchNorm folded, run as the checkpoint's) into its manifest entry."""
    from .from_onnx import load_folded

    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(m for m in manifest["models"] if m["name"] == "catface" and m["format"] == "onnx")
    source = out / entry.get("float_reference", entry)["file"]
    model = load_folded(CatFaceDetector(EfficientNetLite0("lite0"), DETECTOR_INPUT), source, DETECTOR_INPUT).eval()
    entry["postprocess"]["zoom"] = {**zoom_entry(), "small_look": export_small_look(model, out)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def landmarks_entry(size: int) -> dict:
    return {
        "name": "catlandmarks", "format": "onnx", "version": VERSIONS["catlandmarks"], "task": "9 cat face landmarks",
        "inputs": [{**PIXELS, "shape": ["batch", 3, size, size],
                    "crop": {"scale": LANDMARK_CROP_SCALE,
                             "rule": f"a square of side {LANDMARK_CROP_SCALE} x the longer side of the face box, "
                                     f"centred on the box, resized to {size}x{size}; outside the photo is black",
                             "looks": list(LANDMARK_LOOKS),
                             "looks_rule": "the net runs once per look, on the square of the look's scale x the "
                                           "crop's side (mirrored left to right where mirror is true); the face's "
                                           "points are the mean of the looks' points in the photo, a mirrored "
                                           "look's points first put back in order (point i is its point "
                                           "mirror_permutation[i])"}}],
        "outputs": [{"name": "landmarks", "shape": ["batch", 18],
                     "meaning": "x0, y0, ..., x8, y8 normalised to the crop (0..1), in landmark_names order"}],
        "landmark_names": data.LANDMARK_NAMES,
        "mirror_permutation": data.FLIP_PERMUTATION,
    }


def breeds_entry(size: int) -> dict:
    return {
        "name": "catbreeds", "format": "onnx", "version": VERSIONS["catbreeds"], "task": "cat breed classification",
        "inputs": [{**PIXELS, "shape": ["batch", 3, size, size],
                    "resize": f"the photo (or a face crop) stretched to {size}x{size}",
                    "crop": {"scale": BREED_CROP_SCALE,
                             "rule": f"a face's view: a square of side {BREED_CROP_SCALE} x the longer side of the "
                                     f"face box, centred on the box, resized to {size}x{size}; "
                                     "outside the photo is black"}}],
        "outputs": [{"name": "probabilities", "shape": ["batch", len(data.BREEDS)], "meaning": "softmax over labels"},
                    {"name": "cat", "shape": ["batch", 1],
                     "meaning": "probability that the view shows a cat at all (dog photos were the negatives)"}],
        "labels": data.BREEDS,
        "report_threshold": BREED_REPORT_THRESHOLD,
        "cat_threshold": CAT_THRESHOLD,
        "product_rule": "one face found: its crop and the whole photo averaged; otherwise the whole photo. "
                        "The photo shows a cat when `cat` >= cat_threshold for the photo or a face's crop; "
                        "/detect keeps a face only when `cat` >= cat_threshold for its crop",
    }


def update_manifest(out: Path, entries: list[dict]) -> None:
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"models": []}
    replaced = {(e["name"], e["format"]) for e in entries}  # one entry per model and format
    manifest["models"] = [m for m in manifest["models"] if (m["name"], m["format"]) not in replaced] + entries
    manifest["models"].sort(key=lambda m: (m["name"], m["format"]))
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--only", nargs="*", default=["catface", "catlandmarks", "catbreeds"])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="calibration photos for int8")
    parser.add_argument("--float-only", action="store_true",
                        help="no int8 files (the intermediate detectors that label photos ran float)")
    parser.add_argument("--small-look-only", action="store_true",
                        help="only (re)make the detector's small-face look file from the float catface in --out")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.small_look_only:
        return add_small_look(args.out)
    entries = []
    if "catface" in args.only:
        model, size = load_checkpoint(CatFaceDetector, args.runs / "detector" / "checkpoint.pt")
        export_onnx(model, size, ["scores", "boxes"], args.out / "catface.onnx")
        entry = detector_entry(size)
        entry["postprocess"]["zoom"]["small_look"] = export_small_look(model, args.out)
        entries.append({**entry, "training_faces": training_faces(args.runs / "detector"),
                        **file_facts(args.out / "catface.onnx")})
    if "catlandmarks" in args.only:
        model, size = load_checkpoint(CatLandmarker, args.runs / "landmarks" / "checkpoint.pt")
        export_onnx(model, size, ["landmarks"], args.out / "catlandmarks.onnx")
        entries.append({**landmarks_entry(size), **file_facts(args.out / "catlandmarks.onnx")})
    if "catbreeds" in args.only:
        model, size = load_checkpoint(CatBreedClassifier, args.runs / "breeds" / "checkpoint.pt")
        export_onnx(model, size, ["probabilities", "cat"], args.out / "catbreeds.onnx")
        entries.append({**breeds_entry(size), **file_facts(args.out / "catbreeds.onnx")})
    update_manifest(args.out, [{**e, "weights": "float32"} for e in entries])
    for e in entries:
        print(f"{e['file']}: {e['bytes'] / 1e6:.2f} MB sha256 {e['sha256'][:12]}")
    int8 = [] if args.float_only else [n for n in args.only if WEIGHTS[n] == "int8"]
    if int8:
        from .quantize import quantize_into  # (quantize reads export's file facts)

        quantize_into(args.out, int8, args.data)


if __name__ == "__main__":
    main()
