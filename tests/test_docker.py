"""The container files agree with the service and with each other: the CPU sizing of the entry
helper, the Dockerfile's hardening, and the Kubernetes/compose timings against the service's own
shutdown deadline. (Schema validation and the real build + run: docker/validate.sh, docker/smoke.sh.)"""
from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from service.config import Settings

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"


def _entry():
    spec = importlib.util.spec_from_file_location("catface_entry", DOCKER / "entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("files, quota", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({}, None),
])
def test_cgroup_quota_v1_and_v2(tmp_path, files, quota):
    assert _entry().cgroup_cpus(_cgroup(tmp_path, files)) == quota


def test_allowance_rounds_a_quota_down_but_never_below_one(tmp_path):
    entry = _entry()
    assert entry.cpu_allowance(_cgroup(tmp_path / "a", {"cpu.max": "150000 100000"}))[0] == 1
    assert entry.cpu_allowance(_cgroup(tmp_path / "b", {"cpu.max": "20000 100000"}))[0] == 1
    unlimited, source = entry.cpu_allowance(_cgroup(tmp_path / "c", {"cpu.max": "max 100000"}))
    assert source in ("affinity", "cpu_count") and unlimited >= 1


def test_explicit_thread_settings_win():
    env = _entry().sized_environment({"CATFACE_THREADS": "3", "CATFACE_IMAGE_THREADS": " "}, 2)
    assert env["CATFACE_THREADS"] == "3" and env["CATFACE_IMAGE_THREADS"] == "2"


def test_entry_helper_execs_the_service():
    out = subprocess.run([sys.executable, str(DOCKER / "entrypoint.py"), "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "python -m service" in out.stdout and '"msg": "cpu allowance"' in out.stderr


# ---- Dockerfile --------------------------------------------------------------------------------
def test_dockerfile_hardening():
    text = (DOCKER / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "a syntax line would fetch from a registry"
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["python:3.11-slim-bookworm"] * 2
    user = re.findall(r"^USER (\S+)", text, re.M)[-1]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0"  # numeric: runAsNonRoot can check it
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    assert "/livez" in text.split("HEALTHCHECK", 1)[1] and "curl" not in text.split("HEALTHCHECK", 1)[1]
    assert "required=true" not in text  # the CA secret stays optional


def test_image_takes_runtime_dependencies_only():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if re.match(r"(torch|onnx\b|coremltools|opencv|pytest)", d)]
    ignored = (REPO / ".dockerignore").read_text().split()
    # the build context: the pinned runtime lock (checked in tests/test_lock.py), the service, the models
    assert ignored[ignored.index("*") + 1:][:4] == ["!docker/requirements.lock", "!service/", "!models/",
                                                    "!docker/entrypoint.py"]


# ---- Kubernetes and compose --------------------------------------------------------------------
def _manifests() -> dict[str, dict]:
    yaml = pytest.importorskip("yaml")
    docs = [d for path in sorted((DOCKER / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    return {d["kind"]: d for d in docs}


def _shutdown_s(env: dict[str, str]) -> float:
    """Longest SIGTERM-to-exit of the service: drain delay + uvicorn's graceful-shutdown timeout."""
    settings = Settings.from_env({k: str(v) for k, v in env.items()})
    return settings.drain_s + math.ceil(settings.request_timeout_s) + 5


def test_kubernetes_objects_fit_together():
    m = _manifests()
    assert set(m) == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    deploy, pod = m["Deployment"], m["Deployment"]["spec"]["template"]
    labels = pod["metadata"]["labels"]
    for selector in (deploy["spec"]["selector"], m["PodDisruptionBudget"]["spec"]["selector"]):
        assert selector["matchLabels"].items() <= labels.items()
    assert m["Service"]["spec"]["selector"].items() <= labels.items()
    assert deploy["spec"]["replicas"] >= 2 and m["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    assert m["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    assert m["PodDisruptionBudget"]["spec"]["minAvailable"] < deploy["spec"]["replicas"]

    (container,) = pod["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == 8000
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()
    probes = {name: container[name]["httpGet"]["path"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"] == "/readyz" and probes["livenessProbe"] == "/livez"
    from service.app import create_app
    routes = set(create_app(Settings()).openapi()["paths"])
    assert set(probes.values()) <= routes

    uid = int(re.findall(r"^USER (\d+)", (DOCKER / "Dockerfile").read_text(), re.M)[-1])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] and pod["spec"]["securityContext"]["runAsUser"] == uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(mount["mountPath"] == "/tmp" for mount in container["volumeMounts"])

    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(pre_stop[1]) + _shutdown_s(env)


def test_compose_waits_for_the_drain():
    yaml = pytest.importorskip("yaml")
    service = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["catface"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile" and service["read_only"] is True
    grace = int(service["stop_grace_period"].rstrip("s"))
    assert grace > _shutdown_s(service.get("environment", {}))


def test_compose_and_kubernetes_ship_the_same_memory_limit():
    """One measured limit (README, Performance): the smoke test bursts at compose's mem_limit."""
    yaml = pytest.importorskip("yaml")
    service = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["catface"]
    (container,) = _manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    units = {"g": 2**30, "Gi": 2**30, "m": 2**20, "Mi": 2**20}

    def size(text: str) -> int:
        number, unit = re.fullmatch(r"(\d+)([A-Za-z]+)", str(text)).groups()
        return int(number) * units[unit]

    assert size(service["mem_limit"]) == size(container["resources"]["limits"]["memory"])
