"""Container entry: size the thread pools to the container's CPU allowance, then become the service.

onnxruntime and os.cpu_count() see every core of the host, not the cgroup quota (`docker run
--cpus`, a Kubernetes CPU limit), so an unsized pod runs many more threads than it may use and
gets throttled. This reads the quota and the CPU affinity, and sets CATFACE_THREADS and
CATFACE_IMAGE_THREADS unless they are set already, then execs `python -m service` (same PID, so
SIGTERM reaches uvicorn directly). Arguments are passed on: `docker run catface --port 9000`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _quota_v2(text: str) -> float | None:
    """`cpu.max`: "max 100000" (no limit) or "150000 100000" (1.5 CPUs)."""
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def _quota_v1(quota_us: str, period_us: str) -> float | None:
    quota = int(quota_us.strip())
    return None if quota <= 0 else quota / int(period_us.strip())  # -1 = no limit


def cgroup_cpus(root: Path = CGROUP) -> float | None:
    """The CPU quota of this cgroup in CPUs (v2 or v1), or None when there is none."""
    try:
        return _quota_v2((root / "cpu.max").read_text())
    except (OSError, ValueError):
        pass
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / controller
        try:
            return _quota_v1((base / "cpu.cfs_quota_us").read_text(), (base / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
    return None


def cpu_allowance(root: Path = CGROUP) -> tuple[int, str]:
    """Whole CPUs this container may use, and where the number came from. A fractional quota
    rounds down (1.5 CPUs -> 1 thread runs unthrottled), never below 1."""
    try:
        cpus, source = len(os.sched_getaffinity(0)), "affinity"
    except (AttributeError, OSError):
        cpus, source = os.cpu_count() or 1, "cpu_count"
    quota = cgroup_cpus(root)
    if quota is not None and math.floor(quota) < cpus:
        cpus, source = max(1, math.floor(quota)), "cgroup quota"
    return cpus, source


def sized_environment(environ: dict[str, str], cpus: int) -> dict[str, str]:
    env = dict(environ)
    for name in ("CATFACE_THREADS", "CATFACE_IMAGE_THREADS"):
        if not env.get(name, "").strip():  # an explicit setting wins
            env[name] = str(cpus)
    return env


def main() -> None:
    cpus, source = cpu_allowance()
    env = sized_environment(dict(os.environ), cpus)
    print(json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": "info",
                      "logger": "catface.entry", "msg": "cpu allowance", "cpus": cpus, "source": source,
                      "threads": env["CATFACE_THREADS"], "image_threads": env["CATFACE_IMAGE_THREADS"]}),
          file=sys.stderr, flush=True)
    os.execve(sys.executable, [sys.executable, "-m", "service", *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
