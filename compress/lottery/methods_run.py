"""The run-dir side of early-bird tickets and the invert control (``LotteryRun`` calls these)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from compress import distributed, paths
from compress.io import save_torch
from compress.lottery.strategies import EarlyBird, at_init_masks
from compress.pruning import Masks
from compress.pruning.scorers import masks_from_scores

# a LotteryRun (not imported: runner.py imports this module)
LotteryRun = Any


def early_bird_hooks(run: LotteryRun, folder: Path, inner: Callable | None) -> tuple[Callable, dict]:
    """``on_step`` plus ``run_experiment`` hooks for a ticket round with ``lottery.early_bird``.

    Every ``every`` steps the search draws the next level's masks from the weights being trained; when the
    draws converge, the draw and its step go to ``early_bird.pt`` and the next round starts from them. The
    round itself trains to the end, so every round's accuracy is a full training's (comparable with IMP);
    the compute to a ticket counts the earlier rounds only up to their early-bird step (summary.py). The
    draws so far go into the training checkpoint, so a resumed round converges at the same step.
    """
    bird = EarlyBird(run.recipe.lottery.early_bird)

    def on_step(iteration: int, model: torch.nn.Module) -> None:
        if inner is not None:
            inner(iteration, model)
        if bird.due(iteration) and bird.check(iteration, run.search.next_masks()) and distributed.is_main():
            save_torch({"step": iteration, "masks": {k: v.cpu() for k, v in (bird.masks or {}).items()}},
                       folder / paths.EARLY_BIRD)

    def put(state: dict) -> None:
        bird.load_state_dict(state, run.device)

    return on_step, {"extra_state": (bird.state_dict, put),
                     "extra_result": lambda: {"early_bird_step": bird.stop_step,
                                              "early_bird_distances": [list(d) for d in bird.distances]}}


def inverted_masks(run: LotteryRun, round_index: int, masks: Masks) -> Masks:
    """The invert control's masks: the round's counts per pool, the lowest-scored weights kept (at_init: the
    scorer's scores of the init; imp: the previous round's trained magnitudes among its survivors)."""
    if run.recipe.lottery.strategy == "at_init":
        return at_init_masks(run.search, round_index, invert=True)
    previous = paths.round_dir(run.run_dir, round_index - 1)
    trained = run._load(previous / paths.FINAL)
    names = run.search.names
    before = {name: trained[f"{name}.weight_mask" if name else "weight_mask"] for name in names}
    scores = {name: (trained[f"{name}.weight_orig" if name else "weight_orig"] * before[name]).abs() for name in names}
    groups = {target.name: target.group for target in run.search.targets}
    keep: dict[str, int] = {}
    for name in names:
        keep[groups[name]] = keep.get(groups[name], 0) + int(masks[name].bool().sum())
    return masks_from_scores(scores, before, keep, groups, invert=True)
