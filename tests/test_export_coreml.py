"""The Core ML exporter end to end on small random-weight checkpoints (CI has no trained ones):
the files pass the checker's rules and numbers against the ONNX export of the same weights, the
manifest lists both formats, and exporting again gives the same bytes."""
from __future__ import annotations

import hashlib
import json

import pytest

torch = pytest.importorskip("torch")


def write_checkpoints(runs, size: int = 64) -> None:
    """Checkpoints in train_*.py's format, random weights, a small input (fast to check)."""
    from training.nets import CatBreedClassifier, CatFaceDetector, CatLandmarker, EfficientNetLite0

    torch.manual_seed(0)
    nets = {"detector": CatFaceDetector(EfficientNetLite0(), size),
            "landmarks": CatLandmarker(EfficientNetLite0(), size),
            "breeds": CatBreedClassifier(EfficientNetLite0())}
    for kind, net in nets.items():
        (runs / kind).mkdir(parents=True)
        torch.save({"model": net.state_dict(), "input": size}, runs / kind / "checkpoint.pt")


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.mlmodel"))}


def test_export_is_checked_listed_and_byte_stable(tmp_path):
    from training import coreml_check, export, export_coreml

    runs, out, again = tmp_path / "runs", tmp_path / "models", tmp_path / "again"
    write_checkpoints(runs)
    export.main(["--runs", str(runs), "--out", str(out)])
    export_coreml.main(["--runs", str(runs), "--out", str(out)])
    export_coreml.main(["--runs", str(runs), "--out", str(again)])
    assert digests(out) == digests(again) and len(digests(out)) == 3

    reports = coreml_check.check(out, data=None, randoms=1)
    assert reports and all(r.ok for r in reports), "\n".join(r.text() for r in reports)

    manifest = json.loads((out / "manifest.json").read_text())
    formats = {(m["name"], m["format"]) for m in manifest["models"]}
    assert formats == {(n, f) for n in ("catface", "catlandmarks", "catbreeds") for f in ("onnx", "coreml")}
    for entry in manifest["models"]:
        blob = (out / entry["file"]).read_bytes()
        assert (entry["sha256"], entry["bytes"]) == (hashlib.sha256(blob).hexdigest(), len(blob))
