"""What both callbacks share: the search, and the global step <-> (level, step) arithmetic."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from compress.errors import UserError

if TYPE_CHECKING:
    from compress.lottery import LotterySearch
    from compress.recipe.schema import Recipe


def checked_steps(recipe: Recipe, iterations: int | None, entry_point: str) -> int:
    """A callback's steps per level, after refusing / warning about the recipe's keys for ``entry_point``
    (``compress/recipe/support.py``): done at construction, before a Trainer is set up."""
    from compress.recipe.support import enforce, steps_per_level

    steps = steps_per_level(recipe, iterations)
    enforce(recipe, entry_point)
    return steps


def rounds_of(recipe: Recipe) -> int:
    """Pruning rounds after the dense level (one-shot prunes once)."""
    lottery = recipe.lottery
    return 1 if lottery.one_shot and lottery.rounds else lottery.rounds


def level_spans(iterations: int, rewind_to: int, rounds: int) -> list[tuple[int, int]]:
    """``(first, last)`` 0-based batch indices of each level: level 0 trains 0..iterations-1, every later
    level resumes at the rewind point, rewind_to..iterations-1 (the schedule and data order with it)."""
    if not 0 <= rewind_to < iterations:
        raise UserError(f"lottery.rewind_to={rewind_to} must lie in [0, iterations={iterations})")
    return [(0, iterations - 1)] + [(rewind_to, iterations - 1)] * rounds


def total_steps(iterations: int, rewind_to: int, rounds: int) -> int:
    """Optimizer steps of the whole search: what ``max_steps`` of a Trainer must be."""
    return iterations + rounds * (iterations - rewind_to)


def locate(global_step: int, iterations: int, rewind_to: int, rounds: int) -> tuple[int, int]:
    """``(level, steps done within the level)`` after ``global_step`` optimizer steps of the search."""
    if global_step < iterations:
        return 0, global_step
    level, into = divmod(global_step - iterations, iterations - rewind_to)
    if level >= rounds:
        return rounds, iterations
    return level + 1, rewind_to + into


def steps_done(search: LotterySearch) -> int:
    """Optimizer steps the search has counted, over all its levels (the inverse of ``locate`` when every level
    runs its full length; a level that ``lottery.early_bird`` ended early counts up to its stop step)."""

    def length(level: int) -> int:
        end = search.early_bird_steps.get(level) or search.iterations
        return end - (0 if level == 0 else search.rewind_to)

    if search.done:
        return sum(length(level) for level in range(search.rounds + 1))
    return sum(length(level) for level in range(search.level)) + search.step_count - search.start_step


def refuse_replay_with_early_bird(recipe: Recipe) -> None:
    """``ticket.batches()`` replays levels of a length fixed in advance; an early-bird level ends when its
    masks converge, after a trainer has already fetched the next batch."""
    if recipe.lottery.early_bird.every:
        raise UserError("ticket.batches() replays levels of fixed length; lottery.early_bird ends them early: "
                        "use ticket.sampler(len(dataset), batch_size) or a DataLoader of your own")


def make_search(model: nn.Module, recipe: Recipe, where: Callable[[str], str] | None = None,
                iterations: int | None = None, score_batches: Any = None) -> LotterySearch:
    """``score_batches``: (inputs, labels) batches for ``lottery.strategy: at_init`` scorers that read data."""
    from compress.lottery import LotterySearch

    search = LotterySearch(model, recipe, where, iterations=iterations, entry_point=None)
    if score_batches is not None:
        search.score_at_init(score_batches)
    return search


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (a torch optimizer as is)."""
    return getattr(optimizer, "optimizer", optimizer)


def unwrap_scheduler(scheduler: Any) -> Any:
    """The torch LR scheduler inside accelerate's ``AcceleratedScheduler`` (a torch scheduler as is)."""
    return getattr(scheduler, "scheduler", scheduler)
