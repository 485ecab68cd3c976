"""Does each int8 model keep its validation numbers? Compares two `training.evaluate` outputs (float
files, int8 files) against issue 17's bounds and prints one row per gate.

    python -m training.quantize --models <float models> --out runs/int8
    python -m training.evaluate --models runs/int8/models --out runs/int8
    python benchmarks/int8_gates.py --float <float eval.json> --int8 runs/int8/eval.json

Writes benchmarks/results/int8-gates-<date>.json. The detector's rows need only catface to be
int8; landmark rows read the true-box crops (the landmarker alone); breed rows the product rule.
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

# (model, metric, where in eval.json, which way is better, largest allowed loss; None = reported,
# bounded elsewhere)
GATES = [
    ("catface", "Crawford recall @ IoU 0.5", ("detection", 0, "recall_iou50"), "higher", 0.005),
    ("catface", "false faces per dog photo", ("detection", 0, "false_faces_per_dog_photo"), "lower", 0.005),
    ("catface", "Crawford precision", ("detection", 0, "precision_iou50"), "higher", None),
    ("catface", "small-faces recall", ("detection", 0, "small_faces", "recall_iou50"), "higher", None),
    ("catface", "Oxford photos with a face", ("oxford_cat_photos", "with_a_face"), "higher", None),
    ("catlandmarks", "9-point NME, true box", ("landmarks", "true box", "nme_9pt_interocular"), "lower", 0.002),
    ("catlandmarks", "5-point error, true box", ("landmarks", "true box", "error_5pt_of_box"), "lower", None),
    ("catbreeds", "top-1, product rule", ("breeds", "product rule", "top1"), "higher", 0.005),
    ("catbreeds", "macro F1, product rule", ("breeds", "product rule", "macro_f1"), "higher", 0.005),
    ("catbreeds", "dog photos answered cat", ("catness", "dog_photos_answered_cat"), "lower", None),
]


def value(results: dict, path: tuple):
    for key in path:
        results = results[key]
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--float", dest="float_eval", type=Path, required=True)
    parser.add_argument("--int8", dest="int8_eval", type=Path, required=True)
    args = parser.parse_args()
    before, after = json.loads(args.float_eval.read_text()), json.loads(args.int8_eval.read_text())
    rows = []
    print(f"{'model':<14}{'metric':<28}{'float':>9}{'int8':>9}  gate")
    for model, metric, path, better, bound in GATES:
        f, q = value(before, path), value(after, path)
        loss = f - q if better == "higher" else q - f
        ok = None if bound is None else loss <= bound + 1e-9
        gate = "reported" if ok is None else f"{'pass' if ok else 'FAIL'} (within {bound})"
        print(f"{model:<14}{metric:<28}{f:>9.4f}{q:>9.4f}  {gate}")
        rows.append({"model": model, "metric": metric, "float": f, "int8": q, "bound": bound, "ok": ok})
    out = Path(__file__).resolve().parent / "results" / f"int8-gates-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "float": str(args.float_eval),
                               "int8": str(args.int8_eval), "gates": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
