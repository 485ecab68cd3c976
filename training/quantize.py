"""int8 ONNX files: static QDQ, per-channel weights, calibrated on training photos fed exactly as
the service feeds them (its own stage functions). Only the backbone's MBConv blocks are
quantized: the stem and the small heads stay float (most of the int8 error, little of the cost).

`training.export` runs this for the models whose shipped weights are int8 (`export.WEIGHTS`):
the manifest's ONNX entry then names `<model>.int8.onnx` (weights "int8") and keeps the float
export it came from as `float_reference` (the file the CoreML model is checked against).

Whether a model ships int8 is decided by measurement, on a copy of the models folder:

    python -m training.quantize --data ../shared/data --models models --out runs/int8
    python -m training.evaluate --models runs/int8/models --out runs/int8

against the float numbers (issue 17's bounds: detector recall and false faces within 0.5 point,
landmark NME within 0.002, breeds top-1 and macro F1 within 0.5 point).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from service.pipeline import CatFace, load
from service.runtime import entry_files

from .export import file_facts
from .train_breeds import datasets as breed_datasets
from .train_detector import split_sources


class Rows(CalibrationDataReader):
    def __init__(self, rows: list[np.ndarray]):
        self.rows = ({"image": r[None].astype(np.float32)} for r in rows)  # (one at a time: large rows add up)

    def get_next(self):
        return next(self.rows, None)


def detector_photos(data_dir: Path, count: int) -> list[Path]:
    """The detector's calibration photos: about `count` training Crawford cats and a quarter as many dogs."""
    cats, dogs = split_sources(data_dir, "train")
    return [c.path for c in cats[:: max(1, len(cats) // count)]] + dogs[:: max(1, len(dogs) // (count // 4))]


def calibration_rows(catface: CatFace, data_dir: Path, count: int, names: list[str]) -> dict[str, list[np.ndarray]]:
    """Inputs of the named models from training photos: Crawford cats and dogs for the detector,
    the faces the detector finds for the landmarker, photos and face crops of Oxford + extra cats
    and of dogs for breeds."""
    rows: dict[str, list[np.ndarray]] = {"catface": [], "catlandmarks": [], "catbreeds": []}
    if {"catface", "catlandmarks"} & set(names):
        for path in detector_photos(data_dir, count):
            image = Image.open(path).convert("RGB")
            rows["catface"].append(catface.detector_input(image))
            for face in catface.detect([image], breeds=False)[0][:1]:
                rows["catlandmarks"].extend(catface.landmark_input(image, face)[0])
    if "catbreeds" in names:
        train, extra, _ = breed_datasets(data_dir)
        _, dogs = split_sources(data_dir, "train")
        breed_photos = [p for p, _ in (train + extra)[:: max(1, len(train + extra) // count)]]
        # Dogs too: the classifier's cat output must see the range of its negatives (calibrated
        # on cats alone, int8 answered `cat` for every validation dog photo).
        for path in breed_photos + dogs[:: max(1, len(dogs) // (count // 2))]:
            image = Image.open(path).convert("RGB")
            faces = catface.detect([image], breeds=False)[0]
            rows["catbreeds"].extend(catface.breed_inputs(image, faces[:1]))
    return rows


def kept_float(model: Path, backbone_only: bool, float_blocks: tuple[int, ...]) -> list[str]:
    """Nodes that stay float: with backbone_only, everything but the backbone's MBConv blocks (the
    stem that sees the pixels, and the small heads that make the outputs: most of the error, little
    of the cost); and the nodes of float_blocks."""
    blocks = tuple(f"/_blocks.{b}/" for b in float_blocks)
    return [n.name for n in onnx.load(str(model)).graph.node
            if (backbone_only and "/_blocks." not in n.name) or any(b in n.name for b in blocks)]


def quantize(source: Path, target: Path, rows: list[np.ndarray], backbone_only: bool,
             reduce_range: bool = False, calibrate_method: CalibrationMethod = CalibrationMethod.MinMax,
             float_blocks: tuple[int, ...] = ()) -> None:
    """reduce_range: 7-bit weights, which the u8 x s8 kernels of AVX2-only CPUs sum without
    saturating (measured, not shipped: they lost faces; benchmarks/int8_7bit.py). calibrate_method
    and float_blocks (backbone blocks kept float too): measured for catlandmarks, not shipped
    (benchmarks/int8_landmarks.py)."""
    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # ONNX shape inference suffices
        quantize_static(str(prepared), str(target), Rows(rows), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        nodes_to_exclude=kept_float(prepared, backbone_only, float_blocks),
                        calibrate_method=calibrate_method)


def float_source(models: Path, entry: dict) -> Path:
    """The float ONNX file a model's int8 file is (re)made from."""
    return models / entry.get("float_reference", entry)["file"]


def small_look_rows(catface: CatFace, data_dir: Path, count: int) -> list[np.ndarray]:
    """The detector's calibration photos as the server feeds its small-face look (the photo's
    ratio kept: CatFace.small_look_row)."""
    return [catface.small_look_row(Image.open(p).convert("RGB"))[0] for p in detector_photos(data_dir, count)]


def quantize_into(models: Path, names: list[str], data_dir: Path, photos: int = 96, backbone_only: bool = True,
                  **options):
    """Writes <name>.int8.onnx beside each float file in `models` and points the manifest's ONNX
    entry of that model at it; for catface, its small-face look's file too (the entry's
    postprocess.zoom.small_look), calibrated at the look's own rows. options: quantize's."""
    catface = load(models)
    rows = calibration_rows(catface, data_dir, photos, names)
    manifest = json.loads((models / "manifest.json").read_text())
    for name in names:
        entry = next(m for m in manifest["models"] if m["name"] == name and m["format"] == "onnx")
        for file in entry_files(entry):  # (catface's small-face look: at its own rows)
            calibration = rows[name] if file is entry else small_look_rows(catface, data_dir, photos)
            source = float_source(models, file)
            target = models / f"{source.stem}.int8.onnx"
            quantize(source, target, calibration, backbone_only, **options)
            file.update(file_facts(target), weights="int8", float_reference=file_facts(source))
            print(f"{target}: {target.stat().st_size / 1e6:.2f} MB from {len(calibration)} calibration rows "
                  f"({source.stat().st_size / 1e6:.2f} MB float)", flush=True)
    (models / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("runs/int8"))
    parser.add_argument("--only", nargs="*", default=["catface", "catlandmarks", "catbreeds"])
    parser.add_argument("--photos", type=int, default=96, help="calibration photos per model")
    parser.add_argument("--whole-graph", action="store_true",
                        help="quantize the stem and heads too (default: only the backbone's blocks)")
    args = parser.parse_args(argv)
    # A models folder like the shipped one with the int8 files in place of the float ones, for
    # `python -m training.evaluate --models <out>/models --out <out>` and the benchmarks.
    swapped = args.out / "models"
    shutil.copytree(args.models, swapped, dirs_exist_ok=True)
    quantize_into(swapped, args.only, args.data, args.photos, backbone_only=not args.whole_graph)


if __name__ == "__main__":
    main()
