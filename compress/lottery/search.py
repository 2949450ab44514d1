"""Iterative magnitude pruning with rewinding, driven by any training loop (the user's or ours).

    search = compress.LotterySearch(model, recipe)
    for level in search.levels():            # level 0 is dense; one level per pruning round after it
        optimizer = make_optimizer(model)    # fresh optimizer state every level (see below)
        for i, batch in enumerate(my_batches, start=1):
            ...                              # the user's own step
            search.step(i)                   # snapshots the rewind point when i == rewind_to
        search.prune_and_rewind()

Optimizer state on rewind: ``rewind()`` restores weights, biases and BatchNorm buffers only. The
optimizer's per-parameter state (Adam moments, momentum) belongs to the trajectory being thrown
away, so a level must start with fresh state: build a new optimizer, or call
``reset_optimizer(opt)``. Parameters keep their identity (``weight_orig``) across levels, so an
optimizer or a DistributedDataParallel wrapper built once stays attached to the right tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.pruning import (
    Masks,
    apply_masks,
    build_plan,
    check_shrinks,
    effective_weights,
    get_masks,
    load_plain_state_dict,
    magnitude_masks,
    ones_masks,
    plain_state_dict,
    random_step_masks,
    sparsity_report,
)

if TYPE_CHECKING:
    from compress.recipe.schema import Recipe


def one_shot_rates(rates: dict[str, float], rounds: int) -> dict[str, float]:
    """The single-step rate reaching what ``rounds`` iterative steps would: 1 - (1 - p)^rounds."""
    return {name: 1 - (1 - rate) ** rounds for name, rate in rates.items()}


class LotterySearch:
    """Masks installed with torch.nn.utils.prune, a rewind snapshot, and the IMP schedule of levels."""

    def __init__(self, model: nn.Module, recipe: Recipe, where: Callable[[str], str] | None = None) -> None:
        self.model = model
        self.prune_config = recipe.prune
        self.rounds = 1 if recipe.lottery.one_shot and recipe.lottery.rounds else recipe.lottery.rounds
        self.total_rounds = recipe.lottery.rounds
        self.rewind_to = recipe.lottery.rewind_to
        self.one_shot = recipe.lottery.one_shot
        self.seed = recipe.seed
        self.targets = build_plan(model, recipe.prune, where)
        if not self.targets:
            raise UserError("prune: no module is pruned (every rate is 0 or every module excluded)")
        self.names = [target.name for target in self.targets]
        # Install the reparametrisation now, with all-ones masks, so parameters never change identity.
        apply_masks(model, ones_masks(model, self.names))
        self.level = 0
        self.rewind_state: dict[str, torch.Tensor] | None = None
        if self.rewind_to == 0:
            self.snapshot()

    # -- the rewind point ---------------------------------------------------------------------------
    def snapshot(self) -> None:
        """Record the current weights, biases and buffers (BatchNorm statistics) as the rewind point."""
        self.rewind_state = plain_state_dict(self.model)

    def step(self, iteration: int) -> None:
        """Call after each optimizer step of level 0 with the 1-based step count."""
        if self.level == 0 and iteration == self.rewind_to and self.rewind_state is None:
            self.snapshot()

    def rewind(self) -> None:
        """Survivors go back to the snapshot bit for bit; masks stay."""
        if self.rewind_state is None:
            raise UserError(f"no rewind snapshot: call step(i) during level 0 (rewind_to={self.rewind_to})")
        load_plain_state_dict(self.model, self.rewind_state)

    @staticmethod
    def reset_optimizer(optimizer: torch.optim.Optimizer) -> None:
        """Forget per-parameter state (Adam moments, momentum buffers) before a new level."""
        optimizer.state.clear()

    # -- pruning ------------------------------------------------------------------------------------
    @property
    def masks(self) -> Masks:
        return get_masks(self.model)

    def rates(self) -> dict[str, float]:
        rates = {target.name: target.rate for target in self.targets}
        return one_shot_rates(rates, self.total_rounds) if self.one_shot else rates

    def next_masks(self) -> Masks:
        """Masks for the next level from the current (trained) weights; pure, nothing is applied."""
        current = {name: mask for name, mask in self.masks.items() if name in self.names}
        if self.prune_config.method == "random":
            generator = torch.Generator().manual_seed(self.seed * 1000 + self.level)
            new = random_step_masks(current, self.rates(), generator)
        else:
            new = magnitude_masks(effective_weights(self.model, self.names), current, self.rates(),
                                  {t.name: t.group for t in self.targets}, self.prune_config.granularity)
        check_shrinks(current, new)
        return new

    def masks_after(self, level: int, trained_state: dict[str, torch.Tensor]) -> Masks:
        """The masks of level ``level + 1`` from level ``level``'s trained state dict (masks included).

        For a driver that keeps each level's weights in files (the CLI runner): the search's model takes
        that state and the search stands at ``level``, as if it had just trained it.
        """
        self.model.load_state_dict(trained_state)
        self.level = level
        return self.next_masks()

    def prune(self, masks: Masks | None = None) -> Masks:
        masks = self.next_masks() if masks is None else masks
        apply_masks(self.model, masks)
        return masks

    def levels(self) -> Iterator[int]:
        """Yields 0 (dense) .. rounds; the caller trains, then calls ``prune_and_rewind``."""
        while self.level <= self.rounds:
            yield self.level
            self.level += 1

    def prune_and_rewind(self) -> bool:
        """Prune the trained model and rewind it for the next level; False after the last level."""
        if self.level >= self.rounds:
            return False
        self.prune()
        self.rewind()
        return True

    def report(self) -> dict:
        return sparsity_report(self.model, self.names)
