"""What every training script shares, written once: the common arguments, the seeded start, a
JSON-lines log that is closed, fine-tuning with a frozen stem, and warm-up + cosine learning rates.

A script reads as:

    parser = loop.arguments(__doc__, out="runs/landmarks", epochs=40)
    args = parser.parse_args(argv)
    rng = loop.start(args)
    model = loop.initialised(CatLandmarker(pretrained_backbone(), INPUT), args.init)
    optimiser, frozen = loop.fine_tuning(model, FROZEN_BLOCKS, LR_HEAD * args.lr_scale, LR_BACKBONE * args.lr_scale)
    schedule = loop.WarmupCosine(optimiser, total_steps, warmup_steps=50)
    with loop.JsonLog(args.out / "log.jsonl") as log:
        for epoch in range(args.epochs):
            loop.train_mode(model, frozen)
            for step in ...:
                schedule.set(step)
                ...
            log.write({"epoch": epoch, "loss": ...})
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import TracebackType

import numpy as np
import torch

from .nets import freeze


def arguments(doc: str | None, out: str, epochs: int) -> argparse.ArgumentParser:
    """The arguments every script takes; a script adds its own before parsing."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--limit", type=int, default=None, help="use only N photos (of each kind): smoke runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, default=None, help="start from this checkpoint (a second, shorter cycle)")
    parser.add_argument("--lr-scale", type=float, default=1.0, help="multiply the learning rates")
    # Off by default: whoever reads a run's log while it trains sees no validation number, so none
    # can sway a choice that validation is meant to report.
    parser.add_argument("--watch-validation", action="store_true",
                        help="also log the validation split's numbers after each epoch (they never pick anything)")
    return parser


def start(args: argparse.Namespace) -> np.random.Generator:
    """Seeds torch, sets its threads, makes the output folder; the numpy generator of the run."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    return rng


def initialised(model: torch.nn.Module, checkpoint: Path | None) -> torch.nn.Module:
    """The model, with the weights of an earlier run's checkpoint when one is given."""
    if checkpoint:
        model.load_state_dict(torch.load(checkpoint, map_location="cpu")["model"])
    return model


def fine_tuning(model: torch.nn.Module, frozen_blocks: int, lr_head: float,
                lr_backbone: float) -> tuple[torch.optim.Optimizer, list[torch.nn.Module]]:
    """AdamW with two learning rates, the head's and the backbone's; the stem and the first
    `frozen_blocks` blocks keep their ImageNet weights (and BN statistics: see train_mode)."""
    backbone = model.backbone
    frozen = [backbone._conv_stem, backbone._bn0, *backbone._blocks[:frozen_blocks]]
    for module in frozen:
        freeze(module)
    backbone_params = [p for p in backbone.parameters() if p.requires_grad]
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    optimiser = torch.optim.AdamW([{"params": head_params, "lr": lr_head},
                                   {"params": backbone_params, "lr": lr_backbone}], weight_decay=1e-4)
    return optimiser, frozen


def train_mode(model: torch.nn.Module, frozen: list[torch.nn.Module], frozen_bn: bool = False) -> None:
    """Training mode, but the frozen layers (and with frozen_bn, every BatchNorm) keep their statistics."""
    model.train()
    for module in frozen:
        module.eval()
    if frozen_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()


class WarmupCosine:
    """Linear warm-up over the first `warmup_steps`, then cosine decay to 0 at `total_steps`,
    applied to each parameter group's starting learning rate."""

    def __init__(self, optimiser: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
        self.optimiser = optimiser
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.base_lrs = [g["lr"] for g in optimiser.param_groups]

    def set(self, step: int) -> None:
        warmup = min(1.0, (step + 1) / self.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * step / self.total_steps))
        for group, lr in zip(self.optimiser.param_groups, self.base_lrs):
            group["lr"] = lr * warmup * cosine


class JsonLog:
    """One JSON line per record, printed and appended to `path` (flushed, and closed on exit)."""

    def __init__(self, path: Path):
        self.file = open(path, "a")

    def write(self, record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def __enter__(self) -> JsonLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.file.close()
