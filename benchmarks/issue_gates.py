"""Where issues 12 (detector v2) and 13 (breeds v2) stand: each "done when" line that a number
decides, read from a `training.evaluate` output, the manifest and the newest cost benchmarks,
with its bound and pass / FAIL. Comparisons are strict on the stored numbers (1.7507% is not
<= 1.75%), so a line never passes by rounding.

    python benchmarks/issue_gates.py [--models models] [--eval <eval.json>]

--eval defaults to the models folder's eval.json (a candidate exported into a copy of models/
and evaluated there is read the same way). Cost lines read the newest
benchmarks/results/models-*.json (bench_models.py --baseline) and breeds-cost-*.json
(bench_breeds.py): they describe the shipped files on the machine that ran them, not a candidate.
Writes benchmarks/results/issue-gates-<date>.json; exits 1 when a line fails.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from training.model_card import RESULTS, newest_file  # noqa: E402 (the card reads the same results files)

DETECT = "catface + closer look + cat check (what /detect answers)"  # evaluate's row for what /detect answers


def detect_row(ev: dict) -> dict:
    return next(row for row in ev["detection"] if row["detector"] == DETECT)


def newest(pattern: str) -> tuple[str, dict] | tuple[None, None]:
    file = newest_file(pattern)
    return (file.name, json.loads(file.read_text())) if file else (None, None)


def coreml_bytes(manifest: dict, name: str) -> int:
    return next(m["bytes"] for m in manifest["models"] if m["name"] == name and m["format"] == "coreml")


# (issue, line as the issue says it, how to read it from (eval, manifest, cost files), "min" or "max", bound)
GATES = [
    (12, "Oxford validation cat photos with a face", lambda e, m, c: e["oxford_cat_photos"]["with_a_face"],
     "min", 0.98),
    (12, "photos without a face in any one breed", lambda e, m, c: max(
        b["no_face"] for b in e["oxford_cat_photos"]["per_breed"].values()), "max", 1),
    (12, "small-faces mosaics recall@0.5", lambda e, m, c: detect_row(e)["small_faces"]["recall_iou50"], "min", 0.95),
    (12, "kittens photo: kittens not found (any size)", lambda e, m, c: max(
        k["kittens"] - k["found"] for k in e["kittens"][DETECT].values()), "max", 0),
    (12, "Crawford recall@0.5", lambda e, m, c: detect_row(e)["recall_iou50"], "min", 0.99),
    (12, "Crawford precision@0.5", lambda e, m, c: detect_row(e)["precision_iou50"], "min", 0.97),
    (12, "false faces per dog photo", lambda e, m, c: detect_row(e)["false_faces_per_dog_photo"], "max", 0.01),
    (12, "photos with two boxes on one face", lambda e, m, c: detect_row(e)["photos_with_two_boxes_on_one_face"],
     "max", 0),
    (12, "9-point NME (true box)", lambda e, m, c: e["landmarks"]["true box"]["nme_9pt_interocular"], "max", 0.07),
    (12, "5-point error of the box (true box)", lambda e, m, c: e["landmarks"]["true box"]["error_5pt_of_box"],
     "max", 0.0175),
    (12, "detector + landmarks per photo vs catface 1.0.0", lambda e, m, c: c["models"]["against_baseline"]["ratio"],
     "max", 1.5),
    (13, "top-1, all validation cat photos", lambda e, m, c: e["breeds"]["product rule"]["top1"], "min", 0.94),
    (13, "macro F1", lambda e, m, c: e["breeds"]["product rule"]["macro_f1"], "min", 0.94),
    (13, "lowest breed recall", lambda e, m, c: min(e["breeds"]["product rule"]["recall_per_breed"].values()),
     "min", 0.85),
    (13, "cat photos answered cat", lambda e, m, c: e["catness"]["cat_photos_answered_cat"], "min", 0.99),
    (13, "dog photos answered cat", lambda e, m, c: e["catness"]["dog_photos_answered_cat"], "max", 0.02),
    (13, "/breeds model time per photo vs catbreeds 1.x", lambda e, m, c: c["breeds"]["ratio"], "max", 2.0),
    (13, "catbreeds.mlmodel MB", lambda e, m, c: coreml_bytes(m, "catbreeds") / 1e6, "max", 12.0),
]


def check(ev: dict, manifest: dict, cost: dict) -> list[dict]:
    rows = []
    for issue, line, read, way, bound in GATES:
        try:
            value = read(ev, manifest, cost)
        except (KeyError, TypeError, StopIteration):
            value = None  # not measured (e.g. no cost file yet): a line nobody measured does not pass
        ok = value is not None and (value >= bound if way == "min" else value <= bound)
        rows.append({"issue": issue, "line": line, "value": value, "bound": f"{'>=' if way == 'min' else '<='} {bound}",
                     "ok": ok})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--eval", dest="eval_path", type=Path, default=None)
    args = parser.parse_args()
    eval_path = args.eval_path or args.models / "eval.json"
    ev = json.loads(eval_path.read_text())
    manifest = json.loads((args.models / "manifest.json").read_text())
    models_file, models_cost = newest("models-*.json")
    breeds_file, breeds_cost = newest("breeds-cost-*.json")
    rows = check(ev, manifest, {"models": models_cost, "breeds": breeds_cost})
    print(f"{eval_path} (cost: {models_file}, {breeds_file})")
    for row in rows:
        value = "not measured" if row["value"] is None else f"{row['value']:.5g}"
        verdict = "pass" if row["ok"] else "FAIL"
        print(f"issue {row['issue']}  {row['line']:<52}{value:>14}  {row['bound']:<9} {verdict}")
    for issue in sorted({r["issue"] for r in rows}):
        failed = [r["line"] for r in rows if r["issue"] == issue and not r["ok"]]
        print(f"issue {issue}: " + (f"{len(failed)} failing: " + "; ".join(failed) if failed else "every line passes"))
    date = datetime.date.today().isoformat()
    out = RESULTS / f"issue-gates-{date}.json"
    out.write_text(json.dumps({"date": date, "eval": str(eval_path), "cost_files": [models_file, breeds_file],
                               "lines": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
