"""Prove the Core ML files right on Linux, where Apple's runtime does not exist.

(Long on purpose: one numpy interpreter of the spec's layers, NMS and pipeline, read top to bottom.)

    python -m training.coreml_check --models models --data ../shared/data

Three parts:
- an interpreter that runs a saved .mlmodel in numpy from its protobuf spec: the image
  preprocessing (colour space, scale, biases), exactly the NeuralNetwork layer types our files
  use (anything else raises, so a new layer type cannot slip through unchecked), the classifier
  output, pipelines, and NonMaximumSuppression re-implemented as documented in its proto;
- the structural rules of Core ML's own validator (PipelineValidator.cpp,
  NonMaximumSuppressionValidator.cpp, Comparison.cpp's isEquivalent) plus a few of ours
  (metadata, Vision's expectations);
- a comparison with onnxruntime on the ONNX files of the same weights, on photos and on random
  pixels: within 1e-4 for float32 weights; for float16 weights within 1e-2 of the ONNX file and
  within 1e-4 of the ONNX graph with its Conv/Gemm weights rounded to float16 (so a changed
  weight cannot hide in the fp16 tolerance).

Computation is float32 with the stored weights (fp16 weights upcast), i.e. Core ML's CPU path.
The GPU and the Neural Engine also round activations to fp16; `--fp16-activations` gives a rough
idea of that extra error (reported, not bounded).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from coremltools.proto import FeatureTypes_pb2, Model_pb2, NeuralNetwork_pb2

# max |Core ML - ONNX| allowed, by stored weight precision. float16 weights carry a relative error
# up to 2^-11; measured on the outputs (probabilities, normalised coordinates): <= 2e-3, so 1e-2
# leaves room for retrained weights. Against the ONNX graph with the same fp16-rounded weights,
# float16 files are held to the float32 bound (measured <= 1e-5).
BOUNDS = {"float32": 1e-4, "float16": 1e-2}
IOS14 = 5  # MLMODEL_SPECIFICATION_VERSION_IOS14: NMS may use FLOAT32 arrays from here on
DOUBLE = FeatureTypes_pb2.ArrayFeatureType.DOUBLE
FLOAT32 = FeatureTypes_pb2.ArrayFeatureType.FLOAT32
RGB, BGR = FeatureTypes_pb2.ImageFeatureType.RGB, FeatureTypes_pb2.ImageFeatureType.BGR
CONVERSION_DATE = "com.github.apple.coremltools.conversion_date"
PREVIEW = "com.apple.coreml.model.preview.type"


def load_spec(path: Path) -> Model_pb2.Model:
    return Model_pb2.Model.FromString(Path(path).read_bytes())


# ---- weights ---------------------------------------------------------------------------------
def weight_array(w: NeuralNetwork_pb2.WeightParams) -> np.ndarray:
    if len(w.floatValue):
        return np.asarray(w.floatValue, np.float32)
    if len(w.float16Value):
        return np.frombuffer(w.float16Value, "<f2").astype(np.float32)
    raise NotImplementedError("only float32 and float16 weights are interpreted (no raw/quantized weights)")


def all_weights(spec: Model_pb2.Model):
    """Every WeightParams of the model and its pipeline stages, with the owning layer."""
    kind = spec.WhichOneof("Type")
    if kind == "pipeline":
        for stage in spec.pipeline.models:
            yield from all_weights(stage)
    elif kind in ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor"):
        for layer in getattr(spec, kind).layers:
            params = getattr(layer, layer.WhichOneof("layer"))
            for f in params.DESCRIPTOR.fields:
                if f.message_type is NeuralNetwork_pb2.WeightParams.DESCRIPTOR and params.HasField(f.name):
                    yield layer, f.name, getattr(params, f.name)


def weight_precision(spec: Model_pb2.Model) -> str:
    return "float16" if any(len(w.float16Value) for _, _, w in all_weights(spec)) else "float32"


# ---- NeuralNetwork layers (the ND semantics of spec v4+; shapes are numpy shapes) -------------
def _round_fp16(x):
    return x.astype(np.float16).astype(np.float32)


def _pads(amounts) -> tuple[int, int, int, int]:
    """BorderAmounts [height, width] -> (top, bottom, left, right)."""
    b = list(amounts.borderAmounts)
    if not b:
        return 0, 0, 0, 0
    return b[0].startEdgeSize, b[0].endEdgeSize, b[1].startEdgeSize, b[1].endEdgeSize


def _conv(p, x):
    if p.isDeconvolution or len(p.outputShape):
        raise NotImplementedError("deconvolution")
    kh, kw = p.kernelSize or (3, 3)
    sh, sw = p.stride or (1, 1)
    dh, dw = p.dilationFactor or (1, 1)
    groups = p.nGroups or 1
    w = weight_array(p.weights).reshape(p.outputChannels, p.kernelChannels, kh, kw)
    n, c = x.shape[:2]
    if c != p.kernelChannels * groups:
        raise ValueError(f"convolution: {c} input channels, weights expect {p.kernelChannels} x {groups} groups")
    if p.WhichOneof("ConvolutionPaddingType") != "valid":
        raise NotImplementedError("convolution with 'same' padding (the converter pads explicitly)")
    top, bottom, left, right = _pads(p.valid.paddingAmounts)
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, p.outputChannels, ho, wo), np.float32)
    depthwise = groups == c == p.outputChannels and p.kernelChannels == 1
    cg, og = c // groups, p.outputChannels // groups
    for i in range(kh):
        for j in range(kw):
            xs = x[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            if depthwise:
                out += xs * w[:, 0, i, j][None, :, None, None]
            else:
                wg = w[:, :, i, j].reshape(groups, og, cg)
                out += (wg @ xs.reshape(n, groups, cg, ho * wo)).reshape(n, p.outputChannels, ho, wo)
    if p.hasBias:
        out += weight_array(p.bias)[None, :, None, None]
    return out


def _activation(p, x):
    kind = p.WhichOneof("NonlinearityType")
    if kind == "linear":
        return p.linear.alpha * x + p.linear.beta
    if kind == "ReLU":
        return np.maximum(x, 0)
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-x))
    raise NotImplementedError(f"activation {kind}")


def _unary(p, x):
    if p.scale == 0:
        raise NotImplementedError("unary with scale 0 (its meaning is not documented)")
    x = p.scale * x + p.shift
    op = NeuralNetwork_pb2.UnaryFunctionLayerParams.Operation.Name(p.type)
    if op == "THRESHOLD":
        return np.maximum(x, p.alpha)
    if op == "EXP":
        return np.exp(x)
    raise NotImplementedError(f"unary {op}")


def _padding(p, x):
    if p.WhichOneof("PaddingType") != "constant":
        raise NotImplementedError("reflection/replication padding")
    top, bottom, left, right = _pads(p.paddingAmounts)
    widths = [(0, 0)] * (x.ndim - 2) + [(top, bottom), (left, right)]
    return np.pad(x, widths, constant_values=p.constant.value)


def _upsample(p, x):
    if p.mode != 0 or len(p.fractionalScalingFactor):
        raise NotImplementedError("only nearest-neighbour upsampling by integer factors")
    fh, fw = p.scalingFactor or (1, 1)
    return x.repeat(fh, axis=-2).repeat(fw, axis=-1)


def _slice(p, x):  # the legacy slice: axis -3/-2/-1, end exclusive, negative = from the end
    axis = {0: -3, 1: -2, 2: -1}[p.axis]
    index = [slice(None)] * x.ndim
    index[axis] = slice(p.startIndex, p.endIndex, p.stride or 1)
    return x[tuple(index)]


def _slice_static(p, x):
    index, squeeze = [], []
    for a in range(x.ndim):
        stride = p.strides[a]
        if stride <= 0:
            raise NotImplementedError("sliceStatic with a non-positive stride")
        begin = None if p.beginMasks[a] else p.beginIds[a]
        end = None if p.endMasks[a] else p.endIds[a]
        index.append(slice(begin, end, stride))
        if len(p.squeezeMasks) and p.squeezeMasks[a]:
            squeeze.append(a)
    out = x[tuple(index)]
    return out.squeeze(tuple(squeeze)) if squeeze else out


def _reduce(fn):
    def run(p, x):
        axes = None if p.reduceAll else tuple(p.axes)
        return fn(x, axis=axes, keepdims=p.keepDims)
    return run


def _softmax_nd(p, x):
    e = np.exp(x - x.max(axis=p.axis, keepdims=True))
    return e / e.sum(axis=p.axis, keepdims=True)


def _inner_product(p, x):
    if p.int8DynamicQuantize:
        raise NotImplementedError("int8 inner product")
    w = weight_array(p.weights).reshape(p.outputChannels, p.inputChannels)
    shape, o = x.shape, p.outputChannels
    if x.ndim <= 2:
        rows, out_shape = (-1, shape[-1]), (*shape[:-1], o)
    elif x.ndim == 3:
        rows, out_shape = (shape[0] * shape[1], shape[2]), (shape[0], shape[1], o)
    elif x.ndim == 4:
        rows, out_shape = (shape[0], -1), (shape[0], o, 1, 1)
    else:
        rows, out_shape = (shape[0] * shape[1], -1), (shape[0], shape[1], o, 1, 1)
    y = x.reshape(rows) @ w.T
    if p.hasBias:
        y = y + weight_array(p.bias)
    return y.reshape(out_shape)


def _concat_nd(p, *xs):
    if p.interleave:
        raise NotImplementedError("interleaved concat")
    return np.concatenate(xs, axis=p.axis)


def _elementwise(reduce_op):
    def run(p, *xs):
        if len(xs) == 1:
            return reduce_op(xs[0], np.float32(p.alpha))
        out = xs[0]
        for other in xs[1:]:
            out = reduce_op(out, other)
        return out
    return run


def _reshape_static(p, x):
    if 0 in p.targetShape:
        raise NotImplementedError("reshapeStatic with a 0 dimension")
    return x.reshape(tuple(p.targetShape))


def _gather(p, x, indices):
    idx = indices.astype(np.int64)
    if not np.array_equal(idx, indices):
        raise ValueError("gather indices are not integers")
    return np.take(x, idx, axis=p.axis)


LAYERS = {
    "convolution": lambda p, x: _conv(p, x),
    "activation": lambda p, x: _activation(p, x),
    "unary": lambda p, x: _unary(p, x),
    "clip": lambda p, x: np.clip(x, p.minVal, p.maxVal),
    "padding": lambda p, x: _padding(p, x),
    "add": _elementwise(np.add),
    "multiply": _elementwise(np.multiply),
    "multiplyBroadcastable": lambda p, a, b: a * b,
    "upsample": lambda p, x: _upsample(p, x),
    "reshapeStatic": lambda p, x: _reshape_static(p, x),
    "transpose": lambda p, x: x.transpose(tuple(p.axes)),
    "expandDims": lambda p, x: np.expand_dims(x, tuple(p.axes)),
    "slice": lambda p, x: _slice(p, x),
    "sliceStatic": lambda p, x: _slice_static(p, x),
    "concatND": _concat_nd,
    "stack": lambda p, *xs: np.stack(xs, axis=p.axis),
    "reduceSum": _reduce(np.sum),
    "reduceMean": _reduce(np.mean),
    "softmaxND": lambda p, x: _softmax_nd(p, x),
    "reverse": lambda p, x: np.flip(x, axis=tuple(a for a, r in enumerate(p.reverseDim) if r)),
    "gather": lambda p, x, i: _gather(p, x, i),
    "innerProduct": lambda p, x: _inner_product(p, x),
    "loadConstantND": lambda p: weight_array(p.data).reshape(tuple(p.shape)),
}


# ---- models ----------------------------------------------------------------------------------
def image_tensor(pixels: np.ndarray, image_type, scaler) -> np.ndarray:
    """What Core ML makes of an RGB pixel buffer (H, W, 3, 0..255): a (1, 3, H, W) tensor in the
    declared colour space, times channelScale, plus each colour's bias."""
    pixels = np.asarray(pixels)
    if pixels.shape != (image_type.height, image_type.width, 3):
        raise ValueError(f"image of shape {pixels.shape}, the model wants {image_type.height}x{image_type.width} RGB")
    if image_type.colorSpace not in (RGB, BGR):
        raise NotImplementedError("only RGB and BGR image inputs")
    chw = pixels.astype(np.float32).transpose(2, 0, 1)
    biases = np.array([scaler.redBias, scaler.greenBias, scaler.blueBias] if scaler else [0, 0, 0], np.float32)
    if image_type.colorSpace == BGR:
        chw, biases = chw[::-1], biases[::-1]
    scale = scaler.channelScale if scaler else 1.0
    if scale == 0:
        raise NotImplementedError("channelScale 0 (unset): its meaning is not documented")
    return (chw * np.float32(scale) + biases[:, None, None])[None]


def run_neural_network(spec, features: dict, fp16_activations: bool = False) -> dict:
    kind = spec.WhichOneof("Type")
    nn = getattr(spec, kind)
    if nn.arrayInputShapeMapping != 1 or nn.imageInputShapeMapping != 1:
        raise NotImplementedError("only the ND shape mappings (EXACT_ARRAY_MAPPING, RANK4_IMAGE_MAPPING)")
    scalers = {p.featureName: p for p in nn.preprocessing}
    image_inputs = [i.name for i in spec.description.input if i.type.WhichOneof("Type") == "imageType"]
    if "" in scalers and len(image_inputs) == 1:  # an unnamed preprocessor serves the only image input
        scalers[image_inputs[0]] = scalers.pop("")
    blobs = {}
    for inp in spec.description.input:
        if inp.type.WhichOneof("Type") == "imageType":
            pre = scalers.get(inp.name)
            if pre is not None and pre.WhichOneof("preprocessor") != "scaler":
                raise NotImplementedError("mean-image preprocessing")
            blobs[inp.name] = image_tensor(features[inp.name], inp.type.imageType, pre.scaler if pre else None)
        else:
            blobs[inp.name] = np.asarray(features[inp.name], np.float32)
    for layer in nn.layers:
        kind_of_layer = layer.WhichOneof("layer")
        if kind_of_layer not in LAYERS:
            raise NotImplementedError(f"layer type {kind_of_layer} ({layer.name})")
        if len(layer.output) != 1:
            raise NotImplementedError(f"layer {layer.name} with {len(layer.output)} outputs")
        out = LAYERS[kind_of_layer](getattr(layer, kind_of_layer), *[blobs[i] for i in layer.input])
        out = np.asarray(out, np.float32)
        blobs[layer.output[0]] = _round_fp16(out) if fp16_activations else out
    result = {}
    for out in spec.description.output:  # a declared fixed shape must be what the graph computes
        shape = list(out.type.multiArrayType.shape) if out.type.WhichOneof("Type") == "multiArrayType" else []
        if shape and out.name in blobs and list(blobs[out.name].shape) != shape:
            raise ValueError(f"output '{out.name}' is declared {shape} but computes {list(blobs[out.name].shape)}")
    if kind == "neuralNetworkClassifier":
        labels = list(getattr(nn, nn.WhichOneof("ClassLabels")).vector)
        probs = blobs[nn.labelProbabilityLayerName or nn.layers[-1].output[0]].reshape(-1)
        if len(probs) != len(labels):
            raise ValueError(f"{len(probs)} probabilities for {len(labels)} labels")
        result[spec.description.predictedFeatureName] = labels[int(np.argmax(probs))]
        result[spec.description.predictedProbabilitiesName] = dict(zip(labels, probs.astype(float)))
    for out in spec.description.output:
        if out.name not in result:
            result[out.name] = blobs[out.name]
    return result


def _iou_centre(box, boxes):
    """IoU of one (x_center, y_center, w, h) box with many."""
    lo = np.maximum(box[:2] - box[2:] / 2, boxes[:, :2] - boxes[:, 2:] / 2)
    hi = np.minimum(box[:2] + box[2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2)
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    union = np.prod(box[2:]) + np.prod(boxes[:, 2:], axis=1) - inter
    return inter / np.maximum(union, 1e-12)


def run_nms(spec, features: dict) -> dict:
    """NonMaximumSuppression as its proto documents it: drop rows under the confidence threshold,
    sort by confidence (the row's max, or per class with perClass), keep the best and suppress
    rows whose IoU with it exceeds the IoU threshold."""
    p = spec.nonMaximumSuppression
    confidence = np.asarray(features[p.confidenceInputFeatureName], np.float64)
    coordinates = np.asarray(features[p.coordinatesInputFeatureName], np.float64)
    # optional inputs override the stored thresholds
    iou_t = float(features.get(p.iouThresholdInputFeatureName or None, p.iouThreshold))
    conf_t = float(features.get(p.confidenceThresholdInputFeatureName or None, p.confidenceThreshold))
    best = confidence.max(axis=1)
    label = confidence.argmax(axis=1)
    order = [int(i) for i in np.argsort(-best, kind="stable") if best[i] >= conf_t]
    keep = []
    while order:
        top, rest = order[0], np.array(order[1:], int)
        keep.append(top)
        if rest.size == 0:
            break
        overlap = _iou_centre(coordinates[top], coordinates[rest]) > iou_t
        if p.pickTop.perClass:
            overlap &= label[rest] == label[top]
        order = [int(i) for i in rest[~overlap]]
    return {p.confidenceOutputFeatureName: confidence[keep], p.coordinatesOutputFeatureName: coordinates[keep]}


def predict(spec, features: dict, fp16_activations: bool = False, trace: dict | None = None) -> dict:
    """Run a model spec on named inputs (image inputs as (H, W, 3) RGB arrays 0..255). For a
    pipeline, `trace` (a dict) receives every stage's outputs too."""
    kind = spec.WhichOneof("Type")
    if kind == "pipeline":
        values = dict(features)
        for stage in spec.pipeline.models:
            values.update(predict(stage, {i.name: values[i.name] for i in stage.description.input if i.name in values},
                                  fp16_activations))
        if trace is not None:
            trace.update(values)
        return {o.name: values[o.name] for o in spec.description.output}
    if kind in ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor"):
        return run_neural_network(spec, features, fp16_activations)
    if kind == "nonMaximumSuppression":
        return run_nms(spec, features)
    raise NotImplementedError(f"model type {kind}")


# ---- structural rules ------------------------------------------------------------------------
def _type_text(feature) -> str:
    t = feature.type
    kind = t.WhichOneof("Type")
    if kind == "multiArrayType":
        m = t.multiArrayType
        shape = list(m.shape) if m.WhichOneof("ShapeFlexibility") is None else \
            [(r.lowerBound, r.upperBound) for r in m.shapeRange.sizeRanges]
        return f"MultiArray<{FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(m.dataType)}>{shape}"
    if kind == "imageType":
        i = t.imageType
        return f"Image<{FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(i.colorSpace)}>{i.width}x{i.height}"
    return kind


def _rank(m) -> int:
    flex = m.WhichOneof("ShapeFlexibility")
    if flex == "enumeratedShapes":
        return len(m.enumeratedShapes.shapes[0].shape)
    if flex == "shapeRange":
        return len(m.shapeRange.sizeRanges)
    return len(m.shape)


def equivalent(a, b) -> bool:
    """Comparison.cpp isEquivalent: same name and type (array: data type, rank, and the
    dimensions when neither is flexible; image: size and colour space). Optionality is ignored."""
    if a.name != b.name or a.type.WhichOneof("Type") != b.type.WhichOneof("Type"):
        return False
    kind = a.type.WhichOneof("Type")
    if kind == "multiArrayType":
        x, y = a.type.multiArrayType, b.type.multiArrayType
        if x.dataType != y.dataType or _rank(x) != _rank(y):
            return False
        if x.WhichOneof("ShapeFlexibility") is None and y.WhichOneof("ShapeFlexibility") is None:
            return list(x.shape) == list(y.shape)
        return True
    if kind == "imageType":
        x, y = a.type.imageType, b.type.imageType
        return (x.width, x.height, x.colorSpace) == (y.width, y.height, y.colorSpace)
    if kind == "dictionaryType":
        return a.type.dictionaryType.WhichOneof("KeyType") == b.type.dictionaryType.WhichOneof("KeyType")
    return True


def pipeline_problems(spec) -> list[str]:
    """PipelineValidator.cpp: every stage input comes from the pipeline's inputs or an earlier
    stage's outputs with an equivalent type; every pipeline output is produced with its type."""
    stages = spec.pipeline.models
    if not stages:
        return ["pipeline: no models"]
    problems = []
    table = {i.name: i for i in spec.description.input}
    for n, stage in enumerate(stages):
        for arg in stage.description.input:
            if arg.name not in table:
                problems.append(f"pipeline stage {n}: input '{arg.name}' is not a pipeline input or an earlier output")
            elif not equivalent(arg, table[arg.name]):
                problems.append(f"pipeline stage {n}: input '{arg.name}' is {_type_text(arg)} but "
                                f"{_type_text(table[arg.name])} is provided")
        problems += [f"pipeline stage {n}: {p}" for p in structural_problems(stage, top=False)]
        if stage.specificationVersion > spec.specificationVersion:  # ours: an older OS would accept the file
            problems.append(f"pipeline stage {n} needs spec version {stage.specificationVersion}, "
                            f"the pipeline declares {spec.specificationVersion}")
        table.update({o.name: o for o in stage.description.output})
    for out in spec.description.output:
        if out.name not in table:
            problems.append(f"pipeline output '{out.name}' is not produced by any stage")
        elif not equivalent(out, table[out.name]):
            problems.append(f"pipeline output '{out.name}' is {_type_text(out)} but the stage gives "
                            f"{_type_text(table[out.name])}")
    if len(spec.pipeline.names) and (len(spec.pipeline.names) != len(stages)
                                     or len(set(spec.pipeline.names)) != len(stages)):
        problems.append("pipeline: stage names must be unique, one per stage")
    return problems


def nms_problems(spec) -> list[str]:
    """NonMaximumSuppressionValidator.cpp."""
    p = spec.nonMaximumSuppression
    d = spec.description
    problems = []
    wanted_in = {p.confidenceInputFeatureName, p.coordinatesInputFeatureName,
                 p.iouThresholdInputFeatureName, p.confidenceThresholdInputFeatureName} - {""}
    ins, outs = {i.name: i for i in d.input}, {o.name: o for o in d.output}
    problems += [f"NMS: input '{n}' is not one of its feature names" for n in ins if n not in wanted_in]
    problems += [f"NMS: output '{n}' is not one of its feature names" for n in outs
                 if n not in (p.confidenceOutputFeatureName, p.coordinatesOutputFeatureName)]
    for name in (p.confidenceInputFeatureName, p.coordinatesInputFeatureName):
        if name not in ins:
            problems.append(f"NMS: input '{name}' missing")
        elif ins[name].type.WhichOneof("Type") != "multiArrayType":
            problems.append(f"NMS: input '{name}' must be a MultiArray")
    for name in (p.iouThresholdInputFeatureName, p.confidenceThresholdInputFeatureName):
        if name and name in ins and ins[name].type.WhichOneof("Type") != "doubleType":
            problems.append(f"NMS: threshold input '{name}' must be a Double")
    for name in (p.confidenceOutputFeatureName, p.coordinatesOutputFeatureName):
        if name not in outs:
            problems.append(f"NMS: output '{name}' missing")
        elif outs[name].type.WhichOneof("Type") != "multiArrayType":
            problems.append(f"NMS: output '{name}' must be a MultiArray")
    if not 0.0 <= p.iouThreshold <= 1.0:
        problems.append("NMS: iouThreshold must lie in [0, 1]")
    if not p.confidenceThreshold >= 0.0:
        problems.append("NMS: confidenceThreshold must be non-negative")
    if problems:
        return problems
    arrays = [ins[p.confidenceInputFeatureName], outs[p.confidenceOutputFeatureName],
              ins[p.coordinatesInputFeatureName], outs[p.coordinatesOutputFeatureName]]
    types = {a.type.multiArrayType.dataType for a in arrays}
    if len(types) != 1:
        problems.append("NMS: confidence and coordinates, in and out, must share one element type, got "
                        + ", ".join(_type_text(a) for a in arrays))
    elif spec.specificationVersion >= IOS14 and types - {DOUBLE, FLOAT32}:
        problems.append("NMS: confidence and coordinates must be DOUBLE or FLOAT32")
    elif spec.specificationVersion < IOS14 and types != {DOUBLE}:
        problems.append(f"NMS: spec version {spec.specificationVersion} < {IOS14} needs DOUBLE arrays, "
                        f"got {_type_text(arrays[0])}")
    conf_out, coord_out = outs[p.confidenceOutputFeatureName].type.multiArrayType, \
        outs[p.coordinatesOutputFeatureName].type.multiArrayType

    def how(m):  # "unspecified" | "shape" | "range" | "enumerated" | "bad"
        flex, fixed = m.WhichOneof("ShapeFlexibility"), len(m.shape)
        if flex is None:
            return {0: "unspecified", 2: "shape"}.get(fixed, "bad")
        if fixed or _rank(m) != 2:
            return "bad"
        return "range" if flex == "shapeRange" else "enumerated"
    def rows(m):
        return m.shapeRange.sizeRanges[0].lowerBound, m.shapeRange.sizeRanges[0].upperBound
    a, b = how(conf_out), how(coord_out)
    if "bad" in (a, b):
        problems.append("NMS: an output shape must be unspecified or 2-D (shape or shapeRange)")
    elif "unspecified" not in (a, b) and a != b:
        problems.append("NMS: confidence and coordinates mix shape and shapeRange")
    elif "enumerated" in (a, b):
        problems.append("NMS: output shape flexibility must be a range")
    elif a == b == "shape" and conf_out.shape[0] != coord_out.shape[0]:
        problems.append("NMS: confidence and coordinates outputs differ along dimension 0")
    elif a == b == "range" and rows(conf_out) != rows(coord_out):
        problems.append("NMS: confidence and coordinates output ranges differ along dimension 0")
    labels = len(getattr(p, p.WhichOneof("ClassLabels")).vector) if p.WhichOneof("ClassLabels") else 0
    if labels and a == "shape" and conf_out.shape[1] != labels:
        problems.append(f"NMS: {labels} class labels but confidence has {conf_out.shape[1]} columns")
    if labels and a == "range":
        r = conf_out.shapeRange.sizeRanges[1]
        if labels < r.lowerBound or (r.upperBound >= 0 and labels > r.upperBound):
            problems.append(f"NMS: {labels} class labels outside the confidence column range")
    return problems


def neural_network_problems(spec) -> list[str]:
    """Wiring and weight sizes of a NeuralNetwork: what the interpreter relies on, and what Core
    ML's layer validator rejects (weights/bias of mixed precision, wrong element counts)."""
    kind = spec.WhichOneof("Type")
    nn = getattr(spec, kind)
    problems = []
    defined = {i.name for i in spec.description.input}
    images = {i.name for i in spec.description.input if i.type.WhichOneof("Type") == "imageType"}
    for pre in nn.preprocessing:
        if pre.featureName not in images and not (pre.featureName == "" and len(images) == 1):
            problems.append(f"preprocessing for '{pre.featureName}', which is not an image input")
    for layer in nn.layers:
        kind_of_layer = layer.WhichOneof("layer")
        for i in layer.input:
            if i not in defined:
                problems.append(f"layer {layer.name}: input '{i}' used before it is produced")
        defined.update(layer.output)
        p = getattr(layer, kind_of_layer)
        expected = {}
        if kind_of_layer == "convolution":
            expected = {"weights": p.outputChannels * p.kernelChannels * int(np.prod(p.kernelSize)),
                        "bias": p.outputChannels if p.hasBias else None}
        elif kind_of_layer == "innerProduct":
            expected = {"weights": p.outputChannels * p.inputChannels, "bias": p.outputChannels if p.hasBias else None}
        elif kind_of_layer == "loadConstantND":
            expected = {"data": int(np.prod(p.shape))}
        precisions = set()
        for name, count in expected.items():
            if count is None:
                continue
            w = getattr(p, name)
            got = len(w.floatValue) or len(w.float16Value) // 2
            precisions.add("fp16" if len(w.float16Value) else "fp32")
            if got != count:
                problems.append(f"layer {layer.name}: {name} holds {got} values, {count} expected")
        if kind_of_layer in ("convolution", "innerProduct") and len(precisions) > 1:
            problems.append(f"layer {layer.name}: weights and bias must have the same precision")
    for out in spec.description.output:
        if kind == "neuralNetworkClassifier" and out.name in (spec.description.predictedFeatureName,
                                                             spec.description.predictedProbabilitiesName):
            continue
        if out.name not in defined:
            problems.append(f"output '{out.name}' is not produced by any layer")
    if kind == "neuralNetworkClassifier":
        d = spec.description
        outs = {o.name: o for o in d.output}
        label_kind = nn.WhichOneof("ClassLabels")
        if label_kind is None or not len(getattr(nn, label_kind).vector):
            problems.append("classifier without class labels")
        want_label = "stringType" if label_kind == "stringClassLabels" else "int64Type"
        want_key = "stringKeyType" if label_kind == "stringClassLabels" else "int64KeyType"
        if d.predictedFeatureName not in outs or outs[d.predictedFeatureName].type.WhichOneof("Type") != want_label:
            problems.append(f"classifier: output '{d.predictedFeatureName}' must be {want_label}")
        probs = outs.get(d.predictedProbabilitiesName)
        if probs is None or probs.type.WhichOneof("Type") != "dictionaryType" or \
                probs.type.dictionaryType.WhichOneof("KeyType") != want_key:
            problems.append(f"classifier: output '{d.predictedProbabilitiesName}' must be a dictionary "
                            "keyed like the labels")
        if nn.labelProbabilityLayerName and nn.labelProbabilityLayerName not in defined:
            problems.append(f"classifier: probability layer '{nn.labelProbabilityLayerName}' does not exist")
    return problems


def structural_problems(spec, top: bool = True) -> list[str]:
    """All rule violations of a model (empty list: it passes). `top` adds the metadata rules
    that only the shipped file, not a pipeline stage, must meet."""
    kind = spec.WhichOneof("Type")
    problems = []
    d = spec.description
    if not len(d.input) or not len(d.output):
        problems.append("a model needs inputs and outputs")
    for f in list(d.input) + list(d.output):
        t = f.type.WhichOneof("Type")
        if t is None:
            problems.append(f"feature '{f.name}' has no type")
        elif t == "imageType" and (f.type.imageType.width <= 0 or f.type.imageType.height <= 0):
            problems.append(f"image '{f.name}' needs a fixed size")
    if kind == "pipeline":
        problems += pipeline_problems(spec)
    elif kind == "nonMaximumSuppression":
        problems += nms_problems(spec)
    elif kind in ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor"):
        problems += neural_network_problems(spec)
    else:
        problems.append(f"model type {kind} is not expected in catface files")
    if top:
        problems += metadata_problems(spec)
    return problems


def metadata_problems(spec) -> list[str]:
    """Ours: what an app developer sees in Xcode, and nothing that changes between exports."""
    m = spec.description.metadata
    problems = [f"metadata: {name} is empty" for name in ("author", "license", "versionString", "shortDescription")
                if not getattr(m, name)]
    problems += [f"feature '{f.name}' has no description" for f in list(spec.description.input) +
                 list(spec.description.output) if not f.shortDescription]
    for part in [spec] + list(spec.pipeline.models):
        if CONVERSION_DATE in part.description.metadata.userDefined:
            problems.append("metadata: a conversion date makes re-exports differ")
    for f in spec.description.input:
        if f.type.WhichOneof("Type") == "imageType" and f.type.imageType.colorSpace != RGB:
            problems.append(f"image input '{f.name}' is not RGB: the nets were trained on RGB")
    if spec.WhichOneof("Type") == "pipeline":
        problems += vision_detector_problems(spec)
    return problems


def vision_detector_problems(spec) -> list[str]:
    """Ours: what Vision needs to hand out VNRecognizedObjectObservation: a last NMS stage whose
    outputs are the pipeline's `confidence` (N x classes) and `coordinates` (N x 4)."""
    last = spec.pipeline.models[-1]
    if last.WhichOneof("Type") != "nonMaximumSuppression":
        return ["Vision: the pipeline must end with NonMaximumSuppression"]
    p = last.nonMaximumSuppression
    problems = []
    names = {o.name for o in spec.description.output}
    if {p.confidenceOutputFeatureName, p.coordinatesOutputFeatureName} != names or \
            names != {"confidence", "coordinates"}:
        problems.append("Vision: pipeline outputs must be exactly NMS's 'confidence' and 'coordinates', "
                        f"got {sorted(names)}")
    ins = {i.name: i.type.multiArrayType for i in last.description.input}
    coords = ins.get(p.coordinatesInputFeatureName)
    conf = ins.get(p.confidenceInputFeatureName)
    labels = list(getattr(p, p.WhichOneof("ClassLabels")).vector) if p.WhichOneof("ClassLabels") else []
    if coords is None or list(coords.shape)[1:] != [4]:
        problems.append("Vision: NMS coordinates input must be N x 4")
    if conf is None or list(conf.shape)[1:] != [len(labels)] or not labels:
        problems.append("Vision: NMS confidence input must be N x (number of class labels)")
    if coords is not None and conf is not None and list(coords.shape)[:1] != list(conf.shape)[:1]:
        problems.append("Vision: NMS confidence and coordinates inputs need the same number of rows")
    return problems


# ---- comparison with ONNX --------------------------------------------------------------------
@dataclass
class Report:
    model: str
    reference: str
    bound: float
    diffs: dict = field(default_factory=dict)  # what -> max abs difference
    notes: list = field(default_factory=list)  # hard failures (label or face count mismatch)
    problems: list = field(default_factory=list)  # structural

    def add(self, what: str, image: str, diff: float) -> None:
        """Keep the max per output and per kind of input (photos / random pixels)."""
        key = f"{what}, {'random' if image.startswith('random') else 'photos'}"
        self.diffs[key] = max(self.diffs.get(key, 0.0), float(diff))

    @property
    def worst(self) -> float:
        return max(self.diffs.values(), default=0.0)

    @property
    def ok(self) -> bool:
        return bool(self.diffs) and self.worst < self.bound and not self.notes and not self.problems

    def text(self) -> str:
        lines = [f"{self.model} vs {self.reference} (bound {self.bound:g}): {'OK' if self.ok else 'FAILED'}"]
        lines += [f"  max abs diff {what:<36} {d:.3g}" for what, d in sorted(self.diffs.items())]
        lines += [f"  ! {n}" for n in self.notes] + [f"  structural: {p}" for p in self.problems]
        return "\n".join(lines)


def onnx_session(path: Path, fp16_weights: bool = False):
    """An onnxruntime session (one thread); with fp16_weights, every Conv/Gemm weight and bias
    rounded to float16 first: what a float16 .mlmodel must compute to float32 accuracy."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(path))
    if fp16_weights:
        inits = {i.name: i for i in model.graph.initializer}
        alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
        names = {n.input[k] for n in model.graph.node if n.op_type in ("Conv", "Gemm")
                 for k in (1, 2) if len(n.input) > k and n.input[k]}
        for name in names:
            while name in alias:
                name = alias[name]
            if name not in inits:
                raise ValueError(f"{path.name}: Conv/Gemm parameter {name} is computed, not stored")
            value = numpy_helper.to_array(inits[name])
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float16).astype(np.float32), name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def references(path: Path, spec) -> dict[str, tuple]:
    """Reference name -> (ONNX session, bound) for a Core ML spec: the ONNX file itself, and for
    float16 weights also the ONNX file with its weights rounded the same way."""
    precision = weight_precision(spec)
    refs = {"onnx": (onnx_session(path), BOUNDS[precision])}
    if precision == "float16":
        refs["onnx with fp16-rounded weights"] = (onnx_session(path, fp16_weights=True), BOUNDS["float32"])
    return refs


def image_input(spec):
    """(name, (height, width)) of the model's image input."""
    for i in spec.description.input:
        if i.type.WhichOneof("Type") == "imageType":
            return i.name, (i.type.imageType.height, i.type.imageType.width)
    raise ValueError("no image input")


def _onnx_run(session, pixels: np.ndarray) -> list[np.ndarray]:
    return session.run(None, {session.get_inputs()[0].name: pixels.astype(np.float32).transpose(2, 0, 1)[None]})


def compare(name: str, spec, refs: dict[str, tuple], images: list[tuple[str, np.ndarray]],
            fp16_activations: bool = False) -> list[Report]:
    """Run the Core ML spec (numpy) and each ONNX reference on the same (H, W, 3) uint8 RGB
    images; one report per reference. `name`: catface (pipeline), catlandmarks or catbreeds."""
    if name not in PHOTOS:
        raise ValueError(f"unknown model {name}")
    problems = structural_problems(spec)
    reports = {ref: Report(name, ref, bound, problems=list(problems)) for ref, (_, bound) in refs.items()}
    feature, _ = image_input(spec)
    for label, pixels in images:
        if name == "catface":
            raw = {}
            final = predict(spec, {feature: pixels}, fp16_activations, trace=raw)
            for ref, (session, _) in refs.items():
                compare_detector(reports[ref], spec, session, label, pixels, raw, final)
            continue
        got = predict(spec, {feature: pixels}, fp16_activations)
        for ref, (session, _) in refs.items():
            want = _onnx_run(session, pixels)[0]  # catbreeds: probabilities first (then its cat output)
            report = reports[ref]
            if name == "catlandmarks":
                (out,) = got.values()
                report.add("landmarks", label, np.abs(out.reshape(want.shape) - want).max())
                continue
            labels = list(spec.neuralNetworkClassifier.stringClassLabels.vector)
            probs = np.array([got[spec.description.predictedProbabilitiesName][k] for k in labels])
            report.add("probabilities", label, np.abs(probs - want[0]).max())
            top2 = np.sort(want[0])[-2:]
            best = labels[int(np.argmax(want[0]))]
            if got[spec.description.predictedFeatureName] != best and top2[1] - top2[0] > 2 * report.bound:
                report.notes.append(f"{label}: classLabel {got[spec.description.predictedFeatureName]} != ONNX {best}")
    return list(reports.values())


def compare_detector(report: Report, spec, session, label, pixels, raw: dict, final: dict) -> None:
    """The NN stage against ONNX (scores; boxes as centre/size), then the whole pipeline against
    the server's own NMS of the ONNX outputs (same faces, same coordinates)."""
    from service.detection import nms as server_nms

    scores, boxes = (o[0] for o in _onnx_run(session, pixels))
    centre = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    nms = spec.pipeline.models[-1].nonMaximumSuppression
    report.add("scores (NN stage)", label, np.abs(raw[nms.confidenceInputFeatureName][:, 0] - scores).max())
    report.add("coordinates (NN stage)", label, np.abs(raw[nms.coordinatesInputFeatureName] - centre).max())
    # service.detection.select_faces without its clipping, face cap and containment rule (Core ML's
    # NMS has none of them: the manifest leaves them to the app)
    candidates = np.nonzero(scores >= nms.confidenceThreshold)[0]
    kept = candidates[server_nms(boxes[candidates], scores[candidates], nms.iouThreshold, containment=np.inf)]
    if len(final["coordinates"]) != len(kept):
        # a score within the bound of the threshold may fall either side; anything else is a failure
        if np.abs(scores - nms.confidenceThreshold).min() > report.bound:
            report.notes.append(f"{label}: {len(final['coordinates'])} faces, ONNX + server NMS {len(kept)}")
        return
    if len(kept):
        report.add("confidence (after NMS)", label, np.abs(final["confidence"][:, 0] - scores[kept]).max())
        report.add("coordinates (after NMS)", label, np.abs(final["coordinates"] - centre[kept]).max())


# ---- CLI -------------------------------------------------------------------------------------
PHOTOS = {  # per model: real photos from the shared data folder (detector/landmarks: cat faces)
    "catface": ["crawford/CAT_01/00000138_000.jpg", "crawford/CAT_01/00000177_013.jpg",
                "crawford/CAT_01/00000102_003.jpg", "negatives/dogs/dog.10.jpg"],
    "catlandmarks": ["crawford/CAT_01/00000251_007.jpg", "crawford/CAT_01/00000105_005.jpg"],
    "catbreeds": ["oxford-iiit-pet/images/Sphynx_107.jpg", "oxford-iiit-pet/images/Bombay_104.jpg",
                  "oxford-iiit-pet/images/Siamese_108.jpg"],
}


def model_pixels(image, size: tuple[int, int], face_points: np.ndarray | None = None) -> np.ndarray:
    """A PIL RGB photo as the server feeds it, (H, W, 3) uint8: stretched to the input, or, given
    a face's landmarks (9, 2), the landmarker's square crop around their box."""
    from PIL import Image

    from service import geometry

    from .train_landmarks import CROP_SCALE

    if face_points is not None:
        box = np.concatenate([face_points.min(0), face_points.max(0)])
        image = geometry.warp(image, geometry.square_crop_matrix(box, size[0], CROP_SCALE), (size[1], size[0]))
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(image, np.uint8)


def photo_pixels(path: Path, size: tuple[int, int], crop_face: bool = False) -> np.ndarray:
    """A photo file as model input; crop_face uses its Crawford labels (PHOTO.cat)."""
    from PIL import Image

    with Image.open(path) as image:
        points = None
        if crop_face:
            points = np.array(Path(str(path) + ".cat").read_text().split()[1:19], float).reshape(9, 2)
        return model_pixels(image.convert("RGB"), size, points)


def random_pixels(size: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def check(models: Path, data: Path | None, randoms: int = 2, names=tuple(PHOTOS),
          fp16_activations: bool = False) -> list[Report]:
    reports = []
    for name in names:
        spec = load_spec(models / f"{name}.mlmodel")
        _, size = image_input(spec)
        images = [(f"random {s}", random_pixels(size, s)) for s in range(randoms)]
        if data is not None:
            images += [(p, photo_pixels(data / p, size, crop_face=name == "catlandmarks"))
                       for p in PHOTOS[name] if (data / p).exists()]
        reports += compare(name, spec, references(models / f"{name}.onnx", spec), images, fp16_activations)
    return reports


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--data", type=Path, default=None, help="the shared data folder (real photos)")
    parser.add_argument("--random", type=int, default=2, help="random-pixel inputs per model")
    parser.add_argument("--only", nargs="*", default=list(PHOTOS))
    parser.add_argument("--fp16-activations", action="store_true",
                        help="instead, round every layer's output to fp16: a rough estimate of GPU/Neural "
                             "Engine error (not what the bounds are for)")
    args = parser.parse_args(argv)
    reports = check(args.models, args.data, args.random, args.only, args.fp16_activations)
    for r in reports:
        if args.fp16_activations:
            r.bound = float("inf")
        print(r.text())
    if args.fp16_activations:
        print("every activation rounded to fp16: an estimate for the GPU/Neural Engine, the bounds do not apply")
        return 1 if any(r.problems for r in reports) else 0
    print(json.dumps([{"model": r.model, "reference": r.reference, "ok": r.ok, "max_abs_diff": r.worst,
                       "bound": r.bound} for r in reports]))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
