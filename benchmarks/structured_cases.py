"""Compacted structured tickets for ``test_structured_inference.py``: which, how built, the goal.

A ticket: a randomly initialised model (seed 0), one-shot structured magnitude masks from
``compress.pruning.structured.prune_channels`` (whole channels / hidden units / heads of every channel
group of the graph, Torch-Pruning's dependency groups), then ``compress.pruning.compact.graph.compact_model``
(dead units physically removed, exact). Only which units are gone matters for speed, not what the weights
learned. Each model has an aligned (``channel_multiple`` = 16, what ``auto`` gives on this AVX-512 CPU) and
an unaligned (1) ticket at about 50 % and about 25 % of the dense MACs; the amounts below were found by
bisection on the compacted MAC count at 224x224 (``find_amount``) and are fixed here so every run times
the same tickets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from compress.models import create_model
from compress.pruning.macs import count_macs

RESULTS = Path(os.environ.get("COMPRESS_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
STEM = "structured_inference"
# (batch, input side): batch 1 at the timm models' native 224; batch 64 at 112, because one dense call of
# resnet18 at 224 x 64 took 11 s on one loaded core of this machine (2.8 s at 112)
SHAPES = ((1, 224), (64, 112))
ALIGNED = 16  # prune.channel_multiple: auto on this CPU (AVX-512: onnxruntime's NCHWc block is 16)
# the bar: at batch 64, an aligned compacted ticket with at most half the MACs runs at least
# GOAL_K / macs_remaining times as fast as the dense model, i.e. speedup x macs_remaining >= GOAL_K
GOAL_K = 0.7
GOAL_BATCH = 64
GOAL_MAX_MACS = 0.5
GOAL_MODELS = ("timm/resnet18", "timm/mobilenetv3_small_100", "timm/convnext_atto", "conv4")
VIT = "timm/vit_tiny_patch16_224"


@dataclass(frozen=True)
class Ticket:
    """``amount``: fraction of each group's units pruned (``prune_channels``), ``multiple`` its
    ``channel_multiple``; ``target``: the MACs fraction it was chosen for (None: a channel fraction)."""

    model: str
    amount: float
    multiple: int
    target: float | None
    native: int | None = None  # input side of a CIFAR-shaped model (no 224 / 112)
    kwargs: dict = field(default_factory=dict, hash=False)

    @property
    def label(self) -> str:
        what = f"~{self.target:.0%} MACs" if self.target is not None else f"{1 - self.amount:.0%} channels"
        return f"{self.model.removeprefix('timm/')} {what} {'aligned' if self.multiple > 1 else 'unaligned'}"

    @property
    def aligned(self) -> bool:
        return self.multiple > 1


# (model, target MACs) -> (amount aligned, amount unaligned); found with find_amount at 224 (6 bisection
# steps on [0, 0.95]): close to the target where the widths allow it -- convnext_atto's and the ViT's residual
# streams sit behind LayerNorm and are never pruned (compress.pruning.groups), so only their MLP hidden
# units (and the ViT's heads) shrink
AMOUNTS = {
    ("timm/resnet18", 0.5): (0.3266, 0.2969),
    ("timm/resnet18", 0.25): (0.5344, 0.5195),
    ("timm/mobilenetv3_small_100", 0.5): (0.4156, 0.3414),
    ("timm/mobilenetv3_small_100", 0.25): (0.7273, 0.5641),
    ("timm/convnext_atto", 0.5): (0.5641, 0.5641),
    ("timm/convnext_atto", 0.25): (0.8609, 0.8461),
    (VIT, 0.5): (0.5047, 0.5047),
    (VIT, 0.25): (0.8313, 0.8165),
}
TIMM_MODELS = ("timm/resnet18", "timm/mobilenetv3_small_100", "timm/convnext_atto", VIT)


def tickets() -> list[Ticket]:
    out = []
    for model in TIMM_MODELS:
        for target in (0.5, 0.25):
            aligned, unaligned = AMOUNTS[(model, target)]
            out += [Ticket(model, aligned, ALIGNED, target), Ticket(model, unaligned, 1, target)]
    # Conv-4 at 30 % of its channels: 19/19/38/38 conv, 77/77 FC unaligned (today's 0.36 / MACs at batch 64);
    # aligned to the nearest multiple of 16: 16/16/32/32, 80/80
    out += [Ticket("conv4", 0.7, ALIGNED, None, native=32), Ticket("conv4", 0.7, 1, None, native=32)]
    return out


def models() -> list[str]:
    return list(dict.fromkeys(t.model for t in tickets()))


def shapes_for(model: str) -> tuple[tuple[int, int], ...]:
    """(batch, input side) pairs timed for ``model``."""
    native = next((t.native for t in tickets() if t.model == model and t.native), None)
    return tuple((batch, native) for batch, _ in SHAPES) if native else SHAPES


def make_model(model: str, side: int) -> nn.Module:
    """The dense model, seed 0; the ViT built for ``side`` (its position embedding is per grid)."""
    torch.manual_seed(0)
    if model == "conv4":
        return create_model("conv4", num_classes=10).eval()
    kwargs = {"img_size": side} if model == VIT else {}
    return create_model(model, num_classes=1000, **kwargs).eval()


def prune(model: nn.Module, example: torch.Tensor, amount: float, multiple: int, groups=None) -> nn.Module:
    """Structured magnitude masks on ``model`` (in place): ``amount`` of every group's units, widths a
    multiple of ``multiple`` (attention heads of 64 channels step one head at a time)."""
    from compress.pruning.structured import prune_channels

    prune_channels(model, example, amount, channel_multiple=multiple, groups=groups)
    return model


def widths(model: nn.Module) -> list[int]:
    """Output channels / features of every Conv2d and Linear, in order."""
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def off_block(model: nn.Module, block: int = ALIGNED) -> float:
    """Fraction of the Conv2d/Linear output widths that are not multiples of ``block``."""
    row = widths(model)
    return sum(w % block != 0 for w in row) / max(1, len(row))


def build(ticket: Ticket, side: int) -> tuple[nn.Module, nn.Module, dict]:
    """(dense model, compacted ticket, facts) at input side ``side``; MACs counted on both (count_macs)."""
    from compress.pruning.compact.graph import compact_model

    example = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    dense = make_model(ticket.model, side)
    masked = prune(make_model(ticket.model, side), example, ticket.amount, ticket.multiple)
    compacted = compact_model(masked, example)
    dense_macs, macs = count_macs(dense, example), count_macs(compacted, example)
    params = sum(p.numel() for p in compacted.parameters()) / sum(p.numel() for p in dense.parameters())
    return dense, compacted, {"macs_remaining": macs / dense_macs, "dense_macs": dense_macs, "macs": macs,
                              "params_remaining": params, "widths": widths(compacted),
                              "off_block": off_block(compacted)}


def find_amount(model: str, target: float, multiple: int, side: int = 224, steps: int = 6) -> tuple[float, float]:
    """(amount, macs_remaining) whose compacted MACs come closest to ``target`` in ``steps`` bisection steps."""
    from compress.pruning.compact.graph import compact_model
    from compress.pruning.groups import find_groups

    example = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    dense = make_model(model, side)
    groups, dense_macs = list(find_groups(dense, example)), count_macs(dense, example)
    low, high, best = 0.0, 0.95, (0.0, 1.0)
    for _ in range(steps):
        amount = round((low + high) / 2, 4)
        masked = prune(make_model(model, side), example, amount, multiple, groups)
        macs = count_macs(compact_model(masked, example), example) / dense_macs
        if abs(macs - target) < abs(best[1] - target):
            best = (amount, macs)
        low, high = (amount, high) if macs > target else (low, amount)
    return best
