"""Module surgery through torch.nn.utils.prune (weight_orig / weight_mask), and nothing of our own.

Masks are keyed by module name; the pruned tensor is always the module's ``weight``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from compress.errors import UserError
from compress.pruning.masks import Masks
from compress.pruning.selectors import PRUNABLE_TYPES

PARAM = "weight"


def is_pruned(module: nn.Module) -> bool:
    return prune.is_pruned(module) and hasattr(module, f"{PARAM}_mask")


def get_masks(model: nn.Module) -> Masks:
    """The current masks (copies) of every pruned module."""
    return {name: module.weight_mask.detach().clone() for name, module in model.named_modules() if is_pruned(module)}


def pruned_counts(model: nn.Module) -> dict[str, int]:
    """Masked-out entries of every pruned module's weight, read from its buffer (``get_masks`` copies them)."""
    return {name: int((module.weight_mask == 0).sum()) for name, module in model.named_modules() if is_pruned(module)}


def zero_counts(model: nn.Module) -> dict[str, int]:
    """Exact zeros of every Conv / Linear weight that has any, by module name: what ``pruned_counts`` is for a
    model whose pruning was made permanent (``make_permanent``), where no mask says which entries were pruned."""
    counts = {name: int((module.weight == 0).sum()) for name, module in model.named_modules()
              if isinstance(module, PRUNABLE_TYPES) and isinstance(getattr(module, PARAM, None), torch.Tensor)}
    return {name: count for name, count in counts.items() if count}


class EffectiveWeights(Mapping[str, torch.Tensor]):
    """The weights the forward pass uses (orig * mask once pruned), by module name, each computed when it is
    read: a dict of all of them would be one more copy of the model while the next masks are computed
    (330 MB for an 86M-parameter ViT), where a layer-by-layer method needs one layer's at a time."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        self._modules = {name: modules[name] for name in names}

    def __getitem__(self, name: str) -> torch.Tensor:
        module = self._modules[name]
        if not is_pruned(module):
            return module.weight.detach()
        with torch.no_grad():
            weight = module.weight_orig * module.weight_mask
        # kept as the module's cached ``weight`` (the value the prune hook computes at the next forward),
        # which frees the stale one from the last training step: a layer is then held once, not twice
        vars(module)[PARAM] = weight
        return weight

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)


def effective_weights(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The weights the forward pass uses (orig * mask once pruned), all computed now (a plain dict a caller
    may keep or save); the search reads them lazily through ``EffectiveWeights``."""
    return dict(EffectiveWeights(model, names).items())


def ones_masks(model: nn.Module, names: list[str]) -> Masks:
    modules = dict(model.named_modules())
    return {name: getattr(modules[name], f"{PARAM}_mask", torch.ones_like(modules[name].weight)).detach().clone()
            for name in names}


def apply_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Install ``masks`` with ``prune.custom_from_mask``; on an already pruned module the new mask
    replaces the old buffer in place, so the reparametrisation (and any DDP wrapper) stays valid."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in modules:
            raise UserError(f"mask for {name!r} but the model has no such module")
        module = modules[name]
        if tuple(mask.shape) != tuple(module.weight.shape if not is_pruned(module) else module.weight_orig.shape):
            raise UserError(f"mask for {name!r} has shape {tuple(mask.shape)}, weight is {tuple(module.weight.shape)}")
        if is_pruned(module):
            module.weight_mask.copy_(mask)
        else:
            prune.custom_from_mask(module, PARAM, mask.to(module.weight.device, module.weight.dtype))
            _hook_reads_buffer(module)
    refresh_weights(model)
    return model


def _hook_reads_buffer(module: nn.Module) -> None:
    """Point torch's ``CustomFromMask`` hook at the module's ``weight_mask`` buffer.

    The hook keeps the mask it was created with for its lifetime, though nothing reads it after the
    buffer is installed: one more copy of every pruned weight for as long as the model lives (343 MB for
    an 86M-parameter ViT), and one more in every ``copy.deepcopy``. The buffer holds the same values."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.CustomFromMask) and hook._tensor_name == PARAM:
            hook.mask = module.weight_mask


@torch.no_grad()
def refresh_weights(model: nn.Module) -> None:
    """Recompute ``weight = weight_orig * weight_mask`` outside autograd.

    The prune hook only does this on the next forward; until then ``weight`` may be stale or a
    non-leaf tensor from the last training step, which readers and ``copy.deepcopy`` cannot use.
    """
    for module in model.modules():
        if is_pruned(module):
            setattr(module, PARAM, module.weight_orig * module.weight_mask)


def deepcopy_module(model: nn.Module, memo: dict[int, object] | None = None) -> nn.Module:
    """``copy.deepcopy(model)``, with tensors cached outside parameters and buffers (LeViT's attention-bias
    cache after an eval forward) copied detached: deepcopy refuses tensors that are not graph leaves.
    ``memo``: objects (by ``id``) the copy uses as they are, as in ``copy.deepcopy``."""
    memo = dict(memo or {})
    for module in model.modules():
        for value in vars(module).values():
            for item in value.values() if isinstance(value, dict) and not isinstance(value, nn.Module) else [value]:
                if isinstance(item, torch.Tensor) and not isinstance(item, nn.Parameter) and item.grad_fn is not None \
                        and id(item) not in memo:
                    memo[id(item)] = item.detach().clone()
    return copy.deepcopy(model, memo)


@torch.no_grad()
def fold_masks(model: nn.Module, *, share: bool = False) -> nn.Module:
    """A copy with masks folded into plain weights (``prune.remove``); ``model`` keeps its masks.

    The copy never holds a pruned weight three times (``weight_orig``, ``weight_mask``, ``weight``): its
    ``weight_orig`` is the folded weight, its mask a broadcast 1 and its cached ``weight`` empty, so
    ``prune.remove`` leaves the folded weight -- one copy of the model, not three (an 86M-parameter ViT:
    ~0.35 GB, not ~1 GB, at the peak).

    ``share``: the copy holds no tensor of its own: its pruned weights *are* ``model``'s cached ``weight``
    tensors (``refresh_weights``, the same values) and its other parameters and buffers ``model``'s own (new
    ``Parameter`` objects on the same storage, so ``.double()`` or ``.to()`` on the copy leave ``model`` as it
    is) -- for a reader that only reads the copy and drops it soon (an export). Writing to a tensor in place
    writes ``model``'s."""
    refresh_weights(model)  # the given model's cached weights are current afterwards, as before
    memo: dict[int, object] = {}
    if share:
        memo.update({id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in model.parameters()})
        memo.update({id(b): b.detach() for b in model.buffers()})
    for module in model.modules():
        if is_pruned(module):
            orig, mask, cached = module.weight_orig, module.weight_mask, vars(module)[PARAM]
            folded = cached if share else orig * mask
            memo[id(orig)] = nn.Parameter(folded, requires_grad=orig.requires_grad)
            memo[id(mask)] = torch.ones(1, dtype=mask.dtype, device=mask.device)
            memo[id(cached)] = torch.empty(0, dtype=cached.dtype, device=cached.device)
    copied = deepcopy_module(model, memo)
    for module in copied.modules():
        if is_pruned(module):
            _remove_reparametrisation(module) if share else prune.remove(module, PARAM)
    return copied


@torch.no_grad()
def make_permanent(model: nn.Module) -> nn.Module:
    """Make the pruning permanent, in place: every pruned ``weight`` becomes a plain parameter holding
    ``weight_orig * weight_mask`` (torch's ``prune.remove``), pruned entries exactly +0.0; ``weight_orig``,
    ``weight_mask`` and the hooks are gone. What one ships: a model of one copy of its weights where a masked
    one holds three (an export of a large weight ticket then needs two copies less). Returns ``model``."""
    refresh_weights(model)
    for module in model.modules():
        if is_pruned(module):
            vars(module)[PARAM].masked_fill_(module.weight_mask == 0, 0.0)  # +0.0, not a negative orig's -0.0
            _remove_reparametrisation(module, cached=True)
    return model


def _remove_reparametrisation(module: nn.Module, *, cached: bool = False) -> None:
    """``prune.remove(module, "weight")`` without its ``weight_orig * weight_mask``, which would allocate the
    folded weight again: it is already there, in ``weight_orig`` (``fold_masks(share=True)``) or, with
    ``cached``, in the cached ``weight`` that ``refresh_weights`` computed (``make_permanent``)."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == PARAM:
            del module._forward_pre_hooks[key]
    folded = vars(module).pop(PARAM)
    weight = module._parameters.pop(f"{PARAM}_orig")
    del module._buffers[f"{PARAM}_mask"]
    setattr(module, PARAM, nn.Parameter(folded, requires_grad=weight.requires_grad) if cached else weight)


def plain_state_dict(model: nn.Module, *, clone: bool = True) -> dict[str, torch.Tensor]:
    """State dict in unpruned naming (``weight`` = weight_orig, no masks) -- loadable into a fresh model.
    ``clone=False``: the model's own tensors (detached), for a reader that copies them elsewhere at once."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith(f"{PARAM}_mask"):
            continue
        state[key.replace(f"{PARAM}_orig", PARAM)] = value.detach().clone() if clone else value.detach()
    return state


def plain_state_bytes(model: nn.Module) -> int:
    """Bytes ``plain_state_dict(model)`` holds, without making it: parameters and buffers but the masks, a tied
    tensor once (``parameters()`` and ``named_buffers()`` deduplicate; ``state_dict()`` names it twice)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total + sum(b.numel() * b.element_size() for key, b in model.named_buffers()
                       if not key.endswith(f"{PARAM}_mask"))


def folded_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain state dict with the masks folded in (``weight`` = weight_orig * mask, pruned entries exactly
    zero): what a fresh, unpruned model loads to *be* the ticket, without torch prune."""
    state = plain_state_dict(model)
    for name, module in model.named_modules():
        if is_pruned(module):
            key = f"{name}.{PARAM}" if name else PARAM
            state[key] = (module.weight_orig * module.weight_mask).detach().clone()
    return state


def load_plain_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a plain state dict into a possibly pruned model (``weight`` goes to weight_orig); masks kept."""
    own = model.state_dict()
    translated = {}
    for key, value in state.items():
        orig_key = key[: -len(PARAM)] + f"{PARAM}_orig" if key.endswith(PARAM) else key
        translated[orig_key if orig_key in own else key] = value
    for key in own:
        if key.endswith(f"{PARAM}_mask"):
            translated[key] = own[key]
    model.load_state_dict(translated, strict=True)
    refresh_weights(model)
