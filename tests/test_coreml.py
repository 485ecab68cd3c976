"""The committed Core ML files, run in numpy from their protobuf spec (training.coreml_check) and
compared with the committed ONNX files on real photos and random pixels; plus the structural
rules of Core ML's validator, and proof that the check catches a changed weight, a flipped
channel order, a missed normalisation and broken pipeline wiring."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from service.contract import IOU_THRESHOLD, SCORE_THRESHOLD
from training import coreml_check as check
from training import data
from training.export import VERSIONS

from .conftest import MODELS, ground_truth, photo

NAMES = ("catface", "catlandmarks", "catbreeds")
MAX_BYTES = {"catface": 3_000_000, "catlandmarks": 3_000_000, "catbreeds": 12_000_000}  # issue 13: <= 12 MB
PHOTOS = check.PHOTOS  # real photos per model (cat faces; one dog for the detector)

if not any((MODELS / f"{n}.mlmodel").exists() for n in NAMES):
    pytest.skip("models/*.mlmodel are not there yet (python -m training.export_coreml --runs runs --out models)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def specs():
    return {n: check.load_spec(MODELS / f"{n}.mlmodel") for n in NAMES}


@pytest.fixture(scope="module")
def refs(specs):
    return {n: check.references(MODELS / f"{n}.onnx", specs[n]) for n in NAMES}


def pixels_of(spec, relative: str, crop_face: bool = False) -> np.ndarray:
    """A shared-data photo as the server feeds the model (landmarks: the face crop)."""
    _, size = check.image_input(spec)
    return check.model_pixels(photo(relative), size, ground_truth(relative) if crop_face else None)


def inputs(spec, name: str, photos: int | None = None, randoms: int = 2) -> list[tuple[str, np.ndarray]]:
    _, size = check.image_input(spec)
    chosen = PHOTOS[name][:photos]
    return [(p, pixels_of(spec, p, crop_face=name == "catlandmarks")) for p in chosen] + \
        [(f"random {s}", check.random_pixels(size, s)) for s in range(randoms)]


def fails(reports) -> bool:
    return not all(r.ok for r in reports)


# ---- numbers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_coreml_matches_onnx_on_photos_and_random_pixels(specs, refs, name):
    reports = check.compare(name, specs[name], refs[name], inputs(specs[name], name))
    print("\n".join(r.text() for r in reports))
    precision = check.weight_precision(specs[name])
    assert {r.reference for r in reports} == ({"onnx", "onnx with fp16-rounded weights"} if precision == "float16"
                                              else {"onnx"})
    for r in reports:
        assert r.ok, r.text()
        assert r.bound <= check.BOUNDS[precision]
    if name == "catface":  # the photos do hold faces, so the NMS stage was compared too
        assert all("coordinates (after NMS), photos" in r.diffs for r in reports)


def first_and_last_weights(spec):
    layers = [(layer, w) for layer, field, w in check.all_weights(spec) if field == "weights"]
    return {"first": layers[0], "last": layers[-1]}


def set_weights(w, values: np.ndarray) -> None:
    if len(w.float16Value):
        w.float16Value = values.astype("<f2").tobytes()
    else:
        del w.floatValue[:]
        w.floatValue.extend(values.tolist())


@pytest.mark.parametrize("which,change", [("first", 0.1), ("last", 1.0)])
@pytest.mark.parametrize("name", NAMES)
def test_one_changed_weight_fails_the_check(specs, refs, name, which, change):
    spec = copy.deepcopy(specs[name])
    layer, w = first_and_last_weights(spec)[which]
    if layer.WhichOneof("layer") == "innerProduct":
        # The classifier's dense layer reads pooled ReLU features, many of them zero for any
        # photo, so its largest weight can be invisible; one bias value always shows.
        w = layer.innerProduct.bias
    values = check.weight_array(w).copy()
    i = int(np.argmax(np.abs(values)))
    values[i] *= 1 + change  # the largest value: +10% (first layer) or doubled (last)
    set_weights(w, values)
    assert check.structural_problems(spec) == []  # only the numbers can tell
    reports = check.compare(name, spec, refs[name], inputs(spec, name, photos=1, randoms=1))
    assert fails(reports), "\n".join(r.text() for r in reports)


def image_stages(spec):
    """The specs whose inputs include the image (the pipeline and its NN stage, or the NN)."""
    return [spec] + [m for m in spec.pipeline.models if m.WhichOneof("Type") != "nonMaximumSuppression"]


@pytest.mark.parametrize("mutation", ["BGR channel order", "pixels scaled to 0..1"])
@pytest.mark.parametrize("name", NAMES)
def test_wrong_image_preprocessing_fails_the_numbers(specs, refs, name, mutation):
    spec = copy.deepcopy(specs[name])
    for part in image_stages(spec):
        if mutation == "BGR channel order":
            for f in part.description.input:
                if f.type.WhichOneof("Type") == "imageType":
                    f.type.imageType.colorSpace = check.BGR
        elif part.WhichOneof("Type") != "pipeline":
            nn = getattr(part, part.WhichOneof("Type"))
            nn.preprocessing[0].scaler.channelScale = 1 / 255
    reports = check.compare(name, spec, refs[name], inputs(spec, name, photos=1, randoms=1))
    # the numbers alone fail, whatever the structural rules say
    assert all(r.worst >= r.bound for r in reports), "\n".join(r.text() for r in reports)


def test_interpreter_refuses_a_layer_it_does_not_know(specs):
    spec = copy.deepcopy(specs["catlandmarks"])
    layer = next(l for l in spec.neuralNetwork.layers if l.WhichOneof("layer") == "activation")
    layer.softmax.SetInParent()  # the legacy softmax: not used by our files, so not interpreted
    _, size = check.image_input(spec)
    with pytest.raises(NotImplementedError, match="softmax"):
        check.predict(spec, {"image": check.random_pixels(size, 0)})


def test_nms_thresholds_are_optional_inputs_with_the_server_defaults(specs):
    spec = specs["catface"]
    nms_stage = spec.pipeline.models[-1]
    p = nms_stage.nonMaximumSuppression
    assert (p.iouThreshold, p.confidenceThreshold) == (IOU_THRESHOLD, SCORE_THRESHOLD)
    assert list(p.stringClassLabels.vector) == ["cat"]
    optional = {f.name for f in spec.description.input if f.type.isOptional}
    assert optional == {"iouThreshold", "confidenceThreshold"}
    # run the NN once, then the NMS stage with and without the threshold inputs
    raw = {}
    out = check.predict(spec, {"image": pixels_of(spec, PHOTOS["catface"][0])}, trace=raw)
    stage_in = {p.confidenceInputFeatureName: raw[p.confidenceInputFeatureName],
                p.coordinatesInputFeatureName: raw[p.coordinatesInputFeatureName]}
    assert len(out["coordinates"]) == 1
    assert np.array_equal(check.run_nms(nms_stage, stage_in)["coordinates"], out["coordinates"])
    assert len(check.run_nms(nms_stage, {**stage_in, "confidenceThreshold": 1.01})["coordinates"]) == 0
    loose = check.run_nms(nms_stage, {**stage_in, "confidenceThreshold": 0.05, "iouThreshold": 1.0})
    assert len(loose["coordinates"]) > 1  # neighbouring anchors of the same face, no longer suppressed


# ---- structure and metadata ------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_structural_rules_and_metadata_pass(specs, name):
    spec = specs[name]
    assert check.structural_problems(spec) == []
    meta = spec.description.metadata
    assert meta.versionString == VERSIONS[name] and meta.author and "Apache-2.0" in meta.license
    preview = {"catface": "objectDetector", "catbreeds": "imageClassifier"}.get(name)
    assert meta.userDefined.get(check.PREVIEW) == preview
    for part in [spec] + list(spec.pipeline.models):
        assert check.CONVERSION_DATE not in part.description.metadata.userDefined
    # saved in deterministic form: re-serialising gives the same bytes (stable sha256 / ETag)
    assert spec.SerializeToString(deterministic=True) == (MODELS / f"{name}.mlmodel").read_bytes()


def test_breeds_is_a_classifier_with_the_twelve_labels(specs, refs):
    spec = specs["catbreeds"]
    assert spec.WhichOneof("Type") == "neuralNetworkClassifier"
    assert list(spec.neuralNetworkClassifier.stringClassLabels.vector) == data.BREEDS
    assert (spec.description.predictedFeatureName, spec.description.predictedProbabilitiesName) == \
        ("classLabel", "classLabelProbs")
    pixels = pixels_of(spec, PHOTOS["catbreeds"][0])
    out = check.predict(spec, {"image": pixels})
    session, _ = refs["catbreeds"]["onnx"]
    probabilities, _cat = session.run(None, {"image": pixels.astype(np.float32).transpose(2, 0, 1)[None]})
    assert out["classLabel"] == data.BREEDS[int(np.argmax(probabilities))]
    assert sum(out["classLabelProbs"].values()) == pytest.approx(1.0, abs=1e-4)


def _mutate(spec, how: str):
    spec = copy.deepcopy(spec)
    nn_stage, nms_stage = spec.pipeline.models[0], spec.pipeline.models[-1]
    p = nms_stage.nonMaximumSuppression
    out = {o.name: o for o in nn_stage.description.output}
    if how == "FLOAT32 NMS at spec version 4":
        nms_stage.specificationVersion = 4
    elif how == "stage shapes differ":
        out[p.coordinatesInputFeatureName].type.multiArrayType.shape[1] = 5
    elif how == "stage types differ":
        out[p.confidenceInputFeatureName].type.multiArrayType.dataType = check.DOUBLE
    elif how == "shape mixed with shapeRange":
        m = nms_stage.description.output[1].type.multiArrayType
        m.ClearField("shapeRange")
        m.shape.extend([10, 4])
    elif how == "threshold is not a double":
        next(i for i in nms_stage.description.input if i.name == "iouThreshold").type.int64Type.SetInParent()
    elif how == "pipeline older than its stages":
        spec.specificationVersion = 4
    elif how == "output not produced":
        p.confidenceOutputFeatureName = "scores"
        nms_stage.description.output[0].name = "scores"
    elif how == "image sizes differ":
        nn_stage.description.input[0].type.imageType.width = 224  # the detector's input is square, not 224
    elif how == "conversion date":
        nn_stage.description.metadata.userDefined[check.CONVERSION_DATE] = "2024-01-01"
    return spec


@pytest.mark.parametrize("how,expected", [
    ("FLOAT32 NMS at spec version 4", "needs DOUBLE arrays"),
    ("stage shapes differ", "] is provided"),  # e.g. "... but MultiArray<FLOAT32>[256, 5] is provided"
    ("stage types differ", "input 'rawConfidence' is MultiArray<FLOAT32>"),
    ("shape mixed with shapeRange", "mix shape and shapeRange"),
    ("threshold is not a double", "must be a Double"),
    ("pipeline older than its stages", "the pipeline declares 4"),
    ("output not produced", "pipeline output 'confidence' is not produced"),
    ("image sizes differ", "input 'image' is Image<RGB>224x"),
    ("conversion date", "conversion date"),
])
def test_broken_pipelines_break_the_structural_rules(specs, how, expected):
    problems = check.structural_problems(_mutate(specs["catface"], how))
    assert any(expected in p for p in problems), problems


# ---- files and manifest ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_file_is_small_and_in_the_manifest(specs, name):
    path = MODELS / f"{name}.mlmodel"
    assert path.stat().st_size < MAX_BYTES[name]
    manifest = json.loads((MODELS / "manifest.json").read_text())
    (entry,) = [m for m in manifest["models"] if m["name"] == name and m["format"] == "coreml"]
    assert entry["file"] == path.name and entry["bytes"] == path.stat().st_size
    assert entry["weights"] == check.weight_precision(specs[name]) and entry["version"] == VERSIONS[name]
    d = specs[name].description
    assert [i["name"] for i in entry["inputs"]] == [f.name for f in d.input]
    assert {o["name"] for o in entry["outputs"]} == {f.name for f in d.output}
    assert all(o.get("meaning") for o in entry["outputs"])
