"""Short, CI-sized runs of benchmarks/overload.py and benchmarks/soak.py against a real server on
loopback, with the same pass rules as the long runs (whose results are kept in
benchmarks/results/). One onnxruntime thread per model: the CI machine is small and shared."""
from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from benchmarks import harness, overload, soak


def _failed(report: dict) -> str:
    shown = {k: v for k, v in report.items() if k not in ("machine", "models", "rss_mb")}
    shown["rss_mb"] = {k: v for k, v in report["rss_mb"].items() if k != "series"}
    return json.dumps(shown, indent=1)


def in_own_process(run, **kwargs) -> dict:
    """A benchmark's run (its load generator; the server is a process of its own anyway) in a fresh
    process, as the long runs are, not in a test process holding everything the suite loaded before.
    In-process, the overload test failed in 2 of 3 full suite runs (refusals p99 0.88-0.94 s, against
    about 0.12 s) and in none of 9 runs alone; the cause was not pinned down further."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run, **kwargs).result()


def test_overload_is_refused_fast_and_the_service_recovers(tmp_path):
    report = in_own_process(overload.run, seconds=8, factor=4, threads=1, probe_seconds=3, baseline_seconds=4,
                            recovery_seconds=5, idle_seconds=2, cats=12, dogs=4, log_path=tmp_path / "server.log")
    assert report["passed"], _failed(report)
    assert report["overload"]["refused"] > report["overload"]["accepted"], "4x the capacity was offered"


def test_recovery_counts_a_backlog_and_errors_not_a_lone_slow_answer():
    def answer(started, seconds, status=200):
        return harness.Result(tag="recovery", started=started, status=status, seconds=seconds)

    draining = [answer(0.0, 2.0), answer(0.2, 1.8), answer(0.4, 0.1)]
    assert overload.not_recovered(draining, slow=0.5) == draining[:2]
    assert overload.not_recovered([answer(0.0, 0.1), answer(4.0, 0.9), answer(4.2, 0.1)], slow=0.5) == []
    refused = answer(4.0, 0.01, status=503)
    assert overload.not_recovered([answer(0.0, 0.1), refused, answer(4.2, 0.1)], slow=0.5) == [refused]


def test_soak_of_mixed_uploads_has_no_5xx_and_no_memory_creep(tmp_path):
    report = in_own_process(soak.run, seconds=25, threads=1, log_path=tmp_path / "server.log")
    assert report["passed"], _failed(report)
    assert report["by_status"].get("200", 0) > 100 and len(report["by_kind"]) >= 20
