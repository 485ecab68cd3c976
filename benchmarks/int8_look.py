"""The small-face look (the whole photo at 640 px on its longer side, float32 today) in int8 with
8-bit weights, as the 256-px file ships (issue 12's cost; a photo with a small face pays ~37 ms for
that look). With VNNI onnxruntime's default int8 kernels are exact and ~40% faster than float here
(benchmarks/results/int8-cpu-cost-2026-12-04.json); without VNNI the runtime's exact kernels cost
about what float does, so nothing is lost there. The 7-bit files lost faces (int8_7bit.py); 8-bit
weights are what the 256-px file keeps its validation numbers with.

The candidate: the served any-size float look quantized as training.quantize does (backbone
blocks only, per-channel, static QDQ), calibrated on training.quantize's detector photos fed as the
server feeds the look (training.quantize.small_look_rows: the photo's ratio kept). Beside the served folder:
/detect's lines on select_zoom's TRAINING photos (zoom_cost.measure) and, with --baseline, issue
12's cost line (bench_models.against_baseline), in one run.

    python benchmarks/int8_look.py --baseline runs/models-v1/models
"""
from __future__ import annotations

import datetime
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.int8_7bit import candidate_folder, run_folders  # noqa: E402
from benchmarks.zoom_sizes import VALIDATION_DETECT_LINES, WITHIN_ONE_PHOTO, study_args  # noqa: E402
from service.pipeline import load  # noqa: E402
from training.export import file_facts  # noqa: E402
from training.quantize import quantize, small_look_rows  # noqa: E402


def look_int8(models: Path, data_dir: Path, out: Path, count: int = 96) -> dict:
    """The small-face look's float file quantized to 8-bit int8 in `out`, and its file facts."""
    served = load(models)
    source = models / served.detector.entry["postprocess"]["zoom"]["small_look"]["file"]
    rows = small_look_rows(served, data_dir, count)
    target = out / f"{source.stem}.int8.onnx"
    quantize(source, target, rows, backbone_only=True)
    return {**file_facts(target), "float_reference": file_facts(source)}


def main():
    args = study_args()
    report = {"date": datetime.date.today().isoformat(), "threads": args.threads,
              "rule_set_beforehand": WITHIN_ONE_PHOTO + " Then one validation run (training.evaluate on the "
              "candidate folder): it ships only if no /detect line there is worse than the served one's "
              + VALIDATION_DETECT_LINES + ", every issue gate that passes still passes, and the tests pass."}
    with tempfile.TemporaryDirectory() as tmp:
        made = {"look": look_int8(args.models, args.data, Path(tmp))}
        report["files"] = made
        folders = {"served": args.models,
                   "int8 640": candidate_folder(args.models, made, Path(tmp), False, True, Path(tmp) / "int8-640")}
        run_folders(args, report, folders, "int8-look")


if __name__ == "__main__":
    main()
