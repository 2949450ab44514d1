"""Pruning at initialization: scores of single weights, as pure functions (Torch-Pruning's split).

A scorer reads a model (never changes it: it works on a deep copy), the names of the pruned modules, their
current masks and a few batches, and returns one score tensor per module, shaped like its weight. Which
weights go is ``compress.pruning.masks``'s business (lowest score first, among survivors); installing the
masks is ``compress.pruning.apply``'s. Scores are computed on the pruned parameter (``weight_orig`` once
torch prune is installed), so a pruned weight scores 0 and stays pruned.

- ``snip`` (Lee et al. 2019): ``|g * w|`` with ``g`` the loss gradient summed over the batches.
- ``grasp`` (Wang et al. 2020): ``w * (H g)``: the Hessian-gradient product of the loss at temperature
  200 (the authors' code); GraSP removes the largest ``-w * Hg``, i.e. the lowest score here.
- ``synflow`` (Tanaka et al. 2020): ``|w * dR/dw|`` with ``R`` the sum of the outputs of the network
  with absolute parameters on an all-ones input, in float64 and eval mode: data-free; iterated by
  ``synflow_masks`` (100 steps on an exponential schedule of densities).
- ``magnitude``: ``|w|`` at initialization. ``random``: seeded uniform scores.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.pruning.apply import apply_masks, is_pruned, refresh_weights
from compress.pruning.masks import Masks
from compress.pruning.score_inputs import (
    Batch,
    forward,
    hessian_vector_product,
    logits_of,
    ones_input,
    scorer_batches,
    summed_gradients,
)
from compress.registry import SCORERS

Scores = dict[str, torch.Tensor]
Scorer = Callable[..., Scores]
# ``prune.method`` names under ``lottery.strategy: at_init``; each: (model, names, masks, batches, generator)
# methods whose score is defined per weight only; channel granularity is refused for them in one line
WEIGHT_ONLY = ("snip", "grasp", "synflow", "random_erk")
# methods that need batches of the user's data (synflow only reads the input shape)
NEEDS_DATA = ("snip", "grasp", "synflow")
GRASP_TEMPERATURE = 200.0
SYNFLOW_ITERATIONS = 100


def _working_copy(model: nn.Module, masks: Masks | None) -> nn.Module:
    """A deep copy with ``masks`` installed (scorers stay pure: the caller's model, its BatchNorm
    statistics and its ``.grad`` are never touched)."""
    refresh_weights(model)
    work = copy.deepcopy(model)
    if masks:
        apply_masks(work, {name: mask.detach().clone() for name, mask in masks.items()})
    return work


def scored_params(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The tensor a score is taken against, per module: ``weight_orig`` once pruned, else ``weight``."""
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise UserError(f"scorer: the model has no module {missing[0]!r}")
    return {name: modules[name].weight_orig if is_pruned(modules[name]) else modules[name].weight for name in names}


def _batches(batches: Iterable[Batch] | None, method: str) -> list[Batch]:
    found = scorer_batches(batches)
    if not found:
        raise UserError(f"prune.method {method!r} scores with data: give it batches of (inputs, labels) "
                        "(search.score_at_init(batches) in an own loop)")
    return found


@SCORERS.register("snip")
def snip_scores(model: nn.Module, names: Sequence[str], masks: Masks | None = None,
                batches: Iterable[Batch] | None = None, generator: torch.Generator | None = None) -> Scores:
    """SNIP's connection sensitivity ``|g * w|``, ``g`` summed over ``batches`` (cross-entropy, train mode)."""
    work = _working_copy(model, masks)
    work.train()
    params = scored_params(work, names)
    grads = summed_gradients(work, list(params.values()), _batches(batches, "snip"))
    return {name: (grad * p).abs().detach() for (name, p), grad in zip(params.items(), grads, strict=True)}


@SCORERS.register("grasp")
def grasp_scores(model: nn.Module, names: Sequence[str], masks: Masks | None = None,
                 batches: Iterable[Batch] | None = None, generator: torch.Generator | None = None,
                 temperature: float = GRASP_TEMPERATURE) -> Scores:
    """GraSP's ``w * (H g)``: ``g`` the gradient of the loss over ``batches`` (logits / ``temperature``),
    ``H g`` its Hessian-vector product; the lowest scores reduce gradient flow least when removed."""
    work = _working_copy(model, masks)
    work.train()
    params = scored_params(work, names)
    tensors = list(params.values())
    found = _batches(batches, "grasp")
    g = summed_gradients(work, tensors, found, temperature)
    hg = hessian_vector_product(work, tensors, found, g, temperature)
    return {name: (p * h).detach() for (name, p), h in zip(params.items(), hg, strict=True)}


def _synflow_network(model: nn.Module, masks: Masks | None, batches: Iterable[Batch] | None):
    """SynFlow's network: a float64 eval-mode copy with ``|theta|`` everywhere, and its all-ones input."""
    ones = ones_input(_batches(batches, "synflow")[0], torch.float64)
    work = _working_copy(model, masks).double().eval()
    with torch.no_grad():
        for tensor in (*work.parameters(), *work.buffers()):
            if tensor.is_floating_point():
                tensor.abs_()  # |theta| everywhere (masks are 0/1: unchanged); BN's running stats too
    return work, ones


def _synflow_step(work: nn.Module, names: Sequence[str], ones) -> Scores:
    params = scored_params(work, names)
    grads = torch.autograd.grad(logits_of(forward(work, ones)).sum(), list(params.values()))
    # float64: on deep nets R passes float32's range (EfficientNet-B0: 1e46), and only the ranking matters
    return {name: (grad * p).abs().detach() for (name, p), grad in zip(params.items(), grads, strict=True)}


@SCORERS.register("synflow")
def synflow_scores(model: nn.Module, names: Sequence[str], masks: Masks | None = None,
                   batches: Iterable[Batch] | None = None, generator: torch.Generator | None = None) -> Scores:
    """One SynFlow step: ``|w * dR/dw|`` on the network with absolute parameters, float64, eval mode, and
    ``R = sum(f(1))`` for an all-ones input of the batches' input shape (no data values are read)."""
    work, ones = _synflow_network(model, masks, batches)
    return _synflow_step(work, names, ones)


@SCORERS.register("magnitude")
def magnitude_scores(model: nn.Module, names: Sequence[str], masks: Masks | None = None,
                     batches: Iterable[Batch] | None = None, generator: torch.Generator | None = None) -> Scores:
    """``|w|`` as it is now (at initialization: magnitude pruning at init)."""
    return {name: p.detach().abs().clone() for name, p in scored_params(model, names).items()}


@SCORERS.register("random")
def random_scores(model: nn.Module, names: Sequence[str], masks: Masks | None = None,
                  batches: Iterable[Batch] | None = None, generator: torch.Generator | None = None) -> Scores:
    """Uniform random scores from ``generator`` (seeded by the caller: the same masks every run)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    return {name: torch.rand(p.shape, generator=gen).to(p.device) for name, p in scored_params(model, names).items()}


SCORERS.register("random_erk")(random_scores)  # random scores; the ERK densities do the work (erk_densities)


def check_scores(method: str, scores: Scores, masks: Masks | None = None) -> None:
    """Refuse non-finite scores (a one-line UserError naming the layers); warn of layers whose surviving
    weights all score the same: which of them are kept then follows index order, not ``method``."""
    broken = [name for name, score in scores.items() if not bool(torch.isfinite(score).all())]
    if broken:
        raise UserError(f"prune.method {method!r}: non-finite scores in {_listed(broken)} on this model "
                        "(overflow or a NaN in its forward): use another method")
    flat = []
    for name, score in scores.items():
        alive = score[masks[name].bool()] if masks and name in masks else score.flatten()
        if alive.numel() > 1 and bool((alive == alive[0]).all()):
            flat.append(name)
    if flat:
        warnings.warn(f"prune.method {method!r}: every surviving weight of {_listed(flat)} scores the same at "
                      "this initialization: the method cannot rank them, so which are kept follows index order "
                      "(a zero-initialised layer, or a zero-initialised norm or gate after it, e.g. timm's "
                      "zero_init_last, does this)", stacklevel=3)


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:3])
    return f"{len(names)} layer(s) ({shown}{', ...' if len(names) > 3 else ''})"


def erk_densities(shapes: dict[str, tuple[int, ...]], kept: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel densities (Evci et al. 2020): layer density proportional to
    ``sum(shape) / prod(shape)``, scaled so ``kept`` weights survive in all; a layer that would exceed 1
    stays dense and the rest is rescaled."""
    counts = {name: int(torch.tensor(shape).prod()) for name, shape in shapes.items()}
    total = sum(counts.values())
    if not 0 < kept <= total:
        raise UserError(f"ERK densities: {kept} weights to keep of {total}")
    raw = {name: sum(shape) / counts[name] for name, shape in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = kept - sum(counts[name] for name in dense)
        free = [name for name in shapes if name not in dense]
        scale = budget / sum(raw[name] * counts[name] for name in free)
        over = [name for name in free if raw[name] * scale > 1]
        if not over:
            return {name: 1.0 if name in dense else raw[name] * scale for name in shapes}
        dense.update(over)


def _keep_highest(scores: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """``mask`` with only its ``keep`` highest-scoring survivors left. Signed scores (GraSP's, an inverted
    ranking) rank by value, not by ``|score|`` as torch's L1Unstructured would; ties go to the lower index."""
    alive = mask.bool().nonzero().squeeze(1)
    values = scores[alive]
    new_mask = torch.zeros_like(mask)
    if keep >= len(values) or keep <= 0 or not bool(torch.isfinite(values).all()):
        order = torch.argsort(values, descending=True, stable=True)  # NaN ranks first, as a sort puts it
        new_mask[alive[order[:keep]]] = 1
        return new_mask
    # a selection, not a sort (SynFlow re-ranks 100 times): everything above the keep-th highest value,
    # then the lowest-indexed of the entries equal to it; the same entries as a stable descending sort
    threshold = torch.kthvalue(values, len(values) - keep + 1).values
    above = (values > threshold).nonzero().squeeze(1)
    ties = (values == threshold).nonzero().squeeze(1)[:keep - len(above)]
    new_mask[alive[torch.cat([above, ties])]] = 1
    return new_mask


def masks_from_scores(scores: Scores, masks: Masks, keep: dict[str, int], groups: dict[str, str],
                      invert: bool = False) -> Masks:
    """Keep ``keep[group]`` surviving entries per group (targets of one group ranked together), the
    highest scores first (``invert``: the lowest, Frankle et al. 2021's inversion ablation). Pure."""
    by_group: dict[str, list[str]] = {}
    for name in scores:
        by_group.setdefault(groups[name], []).append(name)
    result: Masks = {}
    for group, names in by_group.items():
        flat = torch.cat([scores[n].flatten().double() for n in names])
        current = torch.cat([masks[n].flatten() for n in names])
        alive = int(current.bool().sum())
        if keep[group] > alive:
            raise UserError(f"cannot keep {keep[group]} weights of group {group!r}: only {alive} survive")
        pooled = _keep_highest(-flat if invert else flat, current, keep[group])
        for name, part in zip(names, pooled.split([masks[n].numel() for n in names]), strict=True):
            result[name] = part.view_as(masks[name])
    return result


def synflow_masks(model: nn.Module, names: Sequence[str], masks: Masks, keep: dict[str, int],
                  groups: dict[str, str], batches: Iterable[Batch] | None, *,
                  iterations: int = SYNFLOW_ITERATIONS, invert: bool = False) -> Masks:
    """Iterative SynFlow: ``iterations`` rescorings, step ``k`` keeping ``alive * (keep/alive)^(k/n)``
    of each group (the exponential schedule of Tanaka et al. 2020), so no layer collapses early."""
    found = list(batches or [])
    current = {name: mask.detach().clone() for name, mask in masks.items()}
    start: dict[str, int] = {}
    for name in names:
        start[groups[name]] = start.get(groups[name], 0) + int(current[name].bool().sum())
    work, ones = _synflow_network(model, current, found)  # one copy; each step only changes its masks
    modules = dict(work.named_modules())
    for k in range(1, iterations + 1):
        if k > 1:
            with torch.no_grad():
                for name in names:
                    modules[name].weight_mask.copy_(current[name])
        scores = _synflow_step(work, names, ones)
        if k == 1:
            check_scores("synflow", scores, current)
        step_keep = {group: keep[group] if k == iterations else
                     max(keep[group], round(alive * (keep[group] / alive) ** (k / iterations)))
                     for group, alive in start.items()}
        current = masks_from_scores(scores, current, step_keep, groups, invert=invert and k == iterations)
    return current
