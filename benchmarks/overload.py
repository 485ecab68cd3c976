"""Overload: 4x the saturating load on POST /detect, then back to half of it.

The service runs with its shipped admission settings (CATFACE_MAX_INFLIGHT, CATFACE_QUEUE_SIZE,
CATFACE_REQUEST_TIMEOUT_S). In one run:

1. capacity: a closed loop at concurrency 16 measures the saturating rate (photos/s);
2. baseline: half that rate, open loop (latency and RSS at ease);
3. overload: `factor` x the capacity, open loop, for `--seconds`;
4. recovery: back to half the capacity, at once;
5. idle: no load, then the server's RSS again.

Passes when: refusals are 503 + Retry-After and fast (p99 under REFUSAL_P99_S); accepted
requests' p99 stays within the request deadline; from RECOVERY_S after the drop on, every answer
is a 200 and no two in a row are slow (`not_recovered`); RSS after the idle is within
MEMORY_SLACK of the baseline; no other status, no dropped connection.

    python benchmarks/overload.py [--seconds 60] [--factor 4] [--threads 2]

Writes benchmarks/results/overload-<date>.json. tests/test_load.py runs a short version in CI.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import (  # noqa: E402
    REPO,
    RssSampler,
    Server,
    closed_loop,
    latency_ms,
    machine,
    metric,
    model_versions,
    multipart,
    open_loop,
    real_photos,
    request_bytes,
)
from service.config import Settings  # noqa: E402

REFUSAL_P99_S = 0.5    # a refusal must be cheap for the client too: well under one answer's latency
RECOVERY_S = 3.0       # time after the load drops until answers are 200s at baseline speed again
MEMORY_SLACK = 0.10    # RSS after the idle vs the baseline (allocator pools may keep a little)


def slug(result) -> str:
    try:
        return json.loads(result.body)["type"].rsplit(":", 1)[-1]
    except (ValueError, KeyError, TypeError):
        return "?"


def not_recovered(recovery: list, slow: float) -> list:
    """The recovery requests that show the service not yet back: every non-200, and each slow
    answer (over `slow` s) next to another slow one in send order. A lone slow answer among fast
    ones is jitter (a pause of the load generator sharing the CPU), not a backlog still draining."""
    rec = sorted(recovery, key=lambda r: r.started)
    is_slow = [r.seconds > slow for r in rec]
    return [r for i, r in enumerate(rec) if r.status != 200 or is_slow[i] and (
        (i > 0 and is_slow[i - 1]) or (i + 1 < len(rec) and is_slow[i + 1]))]


def rss_mb(samples, start: float, end: float) -> float | None:
    values = [b for t, b in samples if start <= t <= end]
    return round(statistics.median(values) / 2**20, 1) if values else None


def run(seconds: float = 60, factor: float = 4, threads: int = 2, probe_seconds: float = 8,
        baseline_seconds: float = 8, recovery_seconds: float = 15, idle_seconds: float = 5,
        cats: int = 32, dogs: int = 8, env: dict[str, str] | None = None, log_path: Path | None = None) -> dict:
    photos = real_photos(cats=cats, dogs=dogs)
    jobs = [(name, request_bytes("POST", "/detect", *multipart(data))) for name, data in photos]
    server_env = {"CATFACE_THREADS": str(threads), "CATFACE_LOG_LEVEL": "warning", **(env or {})}
    settings = Settings.from_env(server_env)
    with Server(server_env, log_path=log_path) as server:
        sampler = RssSampler(server.pid, 0.25)
        probe, wall = asyncio.run(closed_loop(server.port, jobs, 16, 100_000, probe_seconds))
        capacity = sum(r.status == 200 for r in probe) / wall
        if capacity <= 0:
            raise RuntimeError("the capacity probe got no 200 answers")
        phases = [("baseline", capacity / 2, baseline_seconds), ("overload", capacity * factor, seconds),
                  ("recovery", capacity / 2, recovery_seconds)]
        t_load = time.monotonic()
        before = server.metrics()
        results = asyncio.run(open_loop(server.port, jobs, phases, timeout=settings.request_timeout_s + 30))
        time.sleep(idle_seconds)
        after = server.metrics()
        peak = server.peak_rss()
        samples = sampler.stop()
        code = server.stop()

    base = [r for r in results if r.tag == "baseline"]
    over = [r for r in results if r.tag == "overload"]
    rec = [r for r in results if r.tag == "recovery"]
    accepted = [r for r in over if r.status == 200]
    refused = [r for r in over if r.status == 503]
    statuses = sorted({r.status for r in results}, key=str)
    offset = t_load - sampler.t0  # sampler clock -> load clock
    baseline_end = offset + baseline_seconds
    base_ok = [r for r in base if r.status == 200]
    slow = max(3 * (latency_ms(base_ok)["p99"] or 0) / 1000, 0.25)
    recovery_start = baseline_seconds + seconds
    bad_after_drop = not_recovered(rec, slow)
    recovery_s = max((r.started - recovery_start for r in bad_after_drop), default=0.0)
    rss_base = rss_mb(samples, baseline_end - baseline_seconds / 2, baseline_end)
    end = samples[-1][0] if samples else 0
    rss_after = rss_mb(samples, end - min(2.0, idle_seconds / 2), end)
    rss_overload = max((b for t, b in samples if baseline_end <= t <= baseline_end + seconds), default=0) / 2**20
    refusal_p99 = latency_ms(refused)["p99"]
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "models": model_versions(),
        "settings": {"threads": threads, "factor": factor, "seconds": seconds, "max_inflight": settings.max_inflight,
                     "queue_size": settings.queue_size, "max_batch_size": settings.max_batch_size,
                     "request_timeout_s": settings.request_timeout_s, "retry_after_s": settings.retry_after_s},
        "capacity_rps": round(capacity, 2),
        "offered_rps": {name: round(rate, 2) for name, rate, _ in phases},
        "baseline": {"requests": len(base), "ok": len(base_ok), **latency_ms(base_ok)},
        "overload": {
            "requests": len(over), "accepted": len(accepted), "refused": len(refused),
            "accepted_rps": round(len(accepted) / seconds, 2),
            "accepted_latency_ms": latency_ms(accepted), "refused_latency_ms": refusal_p99 and latency_ms(refused),
            "refusals_by_type": {k: sum(slug(r) == k for r in refused) for k in sorted({slug(r) for r in refused})},
            "refused_latency_ms_by_type": {k: latency_ms([r for r in refused if slug(r) == k])
                                           for k in sorted({slug(r) for r in refused})},
            "refusals_without_retry_after": sum("retry-after" not in r.headers for r in refused),
            "other": {str(s): sum(r.status == s for r in over) for s in statuses if s not in (200, 503)},
        },
        "recovery": {"requests": len(rec), "ok": sum(r.status == 200 for r in rec), **latency_ms(rec),
                     "slow_threshold_ms": round(slow * 1000, 1), "recovered_after_s": round(recovery_s, 2)},
        "rss_mb": {"baseline": rss_base, "overload_max": round(rss_overload, 1), "after_idle": rss_after,
                   "peak": round(peak / 2**20, 1),
                   "series": [(round(t - offset, 2), round(b / 2**20, 1)) for t, b in samples[::4]]},
        "server_counters": {k: metric(after, "catface_rejections_total", reason=k) -
                            metric(before, "catface_rejections_total", reason=k)
                            for k in ("overloaded", "queue-full", "deadline-exceeded")},
        "exit_code": code,
    }
    report["checks"] = {
        "only 200 or 503, every request answered": set(statuses) <= {200, 503},
        "refusals carry Retry-After": report["overload"]["refusals_without_retry_after"] == 0 and len(refused) > 0,
        f"refusals fast (p99 < {REFUSAL_P99_S} s)": refusal_p99 is not None and refusal_p99 / 1000 < REFUSAL_P99_S,
        "accepted p99 within the deadline": (latency_ms(accepted)["p99"] or 0) / 1000 <= settings.request_timeout_s,
        "served at least the capacity x 0.8 while overloaded": len(accepted) / seconds >= 0.8 * capacity,
        f"recovered within {RECOVERY_S} s": recovery_s <= RECOVERY_S,
        f"RSS back within {MEMORY_SLACK:.0%} of baseline": rss_base is not None and rss_after is not None
        and rss_after <= rss_base * (1 + MEMORY_SLACK),
        "clean exit on SIGTERM": code == 0,
    }
    report["passed"] = all(report["checks"].values())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--factor", type=float, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    report = run(args.seconds, args.factor, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"overload-{report['date'][:10]}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    shown = {k: v for k, v in report.items() if k not in ("machine", "rss_mb")}
    print(json.dumps(shown, indent=1))
    print("rss_mb:", {k: v for k, v in report["rss_mb"].items() if k != "series"})
    print(f"wrote {path}; {'PASSED' if report['passed'] else 'FAILED'}")
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
