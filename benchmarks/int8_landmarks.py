"""catlandmarks in int8 (issue 12's cost: the three landmark looks per face, float today, are about a
third of a cat photo's detector + landmarks time; the detector's files are int8 already).

The candidate: the served float file quantized as training.quantize does (backbone blocks only,
per-channel, static QDQ), calibrated on the landmark rows of training.quantize's detector photos as
the server cuts them (every look of the first face found). Beside the served folder, in one run:
the landmark errors on training.select_landmarks' faces (Crawford photos no run trained on and
validation does not hold; from the true box and the served detector's box, as landmarks_scales
measures them), each file's time per row, and, with --baseline, issue 12's cost line.

    python benchmarks/int8_landmarks.py --data ../shared/data --baseline runs/models-v1/models

The first candidate (MinMax calibration, every block int8) cut the cost line from 1.45x to 1.23x but
lost 4x the 5-point margin (int8-landmarks-2026-12-04.json). The second try (SECOND_RULE), written
after it: percentile calibration, and the stride-16 blocks kept float.

    python benchmarks/int8_landmarks.py --data ../shared/data --baseline runs/models-v1/models --second
"""
from __future__ import annotations

import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationMethod

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_models import against_baseline, bench_photos, median_ms  # noqa: E402
from benchmarks.landmarks_scales import measure  # noqa: E402
from benchmarks.zoom_sizes import study_args, write_study  # noqa: E402
from service.pipeline import load  # noqa: E402
from training.quantize import quantize_into  # noqa: E402
from training.select_landmarks import held_out_faces  # noqa: E402

# How much worse than the served float file a number may get on the selection faces (issue 17's int8
# bound for landmark NME was 0.002; half of it here, and issue 12's 5-point line has 0.0005 to spare).
MARGINS = {"error_5pt_of_box": 0.0002, "nme_9pt_interocular": 0.001}
COST_GAIN = 0.05  # issue 12's ratio must drop at least this much, in the same run

RULE = (
    "Set before the run (2026-12-04 23:24). Selection (select_landmarks' 87 faces, the served looks, boxes from the "
    "served detector): the int8 file goes on only if none of its four numbers (true-box and detected-box 5-point "
    "error and 9-point NME) is worse than the served float file's by more than 0.0002 (5-point) or 0.001 (NME), AND "
    "issue 12's cost line (bench_models.against_baseline against catface 1.0.0, the same run) is lower than the "
    "float file's by at least 0.05x. Then one validation run (training.evaluate with the int8 file served): it ships "
    "as catlandmarks 1.2.0 only if issue 12's landmark lines still pass (true-box 9-point NME <= 0.07, 5-point "
    "<= 0.0175), the detected-box numbers are within the same margins of 1.1.0's (5-point 0.018656, NME 0.072662), "
    "every /detect and breeds line is unchanged, and the tests pass.")


# The second try (written 2026-12-04 23:27, after the first candidate failed its margins by 4x, before any
# run of these): two ways to keep more precision, each a common remedy for int8 regression error.
SECOND = {"int8 percentile": {"calibrate_method": CalibrationMethod.Percentile},  # activations' ranges, 99.999%
          "int8, blocks 8-10 float": {"float_blocks": (8, 9, 10)}}  # the stride-16 blocks the head reads last
SECOND_RULE = (
    "Set before the run (2026-12-04 23:27), a second try disclosed as such: written after the first candidate "
    "(MinMax calibration, every backbone block int8) failed its error margins (5-point +0.0008). Candidates: the "
    "same with percentile calibration (onnxruntime's CalibrationMethod.Percentile), and MinMax with blocks 8-10 "
    "(stride 16) kept float. Each goes on only under the first rule's selection step (the same margins against "
    "the served float file, and a cost drop of at least 0.05x in the same run); of those that pass, the one with "
    "the lower detected-box 5-point error gets the first rule's one validation run and ship conditions. No third "
    "candidate will be looked at on these faces.")


def row_ms(catface, repeats: int) -> dict:
    """The landmarker's time per row: one face's looks as one call, and eight faces' looks."""
    h, w = catface.landmarker.input_size
    looks = len(catface.landmark_looks)
    rows = np.random.default_rng(0).uniform(0, 255, (8 * looks, 3, h, w)).astype(np.float32)
    return {"one_face_ms": round(median_ms(lambda: catface.landmarker.run(rows[:looks]), repeats), 2),
            "eight_faces_ms_per_face": round(median_ms(lambda: catface.landmarker.run(rows), repeats) / 8, 2)}


def main():
    args = study_args()
    candidates = SECOND if args.second else {"int8": {}}
    report = {"date": datetime.date.today().isoformat(), "threads": args.threads,
              "rule_set_beforehand": SECOND_RULE if args.second else RULE}
    with tempfile.TemporaryDirectory() as tmp:
        catfaces = {"served": load(args.models, args.threads)}
        report["int8_files"] = {}
        for i, (name, options) in enumerate(candidates.items()):
            folder = Path(tmp) / str(i)
            shutil.copytree(args.models, folder)
            quantize_into(folder, ["catlandmarks"], args.data, **options)
            catfaces[name] = load(folder, args.threads)
            entry = catfaces[name].landmarker.entry
            report["int8_files"][name] = {k: entry[k] for k in ("file", "bytes", "sha256")}
        faces = held_out_faces(args.data / "crawford")
        looks = catfaces["served"].landmark_looks
        table = measure(catfaces, faces, {name: (name, looks) for name in catfaces})
        report["selection"] = {"faces": len(faces), **table}
        print(json.dumps(table, indent=1), flush=True)
        report["row_ms"] = {name: row_ms(c, args.repeats) for name, c in catfaces.items()}
        print(json.dumps(report["row_ms"]), flush=True)
        if args.baseline:
            baseline, photos = load(args.baseline, args.threads), bench_photos(args.data)
            report["cost"] = {name: against_baseline(c, baseline, photos, args.repeats) for name, c in catfaces.items()}
    report["candidates"] = {name: verdict(report, table, name) for name in candidates}
    passed = [n for n, v in report["candidates"].items() if v["goes_on"]]
    report["goes_on_to_validation"] = min(passed, key=lambda n: table[n]["detected box"]["error_5pt_of_box"],
                                          default=None)
    out = write_study("int8-landmarks-second" if args.second else "int8-landmarks", report)
    print(f"{report['candidates']}; goes on to validation: {report['goes_on_to_validation']}; wrote {out}")


def verdict(report: dict, table: dict, name: str) -> dict:
    """A candidate against the served float file: its four numbers' differences and the rule's checks."""
    worse = {f"{kind} {k}": round(table[name][kind][k] - table["served"][kind][k], 6)
             for kind in table["served"] for k in MARGINS}
    checks = {"errors within the margins": all(d <= MARGINS[key.rsplit(" ", 1)[1]] for key, d in worse.items())}
    if "cost" in report:
        checks["cost gain"] = report["cost"]["served"]["ratio"] - report["cost"][name]["ratio"] >= COST_GAIN
    return {"minus_float": worse, "checks": checks, "goes_on": all(checks.values()) and "cost" in report}


if __name__ == "__main__":
    main()
