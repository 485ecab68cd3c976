"""The serving contract (service/contract.py) against its consumers: the shipped manifest, the
server's reading of it, and the README's Swift code. A number changed in one place only fails here."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from service import contract
from service.pipeline import BREED_CROP_SCALE, CatFace
from service.runtime import ModelFileError, read_manifest
from training.data import FLIP_PERMUTATION

from .conftest import MODELS, REPO

ENTRIES = read_manifest(MODELS)["models"]


def entries(name: str) -> list[dict]:
    found = [e for e in ENTRIES if e["name"] == name]
    assert found, f"the manifest has no {name} entry"
    return found


def input_side(entry: dict) -> tuple[int, int]:
    pixels = entry["inputs"][0]
    return tuple(pixels["shape"][2:4]) if entry["format"] == "onnx" else (pixels["height"], pixels["width"])


@pytest.mark.parametrize("entry", entries("catface"), ids=lambda e: e["format"])
def test_detector_entries_carry_the_contract(entry):
    assert input_side(entry) == (contract.DETECTOR_INPUT, contract.DETECTOR_INPUT)
    post = entry["postprocess"]
    assert (post["score_threshold"], post["iou_threshold"], post["containment_threshold"], post["max_faces"]) == (
        contract.SCORE_THRESHOLD, contract.IOU_THRESHOLD, contract.CONTAINMENT_THRESHOLD, contract.MAX_FACES)
    zoom = post["zoom"]
    assert (zoom["below_px"], zoom["grid_none"], zoom["grid_small"], zoom["overlap"], zoom["edge_px"]) == (
        contract.ZOOM_BELOW, contract.ZOOM_GRID_NONE, contract.ZOOM_GRID_SMALL, contract.ZOOM_OVERLAP,
        contract.ZOOM_EDGE)
    assert (zoom["candidate_score"], zoom["candidate_window"], zoom["max_candidates"], zoom["candidates_from"]) == (
        contract.ZOOM_CANDIDATE_SCORE, contract.ZOOM_CANDIDATE_WINDOW, contract.ZOOM_MAX_CANDIDATES,
        list(contract.ZOOM_CANDIDATES_FROM))
    if entry["format"] == "onnx":  # the server's small-face look: the tiles' magnification, one photo a call
        assert zoom["small_look"]["side"] == contract.ZOOM_SMALL_LOOK == round(
            contract.DETECTOR_INPUT * contract.ZOOM_GRID_SMALL / (1 + contract.ZOOM_OVERLAP))
        assert zoom["small_look"]["max_batch"] == contract.ZOOM_SMALL_LOOK_BATCH
        assert zoom["small_look"]["multiple"] == contract.ZOOM_SMALL_LOOK_MULTIPLE == max(
            level["stride"] for level in entry["anchors"]["levels"])  # (static "same" padding at every level)
    defaults = {i["name"]: i["default"] for i in entry["inputs"] if "default" in i}  # CoreML's NMS inputs
    assert defaults in ({}, {"iouThreshold": contract.IOU_THRESHOLD, "confidenceThreshold": contract.SCORE_THRESHOLD})


@pytest.mark.parametrize("entry", entries("catlandmarks"), ids=lambda e: e["format"])
def test_landmark_entries_carry_the_contract(entry):
    assert input_side(entry) == (contract.LANDMARK_INPUT, contract.LANDMARK_INPUT)
    crop = entry["inputs"][0]["crop"]
    assert crop["scale"] == contract.LANDMARK_CROP_SCALE
    assert f"{contract.LANDMARK_CROP_SCALE} x" in crop["rule"]
    assert crop["looks"] == list(contract.LANDMARK_LOOKS)  # the phone averages the looks the server does
    assert entry["mirror_permutation"] == FLIP_PERMUTATION


@pytest.mark.parametrize("entry", entries("catbreeds"), ids=lambda e: e["format"])
def test_breed_entries_agree_with_the_contract_where_they_carry_the_crop(entry):
    crop = entry["inputs"][0].get("crop") or entry.get("crop")
    assert crop["scale"] == contract.BREED_CROP_SCALE
    assert input_side(entry) == (contract.BREED_INPUT, contract.BREED_INPUT)
    assert entry["report_threshold"] == contract.BREED_REPORT_THRESHOLD
    if entry["format"] == "onnx":  # the cat output is the ONNX file's only
        assert entry["cat_threshold"] == contract.CAT_THRESHOLD


def served_models() -> dict:
    return {e["name"]: SimpleNamespace(entry=e, input_size=tuple(e["inputs"][0]["shape"][2:4]))
            for e in ENTRIES if e["format"] == "onnx"}


def test_a_mirrored_landmark_look_without_its_permutation_stops_start_up():
    """Without it the mirrored look's left eye would be averaged with the other looks' right eye."""
    by_name = served_models()
    entry = {k: v for k, v in by_name["catlandmarks"].entry.items() if k != "mirror_permutation"}
    by_name["catlandmarks"] = SimpleNamespace(entry=entry, input_size=by_name["catlandmarks"].input_size)
    with pytest.raises(ModelFileError, match="mirror_permutation"):
        CatFace(by_name)


def test_the_server_reads_the_contract_from_the_manifest():
    by_name = served_models()
    catface = CatFace(by_name)
    assert (catface.score_threshold, catface.iou_threshold, catface.containment, catface.max_faces) == (
        contract.SCORE_THRESHOLD, contract.IOU_THRESHOLD, contract.CONTAINMENT_THRESHOLD, contract.MAX_FACES)
    assert catface.zoom["below_px"] == contract.ZOOM_BELOW
    assert catface.crop_scale == contract.LANDMARK_CROP_SCALE
    assert catface.landmark_looks == tuple((look["scale"], look["mirror"]) for look in contract.LANDMARK_LOOKS)
    assert BREED_CROP_SCALE == contract.BREED_CROP_SCALE
    assert catface.cat_threshold == contract.CAT_THRESHOLD


def test_the_readme_swift_code_uses_the_contract_crops():
    readme = (REPO / "README.md").read_text()
    scales = [float(s) for s in re.findall(r"square\(around: box, scale: ([0-9.]+)(?: \* look\.scale)?\)", readme)]
    assert scales == [contract.LANDMARK_CROP_SCALE, contract.BREED_CROP_SCALE]
    (looks,) = re.findall(r"let looks: .* = \[(.*)\]", readme)
    assert [{"scale": float(s), "mirror": m == "true"} for s, m in re.findall(r"\(([0-9.]+), (true|false)\)", looks)] \
        == list(contract.LANDMARK_LOOKS)
    (permutation,) = re.findall(r"let mirrorPermutation = \[(.*)\]", readme)
    assert [int(i) for i in permutation.split(",")] == FLIP_PERMUTATION
    described = {float(s) for s in re.findall(r"square of ([0-9.]+) x", readme)}
    assert described == {contract.LANDMARK_CROP_SCALE, contract.BREED_CROP_SCALE}
    assert [float(s) for s in re.findall(r"onePerFace\(.*containment: ([0-9.]+)\)", readme)] == [
        contract.CONTAINMENT_THRESHOLD]
