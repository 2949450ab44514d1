"""What ``lottery.strategy`` / ``retrain`` / ``early_bird`` change in the search, beside its IMP core.

- ``at_init``: each level's mask is scored at the rewind point (the initialization by default) by
  ``prune.method`` at that level's density; levels are independent trainings of those masks.
- ``early_bird`` (You et al. 2020): every ``every`` steps, draw the mask the next prune would give; when the
  normalised Hamming distance between consecutive draws stays below ``distance`` for ``patience`` draws,
  the level's mask has converged (its step is the level's early-bird step).
- ``finetune`` (Renda et al. 2020): the same steps at the schedule's final learning rate.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from typing import Any

import torch

from compress.errors import UserError
from compress.lottery.planning import one_shot_rates
from compress.pruning import EffectiveWeights, Masks, apply_masks, load_plain_state_dict
from compress.pruning.at_init import check_init_granularity, init_masks
from compress.pruning.score_inputs import Batch, scorer_batches
from compress.pruning.scorers import NEEDS_DATA
from compress.recipe.schema import EarlyBirdConfig, ScheduleConfig, TrainConfig

# a LotterySearch (not imported: search.py imports this module)
LotterySearch = Any


def at_init_masks(search: LotterySearch, level: int, invert: bool = False) -> Masks:
    """Masks of ``level`` under ``lottery.strategy: at_init``: ``prune.method``'s scores of the rewind point
    (dense) at density ``(1 - rate)^level``; the same whatever the search has trained since. Pure."""
    if search.rewind_state is None:
        raise UserError("at_init: no initialization recorded (search.snapshot() before scoring)")
    if search.prune_config.method in NEEDS_DATA and not search.score_batches:
        raise UserError(f"prune.method {search.prune_config.method!r} scores with data: call "
                        "search.score_at_init(batches) with a few (inputs, labels) batches first")
    dense = {name: torch.ones_like(mask) for name, mask in search.masks.items()}
    init = copy.deepcopy(search.model)  # the scorers get a dense model at the init; the search's is untouched
    apply_masks(init, dense)
    load_plain_state_dict(init, search.rewind_state)
    generator = torch.Generator().manual_seed(search.seed * 1000 + level)
    steps = search.total_rounds if search.one_shot else level  # one_shot: the one level is the final density
    if search.structure is not None:
        # channels coupled across layers (residual adds, depthwise convs): the group plan IMP's steps use,
        # one step from dense to this level's density, on the initialization's weights
        check_init_granularity(search.prune_config.method, search.prune_config.granularity, invert)
        return search.structure.step(EffectiveWeights(init, search.names), dense,
                                     one_shot_rates(search.structure.rates, steps),
                                     method=search.prune_config.method, generator=generator)
    multiple = search._multiple.get("channel_multiple", 1)
    rates = one_shot_rates({target.name: target.rate for target in search.targets}, steps)
    return init_masks(init, search.names, dense, search.prune_config.method, rates,
                      {t.name: t.group for t in search.targets}, granularity=search.prune_config.granularity,
                      batches=search.score_batches, generator=generator, invert=invert, channel_multiple=multiple)


def device_batches(batches: Iterable[Any], device: torch.device) -> list[Batch]:
    """The scorer's batches as a list of ``(inputs, labels)`` on ``device``, so scores never cross devices;
    a Hugging Face mapping batch becomes ``({keyword inputs}, labels)``."""
    found = scorer_batches(batches, device)
    if not found:
        raise UserError("score_at_init(batches): no batches given")
    return found


def mask_distance(a: Masks, b: Masks) -> float:
    """Normalised Hamming distance: the fraction of mask entries that differ (You et al. 2020)."""
    differing = sum(int((a[name] != b[name]).sum()) for name in a)
    return differing / max(1, sum(mask.numel() for mask in a.values()))


class EarlyBird:
    """Consecutive mask draws of one level and when they converged; ``state_dict`` for checkpoints."""

    def __init__(self, config: EarlyBirdConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.previous: Masks | None = None
        self.below = 0
        self.stop_step: int | None = None
        self.masks: Masks | None = None  # the draw that converged: the next level's masks
        self.distances: list[tuple[int, float]] = []

    def due(self, step: int) -> bool:
        return self.config.every > 0 and self.stop_step is None and step % self.config.every == 0

    def check(self, step: int, draw: Masks) -> bool:
        """Record a draw at ``step``; True when this draw ends the search of the level."""
        if self.previous is not None:
            distance = mask_distance(self.previous, draw)
            self.distances.append((step, distance))
            self.below = self.below + 1 if distance < self.config.distance else 0
        self.previous = {name: mask.detach().clone() for name, mask in draw.items()}
        if self.below >= self.config.patience:
            self.stop_step, self.masks = step, self.previous
            return True
        return False

    def state_dict(self) -> dict:
        def cpu(masks: Masks | None) -> dict | None:
            return None if masks is None else {name: mask.cpu() for name, mask in masks.items()}

        return {"previous": cpu(self.previous), "below": self.below, "stop_step": self.stop_step,
                "masks": cpu(self.masks), "distances": [list(item) for item in self.distances]}

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        def placed(masks: dict | None) -> Masks | None:
            return None if masks is None else {name: mask.to(device) for name, mask in masks.items()}

        self.previous, self.masks = placed(state["previous"]), placed(state["masks"])
        self.below, self.stop_step = int(state["below"]), state["stop_step"]
        self.distances = [(int(step), float(distance)) for step, distance in state.get("distances", [])]


def finetune_config(train: TrainConfig) -> TrainConfig:
    """``lottery.retrain: finetune``: the schedule's last learning rate, constant, for the same steps."""
    from compress.training.optim import lr_factor

    final = train.optimizer.lr * lr_factor(train.schedule, train.iterations, train.iterations - 1)
    return dataclasses.replace(train, optimizer=dataclasses.replace(train.optimizer, lr=final),
                               schedule=ScheduleConfig(name="constant"))


def remember_for_invert(search: LotterySearch) -> None:
    """Before a prune: keep the scores IMP ranks by (|trained weights| among the survivors) and the masks,
    so the ``invert`` control of the next level can keep the lowest instead (only when it is asked for)."""
    if search.strategy == "imp" and "invert" in search.recipe.lottery.controls:
        from compress.pruning import effective_weights

        masks = {name: mask.detach().clone() for name, mask in search.masks.items()}
        search._invert_scores = (masks, {name: weight.abs() for name, weight in
                                         effective_weights(search.model, search.names).items()})


def own_inverted_masks(search: LotterySearch, masks: Masks) -> Masks:
    """The invert control's masks in an own loop: the level's counts per pool, the lowest-scored kept."""
    if search.strategy == "at_init":
        return at_init_masks(search, search.level, invert=True)
    saved = getattr(search, "_invert_scores", None)
    if saved is None:
        raise UserError("the invert control needs the scores of the last prune: it is available right after "
                        "prune_and_rewind() / the level change, in the process that pruned")
    from compress.pruning.scorers import masks_from_scores

    before, scores = saved
    groups = {target.name: target.group for target in search.targets}
    keep: dict[str, int] = {}
    for name in search.names:
        keep[groups[name]] = keep.get(groups[name], 0) + int(masks[name].bool().sum())
    return masks_from_scores(scores, before, keep, groups, invert=True)
