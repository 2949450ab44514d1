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
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.errors import UserError
from compress.pruning.apply import apply_masks, is_pruned, refresh_weights
from compress.pruning.masks import Masks
from compress.registry import SCORERS

Scores = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]
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
    found = list(batches or [])
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
    grads = {name: torch.zeros_like(p) for name, p in params.items()}
    for x, y in _batches(batches, "snip"):
        loss = F.cross_entropy(work(x), y)
        for name, grad in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
            grads[name] += grad
    return {name: (grads[name] * p).abs().detach() for name, p in params.items()}


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
    g = [torch.zeros_like(p) for p in tensors]
    for x, y in found:
        for total, grad in zip(g, torch.autograd.grad(F.cross_entropy(work(x) / temperature, y), tensors), strict=True):
            total += grad
    hg = [torch.zeros_like(p) for p in tensors]
    for x, y in found:
        grads = torch.autograd.grad(F.cross_entropy(work(x) / temperature, y), tensors, create_graph=True)
        z = sum((grad * fixed).sum() for grad, fixed in zip(grads, g, strict=True))
        for total, grad in zip(hg, torch.autograd.grad(z, tensors), strict=True):
            total += grad
    return {name: (p * h).detach() for (name, p), h in zip(params.items(), hg, strict=True)}


@SCORERS.register("synflow")
def synflow_scores(model: nn.Module, names: Sequence[str], masks: Masks | None = None,
                   batches: Iterable[Batch] | None = None, generator: torch.Generator | None = None) -> Scores:
    """One SynFlow step: ``|w * dR/dw|`` on the network with absolute parameters, float64, eval mode, and
    ``R = sum(f(1))`` for an all-ones input of the batches' input shape (no data values are read)."""
    x, _ = _batches(batches, "synflow")[0]
    work = _working_copy(model, masks).double().eval()
    with torch.no_grad():
        for tensor in (*work.parameters(), *work.buffers()):
            if tensor.is_floating_point():
                tensor.abs_()  # |theta| everywhere (masks are 0/1: unchanged); BN's running stats too
    params = scored_params(work, names)
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)
    output = work(ones)
    grads = torch.autograd.grad(output.sum(), list(params.values()))
    return {name: (grad * p).abs().detach().float() for (name, p), grad in zip(params.items(), grads, strict=True)}


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
    order = torch.argsort(scores[alive], descending=True, stable=True)
    new_mask = torch.zeros_like(mask)
    new_mask[alive[order[:keep]]] = 1
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
        flat = torch.cat([scores[n].flatten().float() for n in names])
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
    for k in range(1, iterations + 1):
        scores = synflow_scores(model, names, current, found)
        step_keep = {group: keep[group] if k == iterations else
                     max(keep[group], round(alive * (keep[group] / alive) ** (k / iterations)))
                     for group, alive in start.items()}
        current = masks_from_scores(scores, current, step_keep, groups, invert=invert and k == iterations)
    return current
