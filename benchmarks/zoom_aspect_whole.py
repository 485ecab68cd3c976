"""The whole-photo look at the photo's own aspect ratio too (issue 12's cost). A study, NOT shipped:
on training photos it passed (cost 1.29x-1.33x against 1.47x), but validation's kittens photo (three
~24-px faces in an 800x450 frame) lost a kitten: at 256 x 160 (or 128) the whole-photo look finds
none of them, so the no-face tiles run instead of the 640 look (see the results file's verdict).

The served first look stretches every photo to 256 x 256 px. At the photo's ratio (longer side
256, shorter side a multiple of 32: 256 x 192 for a 4:3 photo) it costs about 0.75 of that on
every photo, as the small-face look now does at 640 (zoom_aspect_look.py). The served first look is
int8, so the candidate is too: the served float weights at any input size (nets.AnySizeDetector),
quantized as training.quantize does, calibrated on the same training photos at their own ratio.
The closer looks' rows (the no-face tiles, at the photo's ratio too; the square windows at 256 x
256, all through the any-size int8 file as it would ship; the small-face look) and every rule stay
as served: a face's size "at the input" is still its longer side x 256. "rounded up": the shorter
side rounded up to the multiple, never down (a 16:9 photo's 144 px: 160, not 128).

/detect's lines on select_zoom's TRAINING photos (zoom_cost.measure) and, with --baseline, issue
12's cost line, against the served looks in one run.

    python benchmarks/zoom_aspect_whole.py --baseline runs/models-v1/models
"""
from __future__ import annotations

import datetime
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.zoom_sizes import WITHIN_ONE_PHOTO, run_study, study_args  # noqa: E402
from service.contract import DETECTOR_INPUT, ZOOM_SMALL_LOOK_MULTIPLE  # noqa: E402
from service.detection import small_look_size  # noqa: E402
from service.pipeline import CatFace, load, model_row  # noqa: E402
from service.runtime import OnnxModel  # noqa: E402
from training.export import OPSET  # noqa: E402
from training.from_onnx import load_folded  # noqa: E402
from training.nets import AnySizeDetector, CatFaceDetector, EfficientNetLite0  # noqa: E402
from training.quantize import detector_photos, quantize  # noqa: E402


def aspect_row(image: Image.Image, up: bool = False) -> np.ndarray:
    """The photo at its ratio, longer side 256; up: its shorter side rounded up to the multiple
    (never shorter than its ratio: 144 -> 160 for a 16:9 photo, where round gives 128)."""
    if not up:
        return model_row(image, small_look_size(*image.size, DETECTOR_INPUT, ZOOM_SMALL_LOOK_MULTIPLE))
    w, h = image.size
    short = math.ceil(DETECTOR_INPUT * min(w, h) / max(w, h) / ZOOM_SMALL_LOOK_MULTIPLE) * ZOOM_SMALL_LOOK_MULTIPLE
    return model_row(image, (short, DETECTOR_INPUT) if w >= h else (DETECTOR_INPUT, short))


def any_size_int8(served: OnnxModel, models: Path, data_dir: Path, threads: int, out: Path) -> OnnxModel:
    entry = {**served.entry, **served.entry["float_reference"], "weights": "float32"}
    net = load_folded(CatFaceDetector(EfficientNetLite0("lite0"), DETECTOR_INPUT), models / entry["file"],
                      DETECTOR_INPUT).eval()
    source, target = out / "catface-any.onnx", out / "catface-any.int8.onnx"
    torch.onnx.export(AnySizeDetector(net).eval(), (torch.rand(1, 3, 192, 256) * 255,), str(source),
                      input_names=["image"], output_names=["scores", "boxes"], opset_version=OPSET, dynamo=False,
                      dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                    "scores": {0: "batch", 1: "anchors"}, "boxes": {0: "batch", 1: "anchors"}})
    rows = [aspect_row(Image.open(p).convert("RGB")) for p in detector_photos(data_dir, 96)]
    quantize(source, target, rows, backbone_only=True)
    return OnnxModel({**served.entry, "weights": "int8"}, target, threads)


class AspectWhole(CatFace):
    """CatFace whose 256-side looks keep the photo's (or window's) aspect ratio, every such row
    through the any-size int8 file."""

    def __init__(self, models, anysize: OnnxModel, up: bool = False):
        super().__init__(models)
        self.anysize, self.up = anysize, up
        self.detectors = [*self.detectors, anysize]  # (counted by bench_models.counting_rows)

    def detector_input(self, image: Image.Image) -> np.ndarray:
        return aspect_row(image, self.up)

    def tile_inputs(self, image: Image.Image, windows: np.ndarray) -> np.ndarray:
        w, h = image.size  # (tiles at the photo's ratio; candidate windows are squares: 256 x 256)
        return np.stack([aspect_row(image.crop(tuple(np.round(win * [w, h, w, h]).astype(int))), self.up)
                         for win in windows])

    def detector_for(self, rows):
        if self.small_look is not None and max(rows.shape[2:4]) > DETECTOR_INPUT:
            return self.small_look
        return self.anysize


def main():
    args = study_args()
    report = {"date": datetime.date.today().isoformat(), "threads": args.threads,
              "rule_set_beforehand": WITHIN_ONE_PHOTO}
    with tempfile.TemporaryDirectory() as tmp:
        served = load(args.models, args.threads)
        anysize = any_size_int8(served.detector, args.models, args.data, args.threads, Path(tmp))
        run_study(args, report, [({"whole_look": "256 x 256"}, "served", served),
                                 ({"whole_look": "longer side 256, the photo's ratio; every 256-side row through "
                                                 "the any-size int8 file (as it would ship)"}, "aspect whole, one file",
                                  AspectWhole(served.models, anysize)),
                                 ({"whole_look": "as above, the shorter side rounded up to the multiple"},
                                  "aspect whole, one file, rounded up",
                                  AspectWhole(served.models, anysize, up=True))], "zoom-aspect-whole")

if __name__ == "__main__":
    main()
