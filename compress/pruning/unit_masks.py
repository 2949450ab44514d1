"""Masks of whole units (channels, heads) of channel groups: a leaf, used by the structured path and the probe."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from compress.pruning.groups import ChannelGroup
from compress.pruning.masks import Masks


def masks_for(groups: Sequence[ChannelGroup], masks: Masks, kept: dict[str, torch.Tensor]) -> Masks:
    """``masks`` (every member module; missing ones start all-ones) with the units not in ``kept[name]``
    (a bool per unit) zeroed in every member."""
    result: Masks = {name: mask.clone() for name, mask in masks.items()}
    for group in groups:
        if group.name not in kept:
            continue
        dead = (~kept[group.name]).nonzero().flatten()
        if not len(dead):
            continue
        for member in group.members:
            mask = result[member.module]
            positions = [p for unit in dead.tolist() for p in member.index[unit]]
            if positions:
                mask.index_fill_(member.dim, torch.tensor(positions, dtype=torch.long, device=mask.device), 0)
    return result
