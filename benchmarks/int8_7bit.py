"""The detector's files in int8 with 7-bit weights (issue 12's cost). Measured, not shipped.

The served int8 catface has 8-bit weights, which on x86 CPUs without VNNI need onnxruntime's
exact u8 x u8 kernels (runtime.EXACT_INT8): about 8 ms a 256-px row here, no faster than its float
file. With 7-bit weights (onnxruntime's reduce_range) the fast u8 x s8 kernel cannot saturate
(255 x 64 x 2 < 32767), so its sums are exact on every CPU: about 4.5 ms a row; and the 640-px
small-face look, float32 (40 ms), runs in about 21 ms as int8. The candidates, each made here from
the served float files with training.quantize's calibration photos and rows, in a copy of models/:

- "7-bit both": both detector files 7-bit int8;
- "7-bit 640": the small-face look 7-bit int8, the 256-px file as served;
- "7-bit 256": the 256-px file 7-bit int8, the small-face look as served (float32).

Per candidate, beside the served folder: /detect's lines on select_zoom's TRAINING photos
(zoom_cost.measure) and, with --baseline, issue 12's cost line (bench_models.against_baseline).

    python benchmarks/int8_7bit.py --baseline runs/models-v1/models

(The 640 file measured was made from the square catface.640.onnx of that morning: sha256 2275d76c3a8d...
for catface.640.int8.onnx. Since the look keeps the photo's ratio its float file is an any-size graph,
so the same command now makes another file; the 256-px one is the same, 34ce82839bca....)
"""
from __future__ import annotations

import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.zoom_sizes import WITHIN_ONE_PHOTO, row_ms, run_study, study_args  # noqa: E402
from service.pipeline import load, model_row  # noqa: E402
from training.export import file_facts  # noqa: E402
from training.quantize import calibration_rows, detector_photos, quantize  # noqa: E402

CANDIDATES = {"7-bit both": (True, True), "7-bit 640": (False, True), "7-bit 256": (True, False)}


def small_look_rows(catface, data_dir: Path, count: int = 96) -> list:
    """The detector's calibration photos (training.quantize.detector_photos) at the small-face look's side."""
    return [model_row(Image.open(p).convert("RGB"), catface.small_look.input_size)
            for p in detector_photos(data_dir, count)]


def seven_bit_files(models: Path, data_dir: Path, out: Path) -> dict[str, dict]:
    """catface.int8.onnx and catface.640.int8.onnx with 7-bit weights in `out`, and their file facts."""
    served = load(models)
    entry = served.detector.entry
    made = {}
    for name, source, rows in [("whole", models / entry["float_reference"]["file"],
                                calibration_rows(served, data_dir, 96, ["catface"])["catface"]),
                               ("look", models / entry["postprocess"]["zoom"]["small_look"]["file"],
                                small_look_rows(served, data_dir))]:
        target = out / f"{source.stem}.int8.onnx"
        quantize(source, target, rows, backbone_only=True, reduce_range=True)
        made[name] = {**file_facts(target), "float_reference": file_facts(source)}
    return made


def candidate_folder(models: Path, made: dict[str, dict], files: Path, whole: bool, look: bool, out: Path) -> Path:
    """A copy of `models` with the 7-bit files in place of the served ones where asked."""
    shutil.copytree(models, out)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(m for m in manifest["models"] if m["name"] == "catface" and m["format"] == "onnx")
    for wanted, name, target in [(whole, "whole", entry), (look, "look", entry["postprocess"]["zoom"]["small_look"])]:
        if wanted:
            shutil.copy(files / made[name]["file"], out)
            target.update({k: made[name][k] for k in ("file", "sha256", "bytes")}, weights="int8",
                          float_reference=made[name]["float_reference"])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def main():
    args = study_args()
    report = {"date": datetime.date.today().isoformat(), "threads": args.threads,
              "rule_set_beforehand": WITHIN_ONE_PHOTO}
    with tempfile.TemporaryDirectory() as tmp:
        made = seven_bit_files(args.models, args.data, Path(tmp))
        report["files"] = made
        folders = {"served": args.models, **{name: candidate_folder(args.models, made, Path(tmp), whole, look,
                                                                    Path(tmp) / name.replace(" ", "-"))
                                             for name, (whole, look) in CANDIDATES.items()}}
        run_folders(args, report, folders, "int8-7bit")


def run_folders(args, report: dict, folders: dict[str, Path], stem: str) -> None:
    """Each models folder a candidate: its detector files' time per row, then zoom_sizes.run_study."""
    catfaces = {name: load(folder, args.threads) for name, folder in folders.items()}
    report["row_ms"] = row_ms([(f"{name} {model.input_size[0]}", model.input_size[0], model)
                               for name, catface in catfaces.items() for model in catface.detectors],
                              args.repeats, False)
    run_study(args, report, (({"files": name}, name, catface) for name, catface in catfaces.items()), stem)

if __name__ == "__main__":
    main()
