"""Export the trained checkpoints to Core ML for iOS/macOS apps and add them to the manifest.

    python -m training.export_coreml --runs runs --out models

Same checkpoints and graphs as the ONNX files (training.export.load_checkpoint), traced with
torch.jit.trace and converted by coremltools 9.0 to the legacy NeuralNetwork format, one
.mlmodel file each:

  catface.mlmodel       Pipeline: detector (anchor decoding inside) -> NonMaximumSuppression, so
                        Vision returns VNRecognizedObjectObservation labelled "cat".
  catlandmarks.mlmodel  face crop -> 18 numbers normalised to the crop (one look: the app averages
                        the manifest's looks, as the server does).
  catbreeds.mlmodel     classifier: classLabel + classLabelProbs over the 12 breeds.

Inputs are RGB images (0..255; the normalisation is inside the nets). Convolution and dense
weights are stored as float16 (--precision float32 keeps them full). The files carry no
conversion date and are serialised deterministically: the same weights give the same bytes.
Every file is checked before it is written: structural rules and a numpy run of the saved spec
against torch (training.coreml_check).
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from service.contract import BREED_CROP_SCALE, BREED_REPORT_THRESHOLD

from . import coreml_check as check
from . import data
from .export import (
    VERSIONS,
    breeds_entry,
    detector_entry,
    file_facts,
    landmarks_entry,
    load_checkpoint,
    update_manifest,
)
from .nets import CatBreedClassifier, CatFaceDetector, CatLandmarker
from .train_detector import IOU_THRESHOLD, SCORE_THRESHOLD

AUTHOR = "catface contributors"
LICENSE = ("Code: Apache-2.0. Weights: trained on public datasets that keep their own terms "
           "(see MODEL_CARD.md and the shared data README).")
CONFIDENCE_IN, COORDINATES_IN = "rawConfidence", "rawCoordinates"


class VisionDetector(nn.Module):
    """The detector with the outputs Core ML's NMS reads: confidence (A, 1) and coordinates
    (A, 4) as x_center, y_center, width, height normalised to the input (origin top-left)."""

    def __init__(self, detector: CatFaceDetector):
        super().__init__()
        self.detector = detector

    def forward(self, pixels):
        scores, boxes = self.detector(pixels)
        lo, hi = boxes[0, :, :2], boxes[0, :, 2:]
        return scores[0].unsqueeze(1), torch.cat([(lo + hi) / 2, hi - lo], 1)


def convert(module: nn.Module, size: int, outputs: list[str], classifier_labels: list[str] | None = None):
    """Trace at batch 1 and convert to a NeuralNetwork spec with an RGB image input named `image`."""
    import coremltools as ct

    example = torch.rand(1, 3, size, size) * 255
    with torch.no_grad():
        traced = torch.jit.trace(module.eval(), example)
    kwargs = {}
    if classifier_labels is not None:
        kwargs["classifier_config"] = ct.ClassifierConfig(classifier_labels)
    else:
        kwargs["outputs"] = [ct.TensorType(name=n) for n in outputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ct.convert(traced, source="pytorch", convert_to="neuralnetwork",
                           inputs=[ct.ImageType(name="image", shape=(1, 3, size, size),
                                                color_layout=ct.colorlayout.RGB, scale=1.0, bias=[0.0, 0.0, 0.0])],
                           **kwargs)
    return model.get_spec()


def half_weights(spec) -> None:
    """Store convolution and dense weights/biases as float16 (the bulk of the bytes); small
    constants (anchor centres, the normalisation offset) stay float32 so box decoding is exact."""
    for layer, _, w in check.all_weights(spec):
        if layer.WhichOneof("layer") in ("convolution", "innerProduct") and len(w.floatValue):
            values = np.asarray(w.floatValue, np.float32)
            half = values.astype("<f2")
            if not np.all(np.isfinite(half)):
                raise ValueError(f"layer {layer.name}: a weight overflows float16")
            w.ClearField("floatValue")
            w.float16Value = half.tobytes()


def describe(spec, name: str, short: str, features: dict[str, str], preview: str | None = None) -> None:
    """Author, licence, version, descriptions; drop the conversion date (byte-stable files)."""
    meta = spec.description.metadata
    meta.author, meta.license, meta.versionString, meta.shortDescription = AUTHOR, LICENSE, VERSIONS[name], short
    for part in [spec] + list(spec.pipeline.models):
        if check.CONVERSION_DATE in part.description.metadata.userDefined:
            del part.description.metadata.userDefined[check.CONVERSION_DATE]
    if preview:
        meta.userDefined[check.PREVIEW] = preview
    for f in list(spec.description.input) + list(spec.description.output):
        f.shortDescription = features[f.name]


def array_feature(f, name: str, shape: list[int] | None = None, ranges: list[tuple[int, int]] | None = None) -> None:
    from coremltools.proto import FeatureTypes_pb2

    f.name = name
    m = f.type.multiArrayType
    m.dataType = FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    del m.shape[:]
    if shape:
        m.shape.extend(shape)
    for low, high in ranges or []:
        r = m.shapeRange.sizeRanges.add()
        r.lowerBound, r.upperBound = low, high


def double_feature(f, name: str, description: str) -> None:
    f.name, f.shortDescription = name, description
    f.type.doubleType.SetInParent()
    f.type.isOptional = True


CATFACE_FEATURES = {
    "image": "The whole photo; stretch it to the model's square (Vision: imageCropAndScaleOption = .scaleFill).",
    "iouThreshold": f"Optional. Boxes overlapping a better one by more IoU than this are dropped "
                    f"(default {IOU_THRESHOLD}).",
    "confidenceThreshold": f"Optional. Faces scoring below this are dropped (default {SCORE_THRESHOLD}).",
    "confidence": "Per face: the probability that it is a cat face (one column, label \"cat\").",
    "coordinates": "Per face: x_center, y_center, width, height normalised to the image (0..1), origin top-left. "
                   "Vision's boundingBox is the same box with the origin bottom-left.",
    CONFIDENCE_IN: "Face probability of every anchor (before NMS).",
    COORDINATES_IN: "Box of every anchor: x_center, y_center, width, height normalised, origin top-left (before NMS).",
}


def catface_pipeline(nn_spec, anchors: int):
    """Detector NN -> NMS, as Vision wants it. FLOAT32 arrays between the stages need spec
    version 5 (iOS 14 / macOS 11) for the NMS and the pipeline."""
    from coremltools.proto import Model_pb2

    outs = {o.name: o for o in nn_spec.description.output}
    array_feature(outs[CONFIDENCE_IN], CONFIDENCE_IN, [anchors, 1])
    array_feature(outs[COORDINATES_IN], COORDINATES_IN, [anchors, 4])
    for f in list(nn_spec.description.input) + list(nn_spec.description.output):
        f.shortDescription = CATFACE_FEATURES[f.name]

    nms = Model_pb2.Model(specificationVersion=check.IOS14)
    for name in (CONFIDENCE_IN, COORDINATES_IN):
        nms.description.input.add().CopyFrom(outs[name])
    double_feature(nms.description.input.add(), "iouThreshold", CATFACE_FEATURES["iouThreshold"])
    double_feature(nms.description.input.add(), "confidenceThreshold", CATFACE_FEATURES["confidenceThreshold"])
    array_feature(nms.description.output.add(), "confidence", ranges=[(0, -1), (1, 1)])
    array_feature(nms.description.output.add(), "coordinates", ranges=[(0, -1), (4, 4)])
    for f in list(nms.description.input) + list(nms.description.output):
        f.shortDescription = CATFACE_FEATURES[f.name]
    p = nms.nonMaximumSuppression
    p.confidenceInputFeatureName, p.coordinatesInputFeatureName = CONFIDENCE_IN, COORDINATES_IN
    p.iouThresholdInputFeatureName, p.confidenceThresholdInputFeatureName = "iouThreshold", "confidenceThreshold"
    p.confidenceOutputFeatureName, p.coordinatesOutputFeatureName = "confidence", "coordinates"
    p.iouThreshold, p.confidenceThreshold = IOU_THRESHOLD, SCORE_THRESHOLD
    p.pickTop.perClass = False
    p.stringClassLabels.vector.append("cat")

    pipeline = Model_pb2.Model(specificationVersion=max(check.IOS14, nn_spec.specificationVersion))
    pipeline.description.metadata.userDefined.update(nn_spec.description.metadata.userDefined)  # provenance
    pipeline.description.input.add().CopyFrom(nn_spec.description.input[0])
    pipeline.description.input.extend(nms.description.input[2:])
    pipeline.description.output.extend(nms.description.output)
    pipeline.pipeline.models.add().CopyFrom(nn_spec)
    pipeline.pipeline.models.add().CopyFrom(nms)
    return pipeline


def export_catface(model: CatFaceDetector, size: int, precision: str):
    spec = convert(VisionDetector(model), size, [CONFIDENCE_IN, COORDINATES_IN])
    if precision == "float16":
        half_weights(spec)
    spec = catface_pipeline(spec, model.anchor_count(size))
    describe(spec, "catface", "Finds cat faces: a box and a score per face (Vision: VNRecognizedObjectObservation, "
                   "label \"cat\").", CATFACE_FEATURES, preview="objectDetector")
    return spec


def export_landmarks(model: CatLandmarker, size: int, precision: str):
    spec = convert(model, size, ["landmarks"])  # one look; the app runs the manifest's looks
    spec.description.output[0].type.multiArrayType.shape.extend([1, 18])
    if precision == "float16":
        half_weights(spec)
    describe(spec, "catlandmarks", "9 cat face landmarks (eyes, mouth, 3 per ear) in a square face crop.", {
        "image": landmarks_entry(size)["inputs"][0]["crop"]["rule"].capitalize() + ".",
        "landmarks": "x0, y0, ..., x8, y8 normalised to the crop (0..1, origin top-left): "
                     + ", ".join(data.LANDMARK_NAMES) + ".",
    })
    return spec


class BreedProbabilities(nn.Module):
    """The classifier's breed output alone: a Vision classifier has one probability output. The
    cat / not-a-cat output stays in the ONNX file (the server's); on the phone the Vision
    detector says whether there is a cat face."""

    def __init__(self, classifier: CatBreedClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, pixels):
        return self.classifier(pixels)[0]


def export_breeds(model: CatBreedClassifier, size: int, precision: str):
    import coremltools as ct

    spec = convert(BreedProbabilities(model), size, [], classifier_labels=data.BREEDS)
    # the converter names the probabilities after the traced graph's last value
    ct.utils.rename_feature(spec, spec.description.predictedProbabilitiesName, "classLabelProbs")
    if precision == "float16":
        half_weights(spec)
    d = spec.description
    describe(spec, "catbreeds", "Likely breed of a cat among 12 (Oxford-IIIT Pet breeds).", {
        "image": f"A photo of a cat or a square crop of {BREED_CROP_SCALE:g} x the face box around it, "
                 f"stretched to {size}x{size}.",
        d.predictedFeatureName: "The most likely breed.",
        d.predictedProbabilitiesName: "Probability of each of the 12 breeds (they sum to 1); "
                                      f"the server reports breeds from {BREED_REPORT_THRESHOLD:g} up.",
    }, preview="imageClassifier")
    return spec


# ---- checks and files ------------------------------------------------------------------------
def verify_against_torch(name: str, spec, module: nn.Module, size: int, seed: int = 0) -> float:
    """Max |numpy run of the spec - torch| on one random image; raises above the precision's bound."""
    pixels = check.random_pixels((size, size), seed)
    x = torch.from_numpy(pixels.astype(np.float32).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        want = module(x)
    if name == "catface":
        stage = spec.pipeline.models[0]
        got = check.predict(stage, {"image": pixels})
        scores, boxes = (t[0].numpy() for t in want)
        centre = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
        diff = max(np.abs(got[CONFIDENCE_IN][:, 0] - scores).max(), np.abs(got[COORDINATES_IN] - centre).max())
    elif name == "catlandmarks":
        diff = np.abs(check.predict(spec, {"image": pixels})["landmarks"] - want.numpy()).max()
    else:
        probs = check.predict(spec, {"image": pixels})[spec.description.predictedProbabilitiesName]
        diff = np.abs(np.array([probs[b] for b in data.BREEDS]) - want[0].numpy()[0]).max()
    bound = check.BOUNDS[check.weight_precision(spec)]
    if not diff < bound:
        raise AssertionError(f"{name}: Core ML spec differs from torch by {diff:.3g} (bound {bound:g})")
    return float(diff)


def save(spec, path: Path) -> None:
    problems = check.structural_problems(spec)
    if problems:
        raise AssertionError(f"{path.name}: " + "; ".join(problems))
    path.write_bytes(spec.SerializeToString(deterministic=True))  # map order fixed: same bytes


def manifest_entry(onnx_entry: dict, spec, inputs: list[dict], outputs: list[dict], **extra) -> dict:
    """The ONNX entry's facts (task, labels, anchors...) with the Core ML interface instead."""
    version = spec.specificationVersion
    minimum = {4: "iOS 13 / macOS 10.15", 5: "iOS 14 / macOS 11", 6: "iOS 15 / macOS 12"}.get(version,
                                                                                              f"spec v{version}")
    entry = {k: v for k, v in onnx_entry.items() if k not in ("inputs", "outputs", "file", "sha256", "bytes")}
    return {**entry, "format": "coreml", "spec_version": version, "minimum_os": minimum,
            "weights": check.weight_precision(spec), "inputs": inputs, "outputs": outputs, **extra}


def image_input(size: int, **rule) -> dict:
    return {"name": "image", "type": "image", "color": "RGB", "width": size, "height": size,
            "range": "0..255 pixels (normalisation is inside the model)", **rule}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--only", nargs="*", default=["catface", "catlandmarks", "catbreeds"])
    parser.add_argument("--precision", choices=["float16", "float32"], default="float16")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    entries = []
    if "catface" in args.only:
        model, size = load_checkpoint(CatFaceDetector, args.runs / "detector" / "checkpoint.pt")
        spec = export_catface(model, size, args.precision)
        diff = verify_against_torch("catface", spec, model, size)
        save(spec, args.out / "catface.mlmodel")
        entries.append({**manifest_entry(
            detector_entry(size), spec,
            [image_input(size, resize=f"the whole photo stretched to {size}x{size} (Vision: .scaleFill)"),
             {"name": "iouThreshold", "type": "double", "optional": True, "default": IOU_THRESHOLD},
             {"name": "confidenceThreshold", "type": "double", "optional": True, "default": SCORE_THRESHOLD}],
            [{"name": "confidence", "shape": ["faces", 1], "meaning": "face probability (label \"cat\"), after NMS"},
             {"name": "coordinates", "shape": ["faces", 4],
              "meaning": "x_center, y_center, width, height normalised to the image (0..1), origin top-left; "
                         "Vision's VNRecognizedObjectObservation.boundingBox has its origin bottom-left"}],
            pipeline=["detector (NeuralNetwork, decoding inside)", "NonMaximumSuppression"]),
            **file_facts(args.out / "catface.mlmodel")})
        entries[-1]["postprocess"] |= {"method": "IoU NMS inside the model (not capped: the server keeps the best "
                                                 "max_faces); the containment rule is the app's (Core ML's NMS has "
                                                 "none: drop a face when containment_threshold of the smaller box "
                                                 "lies inside a better face's); multiply by the photo's "
                                                 "width/height and clamp to it. The server also leaves out a "
                                                 "face whose crop the ONNX classifier's cat output calls "
                                                 "not-a-cat; catbreeds.mlmodel has no cat output, so the phone "
                                                 "keeps such faces. The server's second look over tiles (zoom) "
                                                 "is not in the pipeline: an app can run it the same way"}
        print(f"catface: max |numpy(spec) - torch| {diff:.2g}")
    if "catlandmarks" in args.only:
        model, size = load_checkpoint(CatLandmarker, args.runs / "landmarks" / "checkpoint.pt")
        spec = export_landmarks(model, size, args.precision)
        diff = verify_against_torch("catlandmarks", spec, model, size)
        save(spec, args.out / "catlandmarks.mlmodel")
        onnx = landmarks_entry(size)
        entries.append({**manifest_entry(
            onnx, spec, [image_input(size, crop=onnx["inputs"][0]["crop"])],
            [{"name": "landmarks", "shape": [1, 18], "meaning": onnx["outputs"][0]["meaning"] + ", origin top-left"}]),
            **file_facts(args.out / "catlandmarks.mlmodel")})
        print(f"catlandmarks: max |numpy(spec) - torch| {diff:.2g}")
    if "catbreeds" in args.only:
        model, size = load_checkpoint(CatBreedClassifier, args.runs / "breeds" / "checkpoint.pt")
        spec = export_breeds(model, size, args.precision)
        diff = verify_against_torch("catbreeds", spec, model, size)
        save(spec, args.out / "catbreeds.mlmodel")
        d = spec.description
        onnx = breeds_entry(size)
        coreml = {k: v for k, v in onnx.items() if k not in ("cat_threshold", "product_rule")}  # no cat output here
        entries.append({**manifest_entry(
            coreml, spec,
            [image_input(size, resize=onnx["inputs"][0]["resize"], crop=onnx["inputs"][0]["crop"])],
            [{"name": d.predictedFeatureName, "type": "string", "meaning": "the most likely label"},
             {"name": d.predictedProbabilitiesName, "type": "dictionary string -> double",
              "meaning": "probability of each label (softmax)"}]),
            **file_facts(args.out / "catbreeds.mlmodel")})
        print(f"catbreeds: max |numpy(spec) - torch| {diff:.2g}")
    update_manifest(args.out, entries)
    for e in entries:
        print(f"{e['file']}: {e['bytes'] / 1e6:.2f} MB ({e['weights']} weights) sha256 {e['sha256'][:12]}")


if __name__ == "__main__":
    main()
