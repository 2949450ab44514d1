"""Masks at initialization (``lottery.strategy: at_init``): a scorer's scores -> masks at a density. Pure.

The density of each pruned layer (or pool of layers, under global scope) is what ``rounds`` steps of
the recipe's rates would leave: ``(1 - rate) ** level``. ``random_erk`` keeps the same total but spreads
it by Erdos-Renyi-Kernel densities. Scoring: ``compress.pruning.scorers``; installing: ``apply``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.pruning.masks import PRUNING_METHODS, Masks
from compress.pruning.scorers import (
    SCORERS,
    Batch,
    check_scores,
    erk_densities,
    masks_from_scores,
    synflow_masks,
)
from compress.registry import init_only


def keep_counts(masks: Masks, rates: dict[str, float], groups: dict[str, str]) -> dict[str, int]:
    """Entries kept per group when ``rates[name]`` of each target's current survivors go (rounded per pool)."""
    keep: dict[str, float] = {}
    for name, rate in rates.items():
        keep[groups[name]] = keep.get(groups[name], 0.0) + int(masks[name].bool().sum()) * (1 - rate)
    return {group: round(value) for group, value in keep.items()}


def check_init_granularity(method: str, granularity: str, invert: bool = False) -> None:
    """Scorers of single weights (and the inversion ablation) have no channel form: one line refusing it."""
    if granularity != "weight" and (init_only(method) or invert):
        what = "invert" if invert else repr(method)
        raise UserError(f"{what} ranks single weights; granularity {granularity!r} is defined for magnitude "
                        "and random only")


def init_masks(model: nn.Module, names: Sequence[str], masks: Masks, method: str, rates: dict[str, float],
               groups: dict[str, str], *, granularity: str = "weight", batches: Iterable[Batch] | None = None,
               generator: torch.Generator | None = None, invert: bool = False,
               channel_multiple: int = 1) -> Masks:
    """The masks ``method`` gives ``model`` as it is (its initialization), pruning ``rates[name]`` of each
    target's survivors in ``masks``; ``invert``: keep the lowest-scored instead (Frankle et al. 2021)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if granularity != "weight":
        check_init_granularity(method, granularity, invert)
        from compress.pruning.apply import effective_weights

        return PRUNING_METHODS.get(method)(effective_weights(model, list(names)), masks, rates, groups=groups,
                                           granularity=granularity, generator=gen,
                                           **({"channel_multiple": channel_multiple} if channel_multiple > 1 else {}))
    found = list(batches or [])
    if method == "random_erk":
        shapes = {name: tuple(masks[name].shape) for name in rates}
        kept = sum(keep_counts(masks, rates, {name: name for name in rates}).values())
        densities = erk_densities(shapes, kept)
        groups = {name: name for name in rates}
        keep = {name: round(densities[name] * masks[name].numel()) for name in rates}
    else:
        keep = keep_counts(masks, rates, groups)
    if method == "synflow":
        return synflow_masks(model, list(rates), masks, keep, groups, found, invert=invert)
    scores = SCORERS.get(method)(model, list(rates), masks, found, gen)
    if method != "random_erk":
        check_scores(method, scores, masks)
    return masks_from_scores(scores, masks, keep, groups, invert=invert)
