"""Issue 17's three ratios, each from rows measured minutes apart at most: rounds of the service
at concurrency 16 (bench.py's "batching on"), the in-process ceiling and the Haar cascade, the
ratios taken within each round and their medians reported. bench.py measures every row once, the
service first and the ceiling and Haar later, so a machine whose speed drifts during its run skews
its ratios; here the drift falls on both sides of each ratio.

    python benchmarks/bench_ratios.py [--rounds 3] [--seconds 10]

Writes benchmarks/results/ratios-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench import MODES, haar_row, in_process_rows, service_rows, summary  # noqa: E402
from benchmarks.harness import REPO, machine, model_versions, real_photos  # noqa: E402

CONCURRENCY = 16
RATIOS = ("service_over_haar /detect c=16", "service_over_ceiling /detect c=16", "service_over_ceiling /breeds c=16",
          "in_process_detect_over_haar", "detector_landmarks_over_haar")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10, help="longest measure per row")
    parser.add_argument("--requests", type=int, default=300, help="most requests per row")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.levels = [CONCURRENCY]
    photos = real_photos()
    rounds = []
    for n in range(args.rounds):
        service, _ = service_rows(photos, args, {"on": MODES["on"]})
        ceiling, _ = in_process_rows(photos, args)
        haar, _ = haar_row(photos, args)
        ratios = {k: v for k, v in summary(service + ceiling + [haar], args.levels).items() if k in RATIOS}
        rounds.append({"rows": {f"{r['setup']} {r['endpoint']} {r['batching']}": r["rps"]
                                for r in service + ceiling + [haar]}, "ratios": ratios})
        print(f"round {n}: {json.dumps(ratios)}", flush=True)
    medians = {k: statistics.median(r["ratios"][k] for r in rounds) for k in RATIOS}
    print(json.dumps(medians, indent=1))
    today = datetime.date.today().isoformat()
    out = REPO / "benchmarks" / "results" / f"ratios-{today}.json"
    out.write_text(json.dumps({"date": today, "machine": machine(), "models": model_versions(),
                               "concurrency": CONCURRENCY, "seconds_per_row": args.seconds, "rounds": rounds,
                               "medians": medians}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
