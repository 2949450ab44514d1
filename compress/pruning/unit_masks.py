"""Masks of whole units (channels, heads) of channel groups: a leaf, used by the structured path and the probe."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from compress.pruning.groups import ChannelGroup
from compress.pruning.masks import Masks


def masks_for(groups: Sequence[ChannelGroup], masks: Masks, kept: dict[str, torch.Tensor]) -> Masks:
    """Copies of ``masks`` (one per member module) with the units not in ``kept[name]`` (a bool per unit)
    zeroed in every member."""
    result: Masks = {name: mask.clone() for name, mask in masks.items()}
    zero_units(groups, result, kept)
    return result


def zero_units(groups: Sequence[ChannelGroup], tensors: Masks, kept: dict[str, torch.Tensor]) -> None:
    """Zero, in place, the units not in ``kept[name]`` of every member's tensor (a mask, or a weight)."""
    for group in groups:
        if group.name not in kept:
            continue
        dead = (~kept[group.name]).nonzero().flatten()
        if not len(dead):
            continue
        for member in group.members:
            tensor = tensors[member.module]
            positions = [p for unit in dead.tolist() for p in member.index[unit]]
            if positions:
                tensor.index_fill_(member.dim, torch.tensor(positions, dtype=torch.long, device=tensor.device), 0)
