"""Structured (channel / head) masks on any graph: group scores, kept counts per level, masks.

Scoring, counting and masking are pure functions of plain data (``ChannelGroup``s from
``compress.pruning.groups``, weights, masks); nothing here touches a module except ``prune_channels``,
which installs the result through ``torch.nn.utils.prune`` like every other mask of the toolkit.

* Score of a unit: the mean over the group's members of the L2 norm of the unit's slice of the
  member's (masked) weight -- output rows of producers, input columns of consumers.
* Kept count per level: ``alive - round(rate * alive)`` (torch's convention for a fraction of the
  survivors), then aligned: with ``channel_multiple = N > 1`` rounded to the *nearest* multiple of N
  (halves up), never below N and never above ``alive`` (masks only shrink); a group narrower than N
  is not pruned at all. ``N = 1`` is the unaligned count. For units wider than one channel (heads,
  conv groups) the step is in units, so that the width in channels is a multiple of N (``unit_multiple``).
* Masks: every unit that is not kept gets zeros at its positions in every member weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.pruning.groups import ChannelGroup, any_nonzero, find_groups, per_position, per_unit
from compress.pruning.masks import Masks, normalized
from compress.pruning.pools import rate_pools
from compress.pruning.unit_masks import masks_for
from compress.pruning.widths import aligned_keep, count_to_prune, resolve_multiple

# The scores a channel group has (``next_group_masks``); any other prune.method is refused on this path,
# never silently replaced by magnitude.
GROUP_METHODS = ("magnitude", "random")


def check_group_method(method: str) -> None:
    if method not in GROUP_METHODS:
        raise UserError(f"prune.method: {method!r} has no rule for channel groups (granularity channel on a "
                        f"model that is not an nn.Sequential); use one of {', '.join(GROUP_METHODS)}")


def unit_multiple(group: ChannelGroup, channel_multiple: int) -> int:
    """Units per aligned step: a width of ``k * unit_width`` channels is a multiple of ``channel_multiple``
    when ``k`` is a multiple of this (heads of 64 channels: 1; RegNet conv groups of 8 channels and N = 16: 2)."""
    return channel_multiple // math.gcd(channel_multiple, max(1, group.unit_width))


def unit_alive(group: ChannelGroup, masks: Masks) -> torch.Tensor:
    """Per unit: whether any of its positions in any member is still unmasked (modules without a mask: alive)."""
    alive = torch.zeros(group.units, dtype=torch.bool)
    for member in group.members:
        mask = masks.get(member.module)
        if mask is None:
            return torch.ones(group.units, dtype=torch.bool)
        live = per_position(mask, member.dim, any_nonzero)
        alive |= per_unit(member, live.double(), group.units) > 0
    return alive


def _sum_of_squares(part: torch.Tensor, dims: list[int]) -> torch.Tensor:
    squares = part.double().pow(2)
    return squares.sum(dim=dims) if dims else squares


def group_scores(group: ChannelGroup, weights: dict[str, torch.Tensor], masks: Masks) -> torch.Tensor:
    """Per unit: mean over members of the L2 norm of its (masked) slice."""
    score = torch.zeros(group.units, dtype=torch.float64)
    for member in group.members:
        squares = per_position(weights[member.module].detach(), member.dim, _sum_of_squares, masks.get(member.module))
        score += per_unit(member, squares, group.units).sqrt()
    return score / max(1, len(group.members))


def group_widths(groups: Sequence[ChannelGroup], masks: Masks) -> dict[str, int]:
    """Units alive per group under ``masks``."""
    return {group.name: int(unit_alive(group, masks).sum()) for group in groups}


def next_group_masks(groups: Sequence[ChannelGroup], weights: dict[str, torch.Tensor], masks: Masks,
                     rates: dict[str, float], *, pools: dict[str, str] | None = None, channel_multiple: int = 1,
                     method: str = "magnitude", generator: torch.Generator | None = None,
                     normalize: bool = False) -> Masks:
    """One pruning step over whole units: ``rates[group]`` of each group's surviving units, lowest
    scores first (``method: random``: random scores). Groups sharing a ``pools`` key are ranked together
    (global scope); each group's count is then aligned to ``channel_multiple``. Pure."""
    check_group_method(method)
    kept: dict[str, torch.Tensor] = {}
    scores, alive = {}, {}
    by_name = {group.name: group for group in groups}
    for group in groups:
        if rates.get(group.name, 0.0) <= 0.0:
            continue
        alive[group.name] = unit_alive(group, masks)
        if method == "random":
            scores[group.name] = torch.rand(group.units, generator=generator, dtype=torch.float64)
        else:
            scores[group.name] = group_scores(group, weights, masks)
            if normalize:  # one scale per group before a pooled (global) ranking
                scores[group.name] = normalized(scores[group.name], alive[group.name])
    counts = {}
    by_pool: dict[str, list[str]] = {}
    for name in scores:
        by_pool.setdefault((pools or {}).get(name, name), []).append(name)
    for names in by_pool.values():
        if len(names) == 1:
            counts[names[0]] = aligned_keep(int(alive[names[0]].sum()), rates[names[0]],
                                            unit_multiple(by_name[names[0]], channel_multiple))
            continue
        pooled = torch.cat([scores[n] for n in names])
        live = torch.cat([alive[n] for n in names])
        drop = count_to_prune(rates[names[0]], int(live.sum()))
        order = torch.argsort(torch.where(live, pooled, torch.inf), stable=True)[:drop]
        dropped = torch.zeros(len(pooled), dtype=torch.bool)
        dropped[order] = True
        for name, part in zip(names, dropped.split([len(scores[n]) for n in names]), strict=True):
            total = int(alive[name].sum())
            remaining = total - int((part & alive[name]).sum())
            counts[name] = aligned_keep(total, 1 - remaining / total if total else 0.0,
                                        unit_multiple(by_name[name], channel_multiple))
    for name, keep in counts.items():
        ranked = torch.where(alive[name], scores[name], -torch.inf)
        order = torch.argsort(ranked, descending=True, stable=True)[:keep]
        kept[name] = torch.zeros(len(ranked), dtype=torch.bool)
        kept[name][order] = True
    return masks_for(groups, masks, kept)


def planned_widths(groups: Sequence[ChannelGroup], rates: dict[str, float], levels: int,
                   channel_multiple: int = 1) -> dict[str, list[int]]:
    """Units per group at levels 0..levels (layer-wise: each group on its own)."""
    widths = {}
    for group in groups:
        row = [group.units]
        for _ in range(levels):
            row.append(aligned_keep(row[-1], rates.get(group.name, 0.0), unit_multiple(group, channel_multiple))
                       if rates.get(group.name, 0.0) > 0 else row[-1])
        widths[group.name] = row
    return widths


@dataclass
class StructuredPlan:
    """The groups of one model and, per group, its rate per round (0 = not pruned, with a reason)."""

    groups: list[ChannelGroup]
    rates: dict[str, float]
    reasons: dict[str, str] = field(default_factory=dict)
    pools: dict[str, str] = field(default_factory=dict)
    channel_multiple: int = 1
    normalize: bool = False  # prune.global_normalize: each group's scores over their mean before pooling

    @property
    def pruned(self) -> list[ChannelGroup]:
        return [g for g in self.groups if self.rates.get(g.name, 0.0) > 0]

    def module_names(self, order: Sequence[str]) -> list[str]:
        """Every module whose weight a pruned group touches, in ``order`` (model definition order)."""
        touched = {m.module for g in self.pruned for m in g.members}
        return [name for name in order if name in touched]

    def step(self, weights: dict[str, torch.Tensor], masks: Masks, rates: dict[str, float] | None = None, *,
             method: str = "magnitude", generator: torch.Generator | None = None) -> Masks:
        return next_group_masks(self.pruned, weights, masks, self.rates if rates is None else rates,
                                pools=self.pools, channel_multiple=self.channel_multiple, method=method,
                                generator=generator, normalize=self.normalize)


def _covered(selectors: Sequence[str], model: nn.Module) -> set[str]:
    from compress.pruning.plan import infer_output, infer_stem
    from compress.pruning.selectors import Selector, prunable_modules

    every = dict(model.named_modules())
    roles = {"@stem": infer_stem(model), "@classifier": infer_output(model)}
    chosen = [Selector(text) for text in selectors]
    return {name for name, _ in prunable_modules(model) if any(s.covers(name, every, roles) for s in chosen)}


def prune_channels(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], amount: float | int, *,
                   channel_multiple: int | str = 1, keep: Sequence[str] = (), method: str = "magnitude",
                   seed: int = 0, groups: Sequence[ChannelGroup] | None = None) -> Masks:
    """One-shot structured pruning: ``amount`` of each group's surviving units (a fraction, or an int
    count per group), installed as ``torch.nn.utils.prune`` masks on every Conv2d/Linear weight a group
    touches (producers' output rows, consumers' input columns); returns those masks.

    ``keep``: selectors (as ``prune.keep``: globs, ``type:``, ``'@stem'``, ``'@classifier'``) of modules
    whose weights must stay whole: a group touching one is not pruned. ``groups``: reuse ``find_groups``.
    Masks only shrink: units already pruned stay pruned and count as pruned.
    """
    from compress.pruning.apply import apply_masks, effective_weights, ones_masks

    groups = list(find_groups(model, example_inputs) if groups is None else groups)
    kept_modules = _covered(keep, model) if keep else set()
    rates = {g.name: amount for g in groups if not kept_modules & set(g.modules)}
    if isinstance(amount, int) and not isinstance(amount, bool):
        rates = {name: amount / max(1, next(g.units for g in groups if g.name == name)) for name in rates}
    from compress.pruning.probe import probe_plan

    probe_plan(model, groups, rates, {}, example_inputs)  # groups that break the model when removed stay whole
    plan = StructuredPlan(groups, {n: float(r) for n, r in rates.items()},
                          channel_multiple=resolve_multiple(channel_multiple))
    order = [name for name, _ in model.named_modules()]
    names = plan.module_names(order)
    if not names:
        return {}
    masks = ones_masks(model, names)
    new = plan.step(effective_weights(model, names), masks, method=method,
                    generator=torch.Generator().manual_seed(seed))
    apply_masks(model, new)
    return new


def channel_plan(model: nn.Module, config, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                 where=None) -> StructuredPlan:
    """The recipe's ``prune`` section (``PruneConfig``) over the channel groups of ``model``.

    A group's rate is the smallest rate of its producers (``prune.rates`` by kind or selector); it is not
    pruned (rate 0, with the reason) when a producer is not pruned (rate 0, output) or when any module it
    touches is kept (``prune.keep``: a kept layer keeps all its weights, inputs included). Global scope
    ranks the units of all groups sharing a rate together."""
    from compress.pruning.plan import plan_layers

    layers = {layer.name: layer for layer in plan_layers(model, config, where)}
    multiple = resolve_multiple(config.channel_multiple)
    groups = find_groups(model, example_inputs)
    rates, reasons = {}, {}
    for group in groups:
        kept = [layers[name] for name in group.modules if name in layers and layers[name].reason.startswith("kept")]
        idle = [layers[name] for name in group.producers if name in layers and layers[name].rate <= 0]
        if kept:
            rates[group.name], reasons[group.name] = 0.0, f"touches {kept[0].name}, {kept[0].reason}"
        elif idle:
            rates[group.name], reasons[group.name] = 0.0, f"{idle[0].name}: {idle[0].reason or 'rate 0'}"
        else:
            rates[group.name] = min(layers[name].rate for name in group.producers if name in layers)
        step = unit_multiple(group, multiple)
        if rates[group.name] > 0 and aligned_keep(group.units, rates[group.name], step) == group.units:
            reasons[group.name] = (f"{group.units} units cannot shrink in steps of {step} "
                                   f"(prune.channel_multiple = {multiple}): stays whole")
    from compress.pruning.probe import probe_plan

    probe_plan(model, groups, rates, reasons, example_inputs)  # before anything trains: compacts exactly?
    pools = rate_pools(rates, config.scope == "global")
    return StructuredPlan(groups, rates, reasons, pools, multiple,
                          normalize=config.scope == "global" and bool(getattr(config, "global_normalize", False)))


def plan_targets(model: nn.Module, plan: StructuredPlan, config, where=None) -> list:
    """``Target``s (``compress.pruning.plan``) for every module whose weight a pruned group touches; a
    module's rate is that of the group it produces for (else of a group it consumes), for display."""
    from compress.pruning.plan import Target, plan_layers

    layers = {layer.name: layer for layer in plan_layers(model, config, where)}
    produced, consumed = {}, {}
    for group in plan.pruned:
        for member in group.members:
            (produced if member.dim == 0 else consumed).setdefault(member.module, plan.rates[group.name])
    order = [name for name, _ in model.named_modules()]
    return [Target(name=name, kind=layers[name].kind, rate=produced.get(name, consumed.get(name, 0.0)),
                   group="channel-groups", role=layers[name].role)
            for name in plan.module_names(order)]


def random_group_masks(groups: Sequence[ChannelGroup], masks: Masks, generator: torch.Generator) -> Masks:
    """The structured random-pruning control: in every group, as many units as ``masks`` keeps alive,
    chosen uniformly at random (whole channels / heads, every member), on all-ones masks of the same modules."""
    ones = {name: torch.ones_like(mask) for name, mask in masks.items()}
    kept = {}
    for group in groups:
        if not all(member.module in masks for member in group.members):
            continue
        alive = int(unit_alive(group, masks).sum())
        keep = torch.zeros(group.units, dtype=torch.bool)
        keep[torch.randperm(group.units, generator=generator)[:alive]] = True
        kept[group.name] = keep
    return masks_for(groups, ones, kept)
