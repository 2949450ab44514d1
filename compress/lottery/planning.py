"""What a search will prune, before any training: the structured plan of a recipe and the ``--dry-run`` rows.

Shared by ``LotterySearch`` (which prunes by it) and ``compress.lottery.dry_run`` (which prints it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.pruning import is_pruned, plain_state_bytes
from compress.pruning.plan import LayerPlan
from compress.pruning.structured import StructuredPlan, channel_plan, check_group_method

if TYPE_CHECKING:
    from compress.recipe.schema import Recipe


def recipe_example_input(recipe: Recipe) -> torch.Tensor:
    """A seeded batch of 2 inputs shaped like the recipe's data (for tracing channel groups)."""
    from compress.data import dataset_info

    info = dataset_info(recipe.data.name)
    side = recipe.data.image_size or info.image_size or 32
    return torch.randn(2, info.in_channels or 3, side, side, generator=torch.Generator().manual_seed(0))


def makes_graph_plan(model: nn.Module, recipe: Recipe) -> bool:
    """Whether ``structured_plan`` traces ``model``: channel granularity on a graph that is not an nn.Sequential."""
    return recipe.prune.granularity == "channel" and not isinstance(model, nn.Sequential)


def structured_plan(model: nn.Module, recipe: Recipe, where: Callable[[str], str] | None = None,
                    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None) -> StructuredPlan | None:
    """The channel groups plan when ``prune.granularity`` is channel and the model is not an
    ``nn.Sequential`` (those keep per-layer output channels, compacted by ``compress.pruning.compact``),
    traced with ``example_inputs`` (default: a batch shaped like the recipe's data)."""
    if not makes_graph_plan(model, recipe):
        return None
    check_group_method(recipe.prune.method)  # before any training: refused, never turned into magnitude
    inputs = recipe_example_input(recipe) if example_inputs is None else example_inputs
    plan = channel_plan(model, recipe.prune, inputs, where)
    if not plan.pruned:  # refused before anything trains, saying why
        why = next(iter(plan.reasons.values()), "every group crosses a LayerNorm/GroupNorm, a bare parameter, a "
                   "reshape or the output (docs/structured.md)") if plan.groups else "no channel group was found"
        raise UserError(f"prune.granularity: channel: no channel group of {type(model).__name__} can be pruned "
                        f"({len(plan.groups)} groups; {why}); use prune.granularity: weight")
    return plan


def plan_memory_need(model: nn.Module, recipe: Recipe) -> int:
    """Bytes the channel plan of ``structured_plan`` allocates at least: its compaction probe holds a plain
    copy of the model with one unit of every group zeroed and compaction's copy of that, together
    (``compress.pruning.probe``); 0 where no such plan is made."""
    return 2 * plain_state_bytes(model) if makes_graph_plan(model, recipe) else 0


def plan_rows(model: nn.Module, layers: list[LayerPlan], rates: dict[str, float], rounds: int) -> list[dict]:
    """``LotterySearch.plan`` / ``--dry-run`` rows: ``rates`` are the per-level rates of the pruned layers."""
    modules = dict(model.named_modules())
    rows = []
    for layer in layers:
        weight = modules[layer.name].weight_orig if is_pruned(modules[layer.name]) else modules[layer.name].weight
        rate = rates.get(layer.name, 0.0)
        rows.append({"name": layer.name, "role": layer.role, "kind": layer.kind, "shape": tuple(weight.shape),
                     "count": weight.numel(), "rate": rate, "reason": layer.reason,
                     "remaining": [(1 - rate) ** level for level in range(rounds + 1)]})
    return rows


def one_shot_rates(rates: dict[str, float], rounds: int) -> dict[str, float]:
    """The single-step rate reaching what ``rounds`` iterative steps would: 1 - (1 - p)^rounds."""
    return {name: 1 - (1 - rate) ** rounds for name, rate in rates.items()}


def planned_rounds(recipe: Recipe) -> int:
    """Pruned rounds a search of ``recipe`` trains: ``lottery.rounds``, or one with ``lottery.one_shot``."""
    return 1 if recipe.lottery.one_shot and recipe.lottery.rounds else recipe.lottery.rounds
