"""docker/requirements.lock pins what the image installs: it must satisfy pyproject.toml's runtime
dependencies, and hold nothing heavy from the training extra."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    text = (ROOT / "docker" / "requirements.lock").read_text()
    return {canonicalize_name(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M)}


def test_lock_pins_every_runtime_dependency_within_its_range():
    locked = pins()
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in locked, f"{name} is not in docker/requirements.lock (re-run pip-compile)"
        assert req.specifier.contains(locked[name]), f"{name}=={locked[name]} is outside {req.specifier}"


def test_lock_has_hashes_and_no_training_packages():
    text = (ROOT / "docker" / "requirements.lock").read_text()
    locked = pins()
    assert text.count("--hash=sha256:") >= len(locked)
    assert not {"torch", "coremltools", "onnx", "opencv-python-headless"} & locked.keys()
