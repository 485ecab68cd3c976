"""onnxruntime threads per model for the server: /breeds and /detect photos/s at concurrency 16 with
CATFACE_THREADS=1 and =2, in alternating rounds of one run (the shipped batch size, 4).

    python benchmarks/bench_threads.py [--rounds 2] [--seconds 12]

Writes benchmarks/results/threads-<date>.json. The profile behind the README's note on /breeds was
taken with py-spy on a server under the same load:
    py-spy record -p <server pid> -d 20 -r 200 -f raw --threads --nonblocking -o breeds.raw
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench import COMMON_ENV, jobs_for  # noqa: E402
from benchmarks.harness import Server, closed_loop, machine, real_photos  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    photos = real_photos()
    runs: dict[str, dict[str, list[float]]] = {}
    for rnd in range(args.rounds):
        for threads in ("1", "2"):
            with Server({**COMMON_ENV, "CATFACE_MAX_BATCH_SIZE": "4", "CATFACE_THREADS": threads}) as server:
                for path in ("/breeds", "/detect"):
                    results, wall = asyncio.run(closed_loop(server.port, jobs_for(photos, path), args.concurrency,
                                                            100_000, args.seconds))
                    rps = sum(r.status == 200 for r in results) / wall
                    runs.setdefault(threads, {}).setdefault(path, []).append(round(rps, 2))
                    print(f"round {rnd} threads {threads} {path}: {rps:.1f} photos/s", flush=True)
    medians = {t: {p: statistics.median(v) for p, v in paths.items()} for t, paths in runs.items()}
    print(json.dumps(medians))
    out = Path(__file__).resolve().parent / "results" / f"threads-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "machine": machine(),
                               "concurrency": args.concurrency, "photos_per_s": runs, "medians": medians},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
