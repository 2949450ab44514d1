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
from compress.errors import UserError
from compress.pruning import Masks, plain_state_dict, random_masks_like
from compress.pruning.groups import ChannelGroup, example_inputs_for, find_groups
from compress.pruning.structured import random_group_masks
from compress.registry import CONTROLS

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
    # the round's masks from the same scores ranked the other way (keep the lowest): the invert control
    inverted: Callable[[], Masks] | None = None


Control = Callable[[ControlInput], tuple[dict[str, torch.Tensor], Masks]]


def control_seed(recipe_seed: int, round_index: int) -> int:
    """Distinct per round and from the recipe's own seed."""
    return recipe_seed + REINIT_SEED_STRIDE * round_index + 1


@CONTROLS.register("reinit")
def reinit(ticket: ControlInput) -> tuple[dict[str, torch.Tensor], Masks]:
    """The ticket's masks on a fresh random initialisation: does the init matter?"""
    return plain_state_dict(ticket.make_model(ticket.seed)), ticket.masks


def _channel_groups(ticket: ControlInput) -> Sequence[ChannelGroup] | None:
    """The coupled channel groups a structured ticket's control must move whole (every member of a unit
    together): the search's, or traced from a fresh model; None for weight granularity or an nn.Sequential,
    whose layers' output channels are independent."""
    if ticket.groups is not None:
        return ticket.groups
    if ticket.granularity != "channel":
        return None
    model = ticket.make_model(ticket.seed)
    return None if isinstance(model, nn.Sequential) else find_groups(model, example_inputs_for(model))


def _on_device(ticket: ControlInput, masks: Masks) -> Masks:
    device = next(iter(ticket.masks.values())).device
    # computed identically on every rank from the same seed; the broadcast makes that a checked fact
    return distributed.broadcast_masks({k: v.to(device) for k, v in masks.items()})


@CONTROLS.register("random_prune")
def random_prune(ticket: ControlInput) -> tuple[dict[str, torch.Tensor], Masks]:
    """The ticket's start weights under random masks of the same count per layer (of weights, or of whole
    channels under channel granularity; on a graph that is not an nn.Sequential, of whole channel groups
    and heads, ``compress.pruning.structured.random_group_masks``): does the mask matter?"""
    cpu_masks = {k: v.cpu() for k, v in ticket.masks.items()}
    generator = torch.Generator().manual_seed(ticket.seed)
    groups = _channel_groups(ticket)
    if groups is not None:
        # the same number of whole units per group (channels, heads), every coupled weight of a unit with
        # it, so the control of a structured ticket is itself structured
        masks = random_group_masks(groups, cpu_masks, generator)
    else:
        masks = random_masks_like(cpu_masks, generator, granularity=ticket.granularity)
    return ticket.start_state, _on_device(ticket, masks)


@CONTROLS.register("shuffle")
def shuffle(ticket: ControlInput) -> tuple[dict[str, torch.Tensor], Masks]:
    """Frankle et al. 2021: each layer's mask permuted at random (its kept count and the ticket's start
    weights kept; under channel granularity whole output channels are permuted, and on coupled channels
    -- residual adds, attention heads -- one permutation of the kept units per group, applied to every
    member, so the shuffled ticket stays structured and compactable): do the positions matter?"""
    generator = torch.Generator().manual_seed(ticket.seed + 1)  # not random_prune's draw
    cpu_masks = {name: mask.cpu() for name, mask in ticket.masks.items()}
    groups = _channel_groups(ticket) if ticket.granularity == "channel" else None
    if groups is not None:
        return ticket.start_state, _on_device(ticket, random_group_masks(groups, cpu_masks, generator))
    masks = {}
    for name, cpu in cpu_masks.items():
        if ticket.granularity == "channel":
            masks[name] = cpu[torch.randperm(cpu.shape[0], generator=generator)]
        else:
            masks[name] = cpu.flatten()[torch.randperm(cpu.numel(), generator=generator)].view_as(cpu)
    return ticket.start_state, _on_device(ticket, masks)


@CONTROLS.register("invert")
def invert(ticket: ControlInput) -> tuple[dict[str, torch.Tensor], Masks]:
    """Frankle et al. 2021: the same counts, keeping the lowest-scored weights instead (for IMP: the
    smallest trained magnitudes among the previous round's survivors): does the ranking matter?"""
    if ticket.inverted is None:
        raise UserError("the invert control needs the round's scores; it runs inside a LotteryRun")
    return ticket.start_state, distributed.broadcast_masks(ticket.inverted())
