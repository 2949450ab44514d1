"""Exact compaction of any graph: dead channels and attention heads physically removed with Torch-Pruning.

A unit of a channel group (``compress.pruning.groups``) is dead when every consumer's input columns
for it are exactly zero in the folded model: whatever it carries (a bias, a BatchNorm shift, a residual
sum of those) is multiplied by zero wherever it is used, so removing it -- the producers' rows and
biases, BatchNorm entries and running statistics, the consumers' columns, through residual adds,
concat, depthwise convs and squeeze-excite -- leaves the output unchanged up to float summation order.
Torch-Pruning's ``group.prune(idxs)`` does the surgery on a deep copy of the folded model; an attention
head is dead when its ``proj`` columns are zero and goes with its q, k and v rows. Every group keeps at
least one unit. The result is checked against the masked model in eval mode (``compress.tolerance``); a failure is a bug and raises.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.models.unwrap import unwrap_model
from compress.pruning.apply import fold_masks
from compress.pruning.compact.sequential import Compaction
from compress.pruning.groups import (
    ChannelGroup,
    Part,
    any_nonzero,
    build_graph,
    example_inputs_for,
    graph_groups,
    is_attention,
    per_position,
    per_unit,
)
from compress.pruning.tp_graph import pruning_group
from compress.runtime import model_device
from compress.tolerance import RULE, allowed, exact_outputs, judge, max_abs, output_scale


def _dead_units(group: ChannelGroup, modules: dict[str, nn.Module]) -> list[int]:
    """Units whose every consumer column is exactly zero. Never all of a member's units: every weight
    keeps at least one row / column (a concat's inputs are separate producers of one group: each keeps
    one of its units, dead or not -- a dead unit contributes nothing either way), so no tensor is empty."""
    live = torch.zeros(group.units, dtype=torch.float64)
    for member in group.members:
        if member.dim != 1:
            continue
        nonzero = per_position(modules[member.module].weight.detach(), 1, any_nonzero).double()
        live += per_unit(member, nonzero, group.units)
    dead = live == 0
    for member in group.members:
        covered = [u for u, positions in enumerate(member.index) if positions]
        if covered and all(bool(dead[u]) for u in covered):
            dead[covered[0]] = False
    return dead.nonzero().flatten().tolist()


def _empties(graph, group) -> bool:
    """Whether removing ``group``'s indices would leave some layer with no output or input channel
    (Torch-Pruning also removes coupled channels of layers outside our members, e.g. GhostNet's)."""
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        out = graph.is_out_channel_pruning_fn(item.dep.handler)
        width = module.weight.shape[0] if out else (module.in_channels if isinstance(module, nn.Conv2d)
                                                     else module.in_features)
        if len(set(item.idxs)) >= width:
            return True
    return False


def _prune_units(graph, parts: list[Part], dead: list[int]) -> bool:
    """Remove ``dead`` units of a group with Torch-Pruning, part by part (a grouped conv loses whole conv
    groups); False, and nothing removed, when that would empty a layer (the units stay: dead, so exact)."""
    groups = [pruning_group(graph, part.root, part.handler,
                            sorted(root for unit in dead for root in part.unit_roots[unit])) for part in parts]
    if any(_empties(graph, group) for group in groups):
        return False
    for part, group in zip(parts, groups, strict=True):
        if part.skip is None:
            group.prune(record_history=False)
            continue
        for item in group:  # everything but the grouped conv's input channels (its weight keeps in/groups columns)
            if item.dep.target.module is part.skip and not graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            item.dep(item.idxs)
        conv = part.skip
        conv.in_channels -= conv.in_channels // conv.groups * len(dead)
        conv.groups -= len(dead)
    return True


def _widths(model: nn.Module) -> dict[str, int]:
    return {name: m.out_features if isinstance(m, nn.Linear) else m.out_channels
            for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


@torch.no_grad()
def _remove_heads(model: nn.Module) -> int:
    """Drop the heads of timm-style attentions whose ``proj`` columns are all zero; returns heads removed."""
    import torch_pruning as tp

    removed = 0
    for module in model.modules():
        if not is_attention(module) or module.num_heads < 2:
            continue
        heads, dim = module.num_heads, module.head_dim
        zero = module.proj.weight.detach().eq(0).all(0).view(heads, dim).all(1)
        if bool(zero.all()):
            zero[0] = False
        dead = zero.nonzero().flatten().tolist()
        if not dead:
            continue
        attn_dim = heads * dim
        tp.prune_linear_out_channels(module.qkv, [s * attn_dim + h * dim + j for s in range(3) for h in dead
                                                  for j in range(dim)])
        tp.prune_linear_in_channels(module.proj, [h * dim + j for h in dead for j in range(dim)])
        module.num_heads = heads - len(dead)
        if hasattr(module, "attn_dim"):
            module.attn_dim = module.num_heads * dim
        removed += len(dead)
    return removed


def _follow_widths(model: nn.Module) -> list[nn.Module]:
    """Modules that hold one fixed filter repeated per channel (timm's ``BlurPool2d``: a depthwise blur
    whose buffer has a row per channel) switched to their own channel-agnostic mode (``channels=None``:
    the one filter expanded to whatever width arrives), so they follow the surgery instead of breaking
    it. The same filter on every channel: the output is unchanged. Only when every row is the first."""
    switched = []
    for module in model.modules():
        filt = getattr(module, "filt", None)
        if type(module).__name__ == "BlurPool2d" and getattr(module, "channels", None) is not None \
                and isinstance(filt, torch.Tensor) and filt.dim() == 4 and bool((filt == filt[:1]).all()):
            module.channels = None
            module.filt = filt[:1].clone()
            switched.append(module)
    return switched


def _pin_widths(model: nn.Module, switched: list[nn.Module], inputs) -> None:
    """``_follow_widths`` undone at the widths the compacted model feeds them: a fixed channel count is
    what the ONNX exporters need for the grouped convolution."""
    if not switched:
        return
    widths: dict[nn.Module, int] = {}

    def record(module: nn.Module, args: tuple) -> None:  # returns None: the input stays as is
        widths.setdefault(module, int(args[0].shape[1]))

    hooks = [module.register_forward_pre_hook(record) for module in switched]
    try:
        _outputs(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    for module in switched:
        if module in widths:
            module.channels = widths[module]
            module.filt = module.filt.expand(widths[module], -1, -1, -1).clone()


def _outputs(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(inputs) if torch.is_tensor(inputs) else model(*inputs)
    return [out] if torch.is_tensor(out) else [o for o in out if torch.is_tensor(o)]


def compact_graph(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None) -> Compaction:
    """``compact_model`` plus what it did: output units per Conv2d/Linear before/after."""
    model = unwrap_model(model)
    if example_inputs is None:
        example_inputs = example_inputs_for(model)
    device = model_device(model)
    inputs = example_inputs.to(device) if torch.is_tensor(example_inputs) else [x.to(device) for x in example_inputs]
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        reference = _outputs(model, inputs)
    finally:
        for module, mode in modes.items():
            module.training = mode
    small = fold_masks(model).eval()  # a deep copy; ``model`` keeps its masks
    switched = _follow_widths(small)
    before = _widths(small)
    graph = build_graph(small, inputs)
    modules = dict(small.named_modules())
    plans = [(parts, _dead_units(group, modules)) for group, parts in graph_groups(graph, small)]
    with torch.no_grad():
        for parts, dead in plans:  # dead units were read before any surgery: indices are original
            if dead:
                _prune_units(graph, parts, dead)
    heads = _remove_heads(small)
    small.eval()
    _pin_widths(small, switched, inputs)
    actual = _outputs(small, inputs)
    scale = output_scale(float(r.abs().max()) for r in reference if r.numel())
    diff = max(float((a.float() - r.float()).abs().max()) for a, r in zip(actual, reference, strict=True))
    if not judge(diff, scale, reference, lambda exact: max_abs(actual, exact),
                 lambda: exact_outputs(fold_masks(model).eval(), inputs, _outputs)).passes:
        raise RuntimeError(f"compact_model: compacted {type(model).__name__} differs from the masked model by "
                           f"{diff:.3g} (> {allowed(scale):.3g}: {RULE}); this is a bug in compress")
    after = _widths(small)
    units = [{"layer": name, "type": type(modules_type).__name__, "before": width, "after": after.get(name, width)}
             for (name, width), modules_type in zip(before.items(), (dict(small.named_modules())[n] for n in before),
                                                    strict=True)]
    result = Compaction(small, units, 0)
    result.heads_removed = heads
    result.max_abs_diff = diff
    return result


def compact_model(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None) -> nn.Module:
    """A smaller plain model (no prune reparametrisation, eval mode) computing exactly what ``model``
    computes in eval mode: every dead channel and head removed (module docstring). ``model`` may be
    pruned or plain, any graph Torch-Pruning can trace; it is not modified. ``example_inputs``: a batch
    the model accepts (default: guessed from the model, see ``compress.pruning.groups.example_inputs_for``)."""
    if not isinstance(model, nn.Module):
        raise UserError(f"compact_model needs an nn.Module, got {type(model).__name__}")
    return compact_graph(model, example_inputs).module
