"""A trainable catface, catlandmarks or catbreeds checkpoint rebuilt from a shipped float ONNX
file, for a run (or an export) that must start from the shipped weights when their training
checkpoint is gone.

    python -m training.from_onnx --onnx models/catface.onnx --out runs/detector-2.0.0/checkpoint.pt
    python -m training.from_onnx --model catlandmarks --onnx models/catlandmarks.onnx \
        --out runs/landmarks-1.0.0/checkpoint.pt
    python -m training.from_onnx --model catbreeds --onnx models/catbreeds.onnx \
        --out runs/breeds/checkpoint.pt

The exporter folded every BatchNorm into the convolution before it, so the ONNX file holds no
BN statistics. Each folded convolution gets the folded weight, and its BN becomes "add the folded
bias" (weight 1, mean 0, variance 1 - eps). Train such a model with its BN layers in eval mode
(train_detector / train_landmarks --freeze-bn): batch statistics would undo the folding. The rebuilt net is
checked against onnxruntime on random photos before it is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

from service.contract import BREED_INPUT, DETECTOR_INPUT, LANDMARK_INPUT

from .export import MIRROR, assert_same_outputs
from .nets import BN_EPS, CatBreedClassifier, CatFaceDetector, CatLandmarker, EfficientNetLite0


def convs_in_order(model: nn.Module, size: int) -> list[nn.Conv2d]:
    """The model's convolutions in the order a forward pass first runs them (the ONNX graph's order)."""
    order: list[nn.Conv2d] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod) if mod not in order else None)
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return order


def batch_norm_after(model: nn.Module) -> dict[nn.Conv2d, nn.BatchNorm2d]:
    """Each convolution whose next sibling module is a BatchNorm (how nets.py builds them)."""
    pairs = {}
    for parent in model.modules():
        children = list(parent.children())
        for a, b in zip(children, children[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                pairs[a] = b
    return pairs


def load_folded(model: nn.Module, path: Path, size: int) -> nn.Module:
    graph = onnx.load(path).graph
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    named = dict(model.named_parameters())
    # (a graph that also runs the mirrored crop reads each folded weight a second time through an
    # Identity node: only the convolutions reading the stored weights count)
    folded_nodes = [n for n in graph.node if n.op_type == "Conv" and n.input[1] in weights and n.input[1] not in named]
    bn = batch_norm_after(model)
    folded_convs = [c for c in convs_in_order(model, size) if c in bn]
    if len(folded_nodes) != len(folded_convs):
        raise ValueError(f"{len(folded_nodes)} folded convolutions in {path}, {len(folded_convs)} in the net")
    with torch.no_grad():
        for name, p in named.items():  # the convolutions without BN kept their names
            if name in weights:
                p.copy_(weights[name])
        for node, conv in zip(folded_nodes, folded_convs):
            w, b = weights[node.input[1]], weights[node.input[2]]
            if w.shape != conv.weight.shape:
                raise ValueError(f"{node.name}: {tuple(w.shape)} in the file, {tuple(conv.weight.shape)} in the net")
            conv.weight.copy_(w)
            norm = bn[conv]
            norm.weight.fill_(1.0)
            norm.bias.copy_(b)
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - BN_EPS)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["catface", "catlandmarks", "catbreeds"], default="catface")
    parser.add_argument("--backbone", default="lite2", help="catbreeds' backbone (lite0 for catbreeds 1.x)")
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                        help="whether the file averages each input with its mirror (default: as export.MIRROR "
                             "says today; catbreeds up to 2.1.0 and catlandmarks up to 1.0.0 did: --mirror)")
    parser.add_argument("--onnx", type=Path, default=Path("models/catface.onnx"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    mirror = MIRROR[args.model] if args.mirror is None else args.mirror
    extra = {}
    # Layers the file does not hold (the backbone's unused ImageNet head) start alike in every
    # rebuild, so that rebuilt networks soup (training.soup checks that the runs' weights align).
    torch.manual_seed(0)
    if args.model == "catface":
        size, model = DETECTOR_INPUT, CatFaceDetector(EfficientNetLite0("lite0"), DETECTOR_INPUT)
    elif args.model == "catlandmarks":
        size, model = LANDMARK_INPUT, CatLandmarker(EfficientNetLite0("lite0"), LANDMARK_INPUT)
        model.flip_average = mirror  # as exported (compared so; the checkpoint holds weights only)
    else:
        size, model = BREED_INPUT, CatBreedClassifier(EfficientNetLite0(args.backbone))
        model.flip_average = mirror
        extra = {"backbone": args.backbone}
    model = load_folded(model, args.onnx, size).eval()
    photos = np.random.default_rng(0).uniform(0, 255, (2, 3, size, size)).astype(np.float32)
    # (noise photos: float sums in another order move boxes by < 0.3 px)
    assert_same_outputs(model, args.onnx, torch.from_numpy(photos), atol=1e-3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "input": size, "folded_from": str(args.onnx), **extra}, args.out)
    print(f"wrote {args.out}: matches {args.onnx} (every output within 1e-3)")


if __name__ == "__main__":
    main()
