"""Pure mask computation: scores and current masks in, new masks out. No module is touched here.

``amount`` follows torch.nn.utils.prune: an int is a count, a float a fraction -- here always of the
weights (or channels) that still survive, so every round prunes only survivors and masks only shrink.
"""

from __future__ import annotations

import torch
import torch.nn.utils.prune as prune

from compress.errors import UserError
from compress.pruning.widths import aligned_keep, count_to_prune
from compress.registry import PRUNING_METHODS

Masks = dict[str, torch.Tensor]

# ``prune.method`` names a function here. Each gets the effective weights (a mapping read layer by layer),
# the current masks, the rate per target, the pool (group) of each target, the granularity and a generator
# seeded per (seed, level), and returns the next masks as new tensors (pure: nothing is applied, and the
# current masks -- the model's live buffers, not copies -- are never written). Adding a method is one
# registered function.


def prune_lowest(scores: torch.Tensor, mask: torch.Tensor, amount: int | float) -> torch.Tensor:
    """Zero the ``amount`` lowest-scoring surviving entries of ``mask`` (any shape; flattened), ranked by
    |score| as torch's ``L1Unstructured`` ranks them -- the same mask, ties included."""
    alive = mask.flatten() != 0
    k = count_to_prune(amount, int(alive.sum()))
    if not k:
        return mask.clone()
    # the threshold search's working copy is freed before the new mask exists: one layer-sized copy at a time
    pruned = _lowest_by_threshold(scores.flatten(), alive, k)
    new_mask = mask.flatten().clone()
    if pruned is not None:
        new_mask.masked_fill_(pruned, 0)
    else:
        alive_index = alive.nonzero().squeeze(1)
        partial = prune.L1Unstructured(amount=k).compute_mask(scores.flatten()[alive_index],
                                                              torch.ones(len(alive_index), device=mask.device))
        new_mask[alive_index] = partial
    return new_mask.view_as(mask)


_CHUNK = 1 << 24  # entries compared at a time (a 64 MB |score| copy), and the largest layer torch ranks itself


def _lowest_by_threshold(flat: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor | None:
    """Where the ``k`` lowest |score| survivors are, found from the k-th smallest value t: every survivor
    below t, and as many equal to t as make ``k``. When exactly ``k`` survivors are <= t that set is the
    only answer any ranking gives, torch's topk included. When tied values straddle t, a layer of up to
    ``_CHUNK`` entries gets None (torch's own tie order decides); a larger one prunes the tied survivors
    at the lowest positions first. None for a NaN score, and off the CPU.

    Why not topk: it pairs every value with an int64 index, ~5 copies of a 100M-entry layer at once (3.9 GB
    for VGG's 102M-weight classifier conv); a numpy partition of the survivors' copy works in place."""
    if flat.device.type != "cpu":
        return None
    survivors = torch.empty(int(alive.sum()), dtype=flat.dtype)
    filled = 0
    for start in range(0, flat.numel(), _CHUNK):  # masked_select builds an int64 index of what it reads
        part = torch.masked_select(flat[start:start + _CHUNK], alive[start:start + _CHUNK])
        survivors[filled:filled + len(part)] = part.abs()
        filled += len(part)
    if bool(torch.isnan(survivors).any()):
        return None
    values = survivors.numpy()
    values.partition(k - 1)
    threshold = float(values[k - 1])
    del survivors, values
    pruned = torch.empty_like(alive)
    for start in range(0, flat.numel(), _CHUNK):
        pruned[start:start + _CHUNK] = flat[start:start + _CHUNK].abs() <= threshold
    pruned &= alive
    excess = int(pruned.sum()) - k
    if excess and flat.numel() <= _CHUNK:
        return None
    if excess:
        tied = torch.cat([(flat[start:start + _CHUNK].abs() == threshold).nonzero().squeeze(1) + start
                          for start in range(0, flat.numel(), _CHUNK)])
        tied = tied[alive[tied]]
        pruned[tied[len(tied) - excess:]] = False
    return pruned


def channel_scores(weight: torch.Tensor, norm: int = 2) -> torch.Tensor:
    """L-norm of each output channel (dim 0), as ``prune.ln_structured`` ranks them."""
    return torch.linalg.vector_norm(weight.flatten(1), ord=norm, dim=1)


def prune_channels(weight: torch.Tensor, mask: torch.Tensor, amount: int | float, norm: int = 2,
                   channel_multiple: int = 1) -> torch.Tensor:
    """Prune whole output channels: torch's ``LnStructured`` ranks the surviving channels by L-norm.
    ``channel_multiple``: the kept count aligned as ``compress.pruning.widths.aligned_keep`` does."""
    alive = mask.flatten(1).any(dim=1)
    alive_index = alive.nonzero().squeeze(1)
    k = count_to_prune(amount, len(alive_index))
    if channel_multiple > 1:
        k = len(alive_index) - aligned_keep(len(alive_index), k / max(1, len(alive_index)), channel_multiple)
    if not k:
        return mask.clone()
    surviving = (weight * mask)[alive_index]
    partial = prune.LnStructured(amount=k, n=norm, dim=0).compute_mask(surviving, torch.ones_like(surviving))
    channel_mask = torch.zeros(len(alive), dtype=mask.dtype, device=mask.device)
    channel_mask[alive_index] = partial.flatten(1).amax(dim=1).to(mask.dtype)
    return mask * channel_mask.view(-1, *([1] * (mask.dim() - 1)))


def normalized(scores: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """``scores`` over their mean among the ``alive`` entries: one layer's scale, before a global ranking."""
    live = alive.bool()
    mean = scores[live].mean() if bool(live.any()) else scores.new_tensor(1.0)
    return scores / mean if float(mean) > 0 else scores


def _pooled(flat: list[torch.Tensor]) -> torch.Tensor:
    """One tensor of a group's entries; a layer alone is used as it is (``torch.cat`` would copy it)."""
    return flat[0] if len(flat) == 1 else torch.cat(flat)


def magnitude_masks(weights: dict[str, torch.Tensor], masks: Masks, rates: dict[str, float],
                    groups: dict[str, str], granularity: str = "weight", channel_multiple: int = 1,
                    normalize: bool = False) -> Masks:
    """One IMP step: prune ``rates[name]`` of each target's survivors by |w|.

    Targets sharing a group are ranked together (global scope): the group's survivors are pooled
    and ``rate`` of them pruned wherever they are smallest; with ``normalize`` each target's scores are
    first divided by their mean over its survivors (``prune.global_normalize``).
    """
    new_masks: Masks = {}
    by_group: dict[str, list[str]] = {}
    for name in rates:
        by_group.setdefault(groups[name], []).append(name)
    for names in by_group.values():
        rate = rates[names[0]]
        if granularity == "channel":
            if len(names) == 1:
                new_masks[names[0]] = prune_channels(weights[names[0]], masks[names[0]], rate,
                                                     channel_multiple=channel_multiple)
                continue
            scores = [channel_scores(weights[n] * masks[n]) for n in names]
            alive = [masks[n].flatten(1).any(dim=1).to(masks[n].dtype) for n in names]
            if normalize:
                scores = [normalized(score, live) for score, live in zip(scores, alive, strict=True)]
            pooled = prune_lowest(torch.cat(scores), torch.cat(alive), rate)
            for name, channel_mask, score, live in zip(names, pooled.split([len(a) for a in alive]), scores, alive,
                                                       strict=True):
                if channel_multiple > 1:  # the pool's count for this layer, aligned; its best channels kept
                    total = int(live.sum())
                    keep = aligned_keep(total, 1 - int(channel_mask.sum()) / max(1, total), channel_multiple)
                    order = torch.argsort(torch.where(live.bool(), score, -torch.inf), descending=True, stable=True)
                    channel_mask = torch.zeros_like(live)
                    channel_mask[order[:keep]] = 1
                new_masks[name] = masks[name] * channel_mask.view(-1, *([1] * (masks[name].dim() - 1)))
            continue
        # prune_lowest ranks |score| among the survivors only: a layer's own weights serve as they are (a
        # view, not a masked |copy| -- 400 MB for VGG's largest layer), unless normalising divides them
        scores = _pooled([normalized((weights[n] * masks[n]).abs().flatten(), masks[n].flatten()) if normalize
                          else weights[n].flatten() for n in names])
        pooled = prune_lowest(scores, _pooled([masks[n].flatten() for n in names]), rate)
        for name, part in zip(names, pooled.split([masks[n].numel() for n in names]), strict=True):
            new_masks[name] = part.view_as(masks[name])
    return new_masks


def random_masks_like(masks: Masks, generator: torch.Generator, granularity: str = "weight") -> Masks:
    """A random mask per layer with exactly the same number of survivors (the random-pruning control).

    ``granularity="channel"``: the same number of whole output channels per layer survive, chosen at
    random, so the control of a channel ticket is itself a channel ticket.
    """
    result: Masks = {}
    for name, mask in masks.items():
        if granularity == "channel":
            channels = mask.flatten(1).any(dim=1)
            keep = torch.zeros(len(channels), dtype=mask.dtype)
            keep[torch.randperm(len(channels), generator=generator)[:int(channels.sum())]] = 1
            result[name] = torch.ones_like(mask, device="cpu") * keep.view(-1, *([1] * (mask.dim() - 1)))
        else:
            order = torch.randperm(mask.numel(), generator=generator)
            flat = torch.zeros(mask.numel(), dtype=mask.dtype)
            flat[order[:int(mask.sum())]] = 1
            result[name] = flat.view_as(mask)
        result[name] = result[name].to(mask.device)
    return result


def random_step_masks(masks: Masks, rates: dict[str, float], generator: torch.Generator,
                      granularity: str = "weight", channel_multiple: int = 1) -> Masks:
    """``prune.method: random``: prune ``rate`` of each layer's survivors uniformly at random -- single
    weights, or with ``granularity="channel"`` whole output channels (aligned to ``channel_multiple``)."""
    result: Masks = {}
    for name, rate in rates.items():
        mask = masks[name]
        if granularity == "channel":
            # one random score per output channel, the same over the channel: LnStructured then ranks
            # the surviving channels in that random order
            per_channel = torch.rand(mask.shape[0], generator=generator).to(mask.device)
            scores = per_channel.view(-1, *([1] * (mask.dim() - 1))).expand_as(mask).to(mask.dtype)
            result[name] = prune_channels(scores, mask, rate, channel_multiple=channel_multiple)
        else:
            scores = torch.rand(mask.shape, generator=generator).to(mask.device)
            result[name] = prune_lowest(scores, mask, rate)
    return result


@PRUNING_METHODS.register("magnitude")
def magnitude_method(weights: dict[str, torch.Tensor], masks: Masks, rates: dict[str, float], *,
                     groups: dict[str, str], granularity: str, generator: torch.Generator,
                     channel_multiple: int = 1, global_normalize: bool = False) -> Masks:
    """IMP's own rule: the smallest |w| among the survivors (``generator`` unused)."""
    return magnitude_masks(weights, masks, rates, groups, granularity, channel_multiple, global_normalize)


@PRUNING_METHODS.register("random")
def random_method(weights: dict[str, torch.Tensor], masks: Masks, rates: dict[str, float], *,
                  groups: dict[str, str], granularity: str, generator: torch.Generator,
                  channel_multiple: int = 1) -> Masks:
    """A baseline: the same fraction of survivors (weights or whole channels), chosen uniformly at random per
    layer."""
    return random_step_masks(masks, rates, generator, granularity, channel_multiple)


def check_shrinks(old: Masks, new: Masks) -> None:
    """Masks only shrink: every weight pruned before stays pruned."""
    for name, mask in new.items():
        if name in old and bool((mask > old[name]).any()):
            raise UserError(f"mask of {name!r} revives pruned weights; masks may only shrink")
