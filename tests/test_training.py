"""A tiny run of each training script and the exporter on a few real photos, so the
training code stays alive in CI (CI trains nothing that ships)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from .conftest import DATA  # noqa: E402


def test_flip_swaps_left_and_right_landmarks():
    from training.augment import affine, move_points

    points = np.array([[10, 20], [30, 20], [20, 30], [5, 5], [8, 0], [12, 6], [28, 6], [32, 0], [35, 5]], np.float32)
    m = affine(1.0, 0.0, True, (20, 20), (20, 20))
    moved = move_points(points, m, flipped=True)
    assert moved[0, 0] < moved[1, 0]  # still image-left first
    assert np.allclose(moved[0], [10, 20]) and np.allclose(moved[4], [8, 0])


def test_tiny_training_runs_and_export(tmp_path):
    from training import export, train_breeds, train_detector, train_landmarks

    runs = tmp_path / "runs"
    train_detector.main(["--data", str(DATA), "--out", str(runs / "detector"), "--epochs", "1", "--steps", "1",
                         "--limit", "4", "--threads", "1"])
    train_landmarks.main(["--data", str(DATA), "--out", str(runs / "landmarks"), "--epochs", "1", "--limit", "40",
                          "--threads", "1"])
    train_breeds.main(["--data", str(DATA), "--out", str(runs / "breeds"), "--epochs", "1", "--limit", "4",
                       "--threads", "1"])
    for kind in ("detector", "landmarks", "breeds"):
        log = [json.loads(line) for line in (runs / kind / "log.jsonl").read_text().splitlines()]
        assert np.isfinite(log[-1]["loss"])
    export.main(["--runs", str(runs), "--out", str(tmp_path / "models")])
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    assert {m["name"] for m in manifest["models"]} == {"catface", "catlandmarks", "catbreeds"}
