"""Closer looks at smaller detector inputs: what they save and what they lose (issue 12's cost).

The detector is fully convolutional, so its weights run at any input side that its strides divide
(only the anchor grids change: nets.CatFaceDetector.set_input_size). This study exports the
shipped float catface at smaller sides and runs the small-face tiles and the candidate windows at
them, the whole-photo look staying the served int8 file at 256:

1. each side's detector time per row (the service's session options, batch 1 and 9);
2. per candidate (tile side, window side), /detect's lines on select_zoom's TRAINING photos
   (zoom_cost.measure);
3. with --baseline, issue 12's cost line (bench_models.against_baseline) on the same 8 photos.

    python benchmarks/zoom_sizes.py --baseline runs/models-v1/models

The tiles' edge margin stays edge_px at 256 (2 px), a little narrower at a smaller side.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_models import against_baseline, bench_photos, median_ms  # noqa: E402
from benchmarks.zoom_cost import measure  # noqa: E402
from service.contract import DETECTOR_INPUT  # noqa: E402
from service.pipeline import CatFace, load, model_row  # noqa: E402
from service.runtime import OnnxModel  # noqa: E402
from training.evaluate import boxes_found  # noqa: E402
from training.export import export_onnx  # noqa: E402
from training.from_onnx import load_folded  # noqa: E402
from training.nets import CatFaceDetector, EfficientNetLite0  # noqa: E402
from training.select_zoom import photo_sets  # noqa: E402

SIDES = (128, 160, 192)
CANDIDATES = [(256, 256), (160, 128), (192, 128), (160, 256), (192, 256), (256, 192)]  # (tiles, windows)


def detectors_at(served: OnnxModel, models: Path, sides, threads: int, out: Path) -> dict[int, OnnxModel]:
    """The served catface's float file exported at each side, as OnnxModels."""
    entry = {**served.entry, **served.entry.get("float_reference", {}), "weights": "float32"}
    net = load_folded(CatFaceDetector(EfficientNetLite0("lite0"), DETECTOR_INPUT), models / entry["file"],
                      DETECTOR_INPUT).eval()
    sessions = {}
    for side in sides:
        net.set_input_size(side)
        export_onnx(net, side, ["scores", "boxes"], out / f"catface-{side}.onnx")
        shape = [1, 3, side, side]
        sessions[side] = OnnxModel({**entry, "inputs": [{**entry["inputs"][0], "shape": shape}]},
                                   out / f"catface-{side}.onnx", threads)
    return sessions


class SidedDetector:
    """The served detector for 256-px rows (the exported float one with float256), the exported
    ones for the others."""

    def __init__(self, served: OnnxModel, others: dict[int, OnnxModel], float256: bool = False):
        self.served, self.others, self.float256 = served, others, float256
        self.entry, self.input_size, self.name = served.entry, served.input_size, served.name

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        side = batch.shape[-1]
        served = side == self.input_size[1] and not self.float256
        return self.served.run(batch) if served else self.others[side].run(batch)


class SizedLooks(CatFace):
    """CatFace whose small-face tiles and candidate windows run at their own input sides."""

    def __init__(self, models, others: dict[int, OnnxModel], tiles: int, windows: int):
        super().__init__(models)
        self.detector = SidedDetector(models["catface"], others)
        self.detectors = [self.detector]
        self.small_look = None  # (the tiles this study sizes, not the served one-look)
        self.sides, self._next = {"tiles": tiles, "windows": windows}, DETECTOR_INPUT

    def detector_for(self, rows):
        return self.detector  # (it runs every side)

    def zoom_windows(self, faces, image):
        self._next = self.sides["tiles"]
        return super().zoom_windows(faces, image)

    def candidate_windows(self, candidates, faces, image):
        self._next = self.sides["windows"]
        return super().candidate_windows(candidates, faces, image)

    def tile_inputs(self, image: Image.Image, windows: np.ndarray) -> np.ndarray:
        w, h, side = *image.size, self._next
        return np.stack([model_row(image.crop(tuple(np.round(win * [w, h, w, h]).astype(int))), (side, side))
                         for win in windows])


# The rule the zoom studies set before they run (each study's report says it); a study adds its own tie-break.
WITHIN_ONE_PHOTO = ("A candidate goes to validation only if every training-photo line stays within one photo of the "
                    "served one's, measured in the same run (Crawford recall and precision, small-face recall in "
                    "square and wide frames, false "
                    "faces on dogs, Oxford photos with a face, no photo with two boxes on one face), and its cost line "
                    "is <= 1.5x.")
# /detect's validation lines a closer-look or detector-file candidate's validation run is held to.
VALIDATION_DETECT_LINES = ("(Crawford recall and precision, dogs, two boxes on one face, Oxford photos with a face, "
                           "small faces in square and wide frames, the kittens photo)")


def write_study(stem: str, record: dict) -> Path:
    """A study's record as benchmarks/results/<stem>-<today>.json (dated first); its path."""
    date = datetime.date.today().isoformat()
    out = Path(__file__).resolve().parent / "results" / f"{stem}-{date}.json"
    out.write_text(json.dumps({"date": date, **record}, indent=1) + "\n")
    return out


def study_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    parser.add_argument("--baseline", type=Path, default=None, help="a models folder for issue 12's cost line")
    parser.add_argument("--plain", type=Path, default=None,
                        help="landmarks_scales: a models folder whose catlandmarks graph has no mirror inside")
    parser.add_argument("--second", action="store_true", help="int8_landmarks: the second try's candidates")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    return parser.parse_args()


def row_ms(named, repeats: int, batch9: bool) -> dict:
    """Detector time per row of each (name, side, model): batch 1, and with batch9 a batch of 9."""
    timing = {}
    for name, side, model in named:
        one = np.random.default_rng(0).uniform(0, 255, (1, 3, side, side)).astype(np.float32)
        timing[name] = {"weights": model.entry["weights"],
                        "batch1_ms": round(median_ms(lambda m=model, x=one: m.run(x), repeats), 2)}
        if batch9:
            nine = np.repeat(one, 9, 0)
            timing[name]["batch9_ms_per_row"] = round(median_ms(lambda m=model, x=nine: m.run(x), repeats // 3) / 9, 2)
        print(name, timing[name], flush=True)
    return timing


def run_study(args, report: dict, candidates, stem: str) -> None:
    """Each candidate (its fields, name, CatFace): /detect's lines on select_zoom's training photos
    and, with --baseline, issue 12's cost line; written to results/<stem>-<date>.json."""
    cats, dogs, oxford = photo_sets(args.data)
    photos = bench_photos(args.data)
    baseline = load(args.baseline, args.threads) if args.baseline else None
    rows = []
    for fields, name, catface in candidates:
        row = {**fields, **measure(catface, name, cats, dogs, oxford, boxes_found(catface))}
        if baseline:
            row["cost"] = against_baseline(catface, baseline, photos, args.repeats)
        print(json.dumps(row), flush=True)
        rows.append(row)
    report["candidates"] = rows
    out = Path(__file__).resolve().parent / "results" / f"{stem}-{report['date']}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


def main():
    args = study_args()
    report = {"date": datetime.date.today().isoformat(), "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        served = load(args.models, args.threads)
        others = detectors_at(served.detector, args.models, SIDES, args.threads, Path(tmp))
        report["row_ms"] = row_ms([(str(DETECTOR_INPUT), DETECTOR_INPUT, served.detector),
                                   *((str(side), side, model) for side, model in others.items())], args.repeats, True)
        run_study(args, report, (({"tiles": tiles, "windows": windows}, f"{tiles}/{windows}",
                                   SizedLooks(served.models, others, tiles, windows)) for tiles, windows in CANDIDATES),
                  "zoom-sizes")

if __name__ == "__main__":
    main()
