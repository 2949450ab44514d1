"""Control experiments of a round (``lottery.controls``): one registered function each.

A control gets the round's ticket (its masks and its rewound start state) and returns the start state
and masks it trains instead; everything else (schedule, data, budget, files) is the ticket's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from compress import distributed
from compress.pruning import Masks, plain_state_dict, random_masks_like
from compress.pruning.groups import ChannelGroup, example_inputs_for, find_groups
from compress.pruning.structured import random_group_masks
from compress.registry import Registry

REINIT_SEED_STRIDE = 10_007


@dataclass(frozen=True)
class ControlInput:
    """What a control may use: the ticket of round ``round_index`` and a seed of its own."""

    round_index: int
    masks: Masks
    start_state: dict[str, torch.Tensor]
    seed: int
    granularity: str
    make_model: Callable[..., nn.Module]
    # the search's channel groups (``search.structure.groups``), so the control does not trace the graph again
    groups: Sequence[ChannelGroup] | None = None


Control = Callable[[ControlInput], tuple[dict[str, torch.Tensor], Masks]]
CONTROLS: Registry[Control] = Registry("control")


def control_seed(recipe_seed: int, round_index: int) -> int:
    """Distinct per round and from the recipe's own seed."""
    return recipe_seed + REINIT_SEED_STRIDE * round_index + 1


@CONTROLS.register("reinit")
def reinit(ticket: ControlInput) -> tuple[dict[str, torch.Tensor], Masks]:
    """The ticket's masks on a fresh random initialisation: does the init matter?"""
    return plain_state_dict(ticket.make_model(ticket.seed)), ticket.masks


@CONTROLS.register("random_prune")
def random_prune(ticket: ControlInput) -> tuple[dict[str, torch.Tensor], Masks]:
    """The ticket's start weights under random masks of the same count per layer (of weights, or of whole
    channels under channel granularity; on a graph that is not an nn.Sequential, of whole channel groups
    and heads, ``compress.pruning.structured.random_group_masks``): does the mask matter?"""
    cpu_masks = {k: v.cpu() for k, v in ticket.masks.items()}
    generator = torch.Generator().manual_seed(ticket.seed)
    model = ticket.make_model(ticket.seed) if ticket.granularity == "channel" and ticket.groups is None else None
    if ticket.groups is not None or (model is not None and not isinstance(model, nn.Sequential)):
        # channel groups of any graph: the same number of whole units per group (channels, heads), every
        # coupled weight of a unit with it, so the control of a structured ticket is itself structured
        groups = ticket.groups if ticket.groups is not None else find_groups(model, example_inputs_for(model))
        masks = random_group_masks(groups, cpu_masks, generator)
    else:
        masks = random_masks_like(cpu_masks, generator, granularity=ticket.granularity)
    device = next(iter(ticket.masks.values())).device
    # computed identically on every rank from the same seed; the broadcast makes that a checked fact
    return ticket.start_state, distributed.broadcast_masks({k: v.to(device) for k, v in masks.items()})
