"""`catface detect` over a folder of shared photos against the in-process ceiling of bench.py.

    python benchmarks/bench_cli.py [--photos 100] [--rounds 3] [--threads 2] [--jobs 2]

The folder holds `--photos` real photos (Crawford cats taken evenly across its folders, and dogs
in the proportion bench.py uses). Each round runs, one after the other on the same files:

- the ceiling, as bench.py measures it: service.imaging.decode + CatFace.detect in this process,
  one photo per call and in batches of 16, no JSON; the better of the two;
- `python -m service.cli detect FOLDER --out FILE` as a user runs it (a new process each time): its
  own photo rate (from the first line to the last, printed in its summary) and the wall time of the
  whole command, Python start-up and model loading included.

Rounds alternate so that a busy machine slows both alike; the best round of each is compared.
Prints the numbers and writes benchmarks/results/cli-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import REPO, machine, model_versions, real_photos  # noqa: E402
from service import imaging  # noqa: E402
from service.config import Settings  # noqa: E402
from service.pipeline import load  # noqa: E402

BATCHES = (1, 16)


def ceiling(folder: Path, catface, batch: int) -> float:
    """Photos per second of decode + detect over every file in the folder (read from disk)."""
    kw = Settings().decode_limits()  # the service's (and the command line's) own intake
    files = sorted(folder.iterdir())
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        photos = [imaging.decode(f.read_bytes(), **kw) for f in files[i:i + batch]]
        catface.detect([p.image for p in photos])
    return len(files) / (time.perf_counter() - start)


def cli(folder: Path, out: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "service.cli", "detect", str(folder), "--out", str(out), "--progress",
               "--threads", str(args.threads), "--jobs", str(args.jobs)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - start
    lines = out.read_text().splitlines()
    rate = re.search(r"photos in [\d.]+ s \(([\d.]+)/s\)", done.stderr)
    return {"exit": done.returncode, "lines": len(lines), "errors": sum('"error"' in line for line in lines),
            "rps": float(rate[1]) if rate else None, "wall_s": round(wall, 2),
            "wall_rps": round(len(lines) / wall, 2),
            "progress_shown": f"{len(lines)}/{len(lines)} photos" in done.stderr,
            "stderr_tail": done.stderr.strip().splitlines()[-1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads per model (both sides)")
    parser.add_argument("--jobs", type=int, default=2, help="the CLI's decoding threads")
    args = parser.parse_args()

    dogs = args.photos // 4  # bench.py's 48 cats : 16 dogs
    photos = real_photos(cats=args.photos - dogs, dogs=dogs)
    imaging.configure(Settings().max_pixels)
    catface = load(REPO / "models", args.threads)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i, (name, data) in enumerate(photos):
            (folder / f"{i:03d}-{Path(name).name}").write_bytes(data)
        ceiling(folder, catface, 1)  # warm the file cache and the models
        for r in range(args.rounds):
            row = {f"ceiling_batch_{b}_rps": round(ceiling(folder, catface, b), 2) for b in BATCHES}
            row["cli"] = cli(folder, Path(tmp) / "faces.jsonl", args)
            rounds.append(row)
            print(f"round {r + 1}: ceiling {max(row[f'ceiling_batch_{b}_rps'] for b in BATCHES):.1f}/s "
                  f"(batch 1: {row['ceiling_batch_1_rps']}, batch 16: {row['ceiling_batch_16_rps']}); "
                  f"catface detect {row['cli']['rps']}/s, {row['cli']['wall_s']} s for the whole command "
                  f"({row['cli']['lines']} lines, exit {row['cli']['exit']})", file=sys.stderr)

    best_ceiling = max(row[f"ceiling_batch_{b}_rps"] for row in rounds for b in BATCHES)
    best_cli = max(row["cli"]["rps"] or 0 for row in rounds)
    best_wall = min(row["cli"]["wall_s"] for row in rounds)
    summary = {"photos": len(photos), "ceiling_rps": best_ceiling, "cli_rps": best_cli,
               "cli_over_ceiling": round(best_cli / best_ceiling, 3), "cli_best_wall_s": best_wall,
               "cli_wall_rps": round(len(photos) / best_wall, 2),
               "every_run_wrote_one_line_per_photo": all(row["cli"]["lines"] == len(photos) for row in rounds),
               "progress_shown": all(row["cli"]["progress_shown"] for row in rounds)}
    result = {"date": datetime.date.today().isoformat(), "machine": machine(), "models": model_versions(),
              "settings": vars(args), "summary": summary, "rounds": rounds}
    out = REPO / "benchmarks" / "results" / f"cli-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{len(photos)} shared photos, {args.threads} onnxruntime threads, {args.jobs} CLI jobs "
          f"(best of {args.rounds} alternating rounds):")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
