"""Issue 14's hostile clients against a real `python -m service` with its default settings
(benchmarks/attacks.py, shorter): every attack is refused fast with a 4xx problem+json, honest
probes keep getting answers meanwhile, and the process stays within the memory we ship."""
from __future__ import annotations

import json

import pytest

from benchmarks import attacks

MEMORY_LIMIT_MB = 768  # the container limit in docker/compose.yaml and docker/k8s


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("attacks") / "server.log"
    return attacks.run(attacks.ATTACKS, seconds=10, memory_limit_mb=MEMORY_LIMIT_MB,
                       env={"CATFACE_THREADS": "1"}, log_path=log_path)


@pytest.mark.parametrize("name", attacks.ATTACKS)
def test_attack_is_refused_and_honest_clients_are_served(report, name):
    found = [r for r in report["attacks"] if r["attack"] == name]
    assert found, f"{name} did not run: {json.dumps(report, indent=1)}"
    assert not found[0]["problems"], json.dumps(found[0], indent=1)


def test_server_survives_all_attacks_and_exits_cleanly(report):
    assert report["exit_code"] == 0, json.dumps(report, indent=1)
    assert report["idle_rss_mb"] <= 400, f"idle RSS after warm-up {report['idle_rss_mb']} MB"
