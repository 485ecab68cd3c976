"""A uniform weight soup: the average of the weights of runs fine-tuned from the same start.

Runs that fine-tune the same blocks from the same pretrained weights and the same seeded head stay
close enough in weight space that their average is one working network, often better than either,
at the cost and size of one (Wortsman et al., "Model soups", 2022). Floating-point tensors are
averaged (BN running statistics included); integer buffers (BN's batch counter) come from the first.

    python -m training.soup runs/breeds-base/checkpoint.pt runs/breeds-mixup/checkpoint.pt \
        --out runs/breeds-soup/checkpoint.pt
"""
import argparse
from pathlib import Path

import torch

PROVENANCE = ("epoch", "soup", "folded_from")  # checkpoint keys that say where it came from
# Lowest cosine similarity between two runs' copies of one weight matrix for them to soup. Measured
# (2026-12-04): fine-tunes from one start, and runs from one seeded head, >= 0.95 in every matrix;
# runs whose heads had their own seeds ~0 in the head, and their soup was no working network.
ALIGNED = 0.5


def soup(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of state dicts of one architecture, started from the same weights."""
    first = states[0]
    if any(s.keys() != first.keys() for s in states[1:]):
        raise ValueError("the checkpoints hold different networks")
    for k, v in first.items():
        if v.is_floating_point() and v.dim() >= 2:
            for s in states[1:]:
                cosine = float(torch.nn.functional.cosine_similarity(v.flatten(), s[k].flatten(), dim=0))
                if cosine < ALIGNED:
                    raise ValueError(f"{k}: the runs' weights point apart (cosine {cosine:.2f}); runs that did not "
                                     "start from the same weights (and seeded head) do not soup")
    return {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v.clone()
            for k, v in first.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+", help="train_* checkpoint.pt files")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    loaded = [torch.load(p, map_location="cpu") for p in args.checkpoints]
    # What describes the network (input size, backbone name...) must agree where two checkpoints
    # both say it; where a checkpoint came from (its epoch, its file, its soup) may differ.
    extras = [{k: v for k, v in c.items() if k not in ("model", *PROVENANCE)} for c in loaded]
    if any(e[k] != f[k] for e in extras for f in extras for k in e.keys() & f.keys()):
        raise ValueError(f"the checkpoints describe different networks: {extras}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    described = {k: v for e in reversed(extras) for k, v in e.items()}
    torch.save({**described, "model": soup([c["model"] for c in loaded]),
                "soup": [str(p) for p in args.checkpoints]}, args.out)
    print(f"{args.out}: the average of {len(loaded)} checkpoints", flush=True)


if __name__ == "__main__":
    main()
