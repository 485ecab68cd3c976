"""Two versions of the service against each other: photos/s of the server run from another source
tree (e.g. `git worktree add ../old <rev>`) and from this one, in alternating rounds of one run
(old, new, new, old, ...), so a machine that drifts during the run weighs on both alike.

    python benchmarks/bench_trees.py ../old [--rounds 2] [--seconds 12] [--batch 16]

Each round measures /detect at concurrency 16 and /breeds at concurrency 1 on bench.py's photos.
Writes benchmarks/results/trees-<date>.json with both trees' commits.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import harness  # noqa: E402
from benchmarks.bench import COMMON_ENV, jobs_for  # noqa: E402
from benchmarks.harness import Server, closed_loop, machine, real_photos  # noqa: E402

CASES = [("/detect", 16), ("/breeds", 1)]


def commit(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path, help="the other source tree (models and service of that version)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--batch", default="16", help="CATFACE_MAX_BATCH_SIZE, as bench.py's 'batching on'")
    args = parser.parse_args()
    trees = {"old": args.old.resolve(), "new": harness.REPO}
    photos = real_photos()
    runs: dict[str, dict[str, list[float]]] = {}
    for rnd in range(args.rounds):
        for name in (("old", "new") if rnd % 2 == 0 else ("new", "old")):
            harness.REPO = trees[name]  # Server runs `python -m service` from this tree
            with Server({**COMMON_ENV, "CATFACE_MAX_BATCH_SIZE": args.batch}) as server:
                for path, concurrency in CASES:
                    results, wall = asyncio.run(closed_loop(server.port, jobs_for(photos, path), concurrency,
                                                            100_000, args.seconds))
                    rps = sum(r.status == 200 for r in results) / wall
                    runs.setdefault(name, {}).setdefault(f"{path} c={concurrency}", []).append(round(rps, 2))
                    print(f"round {rnd} {name} {path} c={concurrency}: {rps:.1f} photos/s", flush=True)
    medians = {t: {case: statistics.median(v) for case, v in cases.items()} for t, cases in runs.items()}
    print(json.dumps(medians))
    today = datetime.date.today().isoformat()
    out = Path(__file__).resolve().parent / "results" / f"trees-{today}.json"
    out.write_text(json.dumps({"date": today, "machine": machine(), "max_batch_size": args.batch,
                               "commits": {name: commit(tree) for name, tree in trees.items()},
                               "photos_per_s": runs, "medians": medians}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
