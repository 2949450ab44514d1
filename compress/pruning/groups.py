"""Channel groups of any graph, from Torch-Pruning's ``DependencyGraph``, as plain data.

A group is a set of *units* (output channels of a conv/linear, or attention heads) that can only be
removed together: the producers' output rows, everything coupled through BatchNorm, residual adds,
concat, depthwise convs and squeeze-excite gates, and every consumer's input columns. Here a group is
reduced to what the masks need: for each Conv2d/Linear ``weight`` it touches, the dimension (0 = output
rows, 1 = input columns) and, per unit, the positions along it (several for conv -> flatten -> linear).

Why masking only these weights is exact: a unit whose producer rows *and* consumer columns are all
zero may still emit a constant (bias, BatchNorm shift), but every path from it to the output goes
through a masked consumer column, so it contributes exactly nothing, and compaction can remove it
together with its BatchNorm entries and biases. That holds only for groups whose values reach the
output through per-channel operations; a group is left out (never pruned) when it touches a
LayerNorm / GroupNorm (the residual stream of a ViT or ConvNeXt: normalising across channels is not
per-channel), a bare ``nn.Parameter``, an attention reshape (heads are handled whole, below) or the
model's output itself (the classifier's classes).

Attention heads (timm ``Attention``: ``qkv``, ``proj``, ``num_heads``, ``head_dim``): one unit per head,
its q, k and v rows of ``qkv`` and its columns of ``proj``. Grouped convolutions (RegNet, ResNeXt): one
unit per conv group, joining the channels that feed it and the channels it emits (``graph_groups``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.pruning.tp_graph import all_groups, tolerant_mappings
from compress.runtime import release_cycles


@dataclass(frozen=True)
class Member:
    """One Conv2d/Linear weight in a group: ``dim`` 0 = output rows, 1 = input columns;
    ``index[u]`` the positions along ``dim`` that unit ``u`` covers."""

    module: str
    dim: int
    index: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class ChannelGroup:
    """Units that are pruned together. ``name`` is the root module (the first producer), ``kind``
    ``channels`` or ``heads``; ``producers`` are the modules whose outputs shrink."""

    name: str
    kind: str
    units: int
    members: tuple[Member, ...]
    unit_width: int = 1  # channels per unit: head_dim for heads, the group width for conv groups

    @property
    def producers(self) -> tuple[str, ...]:
        return tuple(m.module for m in self.members if m.dim == 0)

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.module for m in self.members))


def per_unit(member: Member, values: torch.Tensor, units: int) -> torch.Tensor:
    """Sum per unit of ``values`` (one per position along ``member.dim``, on the CPU) over the unit's
    positions in ``member``; a unit without positions there gets 0 (units may cover different counts
    of positions: concat, conv -> flatten -> linear)."""
    unit_ids = [u for u, positions in enumerate(member.index) for _ in positions]
    flat = [p for positions in member.index for p in positions]
    total = torch.zeros(units, dtype=values.dtype)
    if flat:
        total.index_add_(0, torch.tensor(unit_ids, dtype=torch.long), values[torch.tensor(flat, dtype=torch.long)])
    return total


_POSITION_CHUNK = 1 << 22  # entries reduced at a time: a float64 working copy of 32 MB, not of a whole layer


def per_position(tensor: torch.Tensor, dim: int, reduce: Callable[[torch.Tensor, list[int]], torch.Tensor],
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """``reduce(part, dims)`` of ``tensor`` (times ``mask``, when given) over every dim but ``dim``: one
    value per position along ``dim``, on the CPU. A slab of positions at a time -- a transposed, flattened
    float64 copy of VGG's 102M-weight layer would be 0.8 GB per intermediate."""
    positions = tensor.shape[dim]
    others = [d for d in range(tensor.dim()) if d != dim]
    step = max(1, _POSITION_CHUNK // max(1, tensor.numel() // max(1, positions)))
    parts = []
    for start in range(0, positions, step):
        part = tensor.narrow(dim, start, min(step, positions - start))
        if mask is not None:
            part = part * mask.narrow(dim, start, part.shape[dim])
        parts.append(reduce(part, others).cpu())
    return torch.cat(parts) if parts else torch.zeros(0)


def any_nonzero(part: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """``per_position``'s reduction for "is any entry of this position nonzero"."""
    return part.ne(0).any(dim=dims) if dims else part.ne(0)


def _tp():
    try:
        import torch_pruning
    except ImportError:  # an optional extra
        raise UserError("prune.granularity: channel on a model that is not an nn.Sequential needs Torch-Pruning: "
                        "pip install -e '.[structured]'") from None
    return torch_pruning


def is_attention(module: nn.Module) -> bool:
    """A timm-style attention whose heads can be removed whole (no norm or gate across heads)."""
    if not all(hasattr(module, a) for a in ("qkv", "proj", "num_heads", "head_dim")):
        return False
    if not isinstance(module.qkv, nn.Linear) or not isinstance(module.proj, nn.Linear):
        return False
    # anything else with weights (talking-heads mixing, relative-position tables shaped by num_heads)
    # would see a head count that no longer matches: such an attention is left whole
    if any(True for _ in module.parameters(recurse=False)):
        return False
    if any(name not in ("qkv", "proj") and any(True for _ in child.parameters())
           for name, child in module.named_children()):
        return False
    attn_dim = module.num_heads * module.head_dim
    return (module.qkv.out_features == 3 * attn_dim and module.proj.in_features == attn_dim
            and isinstance(getattr(module, "norm", nn.Identity()), nn.Identity)
            and getattr(module, "gate", None) is None)


def build_graph(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]):
    """Torch-Pruning's dependency graph of ``model`` (traced in eval mode; modes restored afterwards)."""
    tp = _tp()
    modes = {module: module.training for module in model.modules()}
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with tolerant_mappings():
                return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    except UserError:
        raise
    except Exception as error:  # tracing a user's model: say which input it was traced with
        shapes = [tuple(x.shape) for x in ([example_inputs] if torch.is_tensor(example_inputs) else example_inputs)]
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise UserError(f"channel groups: tracing {type(model).__name__} with an input of shape {shapes} failed "
                        f"({type(error).__name__}: {first}); pass a batch the model accepts as example_inputs= "
                        "(LotterySearch, prune_channels, compact_model) or set data.image_size") from None
    finally:
        for module, mode in modes.items():
            module.training = mode


def _unsafe(tp, module: object) -> bool:
    """Operations through which a pruned channel's value is not provably irrelevant (module docstring)."""
    ops = tp.ops
    if isinstance(module, nn.Conv2d):
        return module.groups != 1 and not (module.groups == module.in_channels == module.out_channels)
    if isinstance(module, (nn.Linear, nn.modules.batchnorm._BatchNorm)):
        return False
    # a channel slice (GhostNet's ``out[:, :out_chs]``) is not: Torch-Pruning maps indices through it as if
    # nothing were cut off, so a "dead" unit past the cut is really a live one elsewhere
    return not isinstance(module, (ops._ElementWiseOp, ops._ReshapeOp, ops._ConcatOp, ops._SplitOp,
                                   ops._ExpandOp)) or isinstance(module, ops._OutputOp)


@dataclass
class Part:
    """How to remove a group's units with Torch-Pruning: the pruning group rooted at ``root`` / ``handler``
    takes root indices ``unit_roots[u]`` for unit ``u``; ``skip`` is a grouped conv whose inputs are removed
    by dropping whole conv groups (its ``groups`` shrink), not by Torch-Pruning's own in-channel rule."""

    root: nn.Module
    handler: object
    unit_roots: list[list[int]]
    skip: nn.Module | None = None


def _grouped(module: object) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and not (
        module.groups == module.in_channels == module.out_channels)


def _members(graph, items, names: dict, units: int, unit_of) -> list[Member]:
    """Conv/Linear members of Torch-Pruning group items; ``unit_of(root_idx)`` is the unit of a root index."""
    members: dict[tuple[str, int], list[set[int]]] = {}
    for item in items:
        module = item.dep.target.module
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        out = graph.is_out_channel_pruning_fn(item.dep.handler)
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not out:
            continue  # depthwise: its inputs are its outputs; grouped: whole conv groups go (see ``Part``)
        slot = members.setdefault((names[module], 0 if out else 1), [set() for _ in range(units)])
        for idx, root in zip(item.idxs, item.root_idxs, strict=True):  # a module reached twice: union
            slot[unit_of(root)].add(int(idx))
    return [Member(m, d, tuple(tuple(sorted(p)) for p in idx)) for (m, d), idx in members.items()]


def _width(module: nn.Module, dim: int) -> int:
    return module.weight.shape[dim] if dim == 0 or not isinstance(module, nn.Conv2d) else module.in_channels


def _consistent(members: list[Member], modules: dict[str, nn.Module]) -> bool:
    """Whether Torch-Pruning's index mapping is usable: every position inside its weight (CSPNet's split +
    concat maps past the end), every unit read by some consumer column, no position claimed by two units."""
    read = [False] * len(members[0].index) if members else []
    for member in members:
        width = _width(modules[member.module], member.dim)
        flat = [p for positions in member.index for p in positions]
        if any(not 0 <= p < width for p in flat) or len(set(flat)) != len(flat):
            return False
        if member.dim == 1:
            read = [r or bool(positions) for r, positions in zip(read, member.index, strict=True)]
    return all(read)


def graph_groups(graph, model: nn.Module) -> list[tuple[ChannelGroup, list[Part]]]:
    """The safe channel groups of a built graph, each with how to remove its units (``Part``s).

    A grouped convolution (RegNet, ResNeXt) joins the group feeding it and the group it feeds into one
    group whose unit is a whole conv group: its input channels, its output channels, and everything
    coupled to either."""
    tp = _tp()
    names = {module: name for name, module in model.named_modules()}
    modules = dict(model.named_modules())
    attention_parts = {id(part) for m in model.modules() if is_attention(m) for part in (m.qkv, m.proj)}
    found = []
    feeding: dict[nn.Module, tuple] = {}  # grouped conv -> (tp group, its in-item) of the group feeding it
    fed: dict[nn.Module, tuple] = {}  # grouped conv -> (tp group, its out-item)
    for group in all_groups(graph, (nn.Conv2d, nn.Linear)):
        items = list(group)
        if any(id(item.dep.target.module) in attention_parts for item in items):
            continue
        grouped = [item for item in items if _grouped(item.dep.target.module)]
        if grouped:
            if len({id(i.dep.target.module) for i in grouped}) == 1 and len(grouped) == 1 and not any(
                    _unsafe(tp, i.dep.target.module) for i in items if i is not grouped[0]):
                conv = grouped[0].dep.target.module
                out = graph.is_out_channel_pruning_fn(grouped[0].dep.handler)
                (fed if out else feeding)[conv] = (group, grouped[0])
            continue
        if any(_unsafe(tp, item.dep.target.module) for item in items):
            continue
        units = len(items[0].idxs)
        members = _members(graph, items, names, units, lambda root: root)
        if not any(m.dim == 0 for m in members) or not any(m.dim == 1 for m in members):
            continue  # nothing consumes it through a weight: its value reaches the output directly
        if not _consistent(members, modules):
            continue
        root = next(m.module for m in members if m.dim == 0)
        part = Part(items[0].dep.target.module, items[0].dep.handler, [[u] for u in range(units)])
        found.append((ChannelGroup(root, "channels", units, tuple(members)), [part]))
    for conv, (group_out, item_out) in fed.items():
        if conv not in feeding:
            continue
        group_in, item_in = feeding[conv]
        units = conv.groups
        per_in, per_out = conv.in_channels // units, conv.out_channels // units
        parts, members = [], []
        for group, item, per, skip in ((group_in, item_in, per_in, conv), (group_out, item_out, per_out, None)):
            unit_of = {int(r): int(i) // per for i, r in zip(item.idxs, item.root_idxs, strict=True)}
            items = list(group)
            members += _members(graph, items, names, units, lambda root, m=unit_of: m[int(root)])
            roots: list[list[int]] = [[] for _ in range(units)]
            for root, unit in unit_of.items():
                roots[unit].append(root)
            parts.append(Part(items[0].dep.target.module, items[0].dep.handler, roots, skip))
        if any(m.dim == 1 for m in members) and _consistent(members, modules):
            found.append((ChannelGroup(names[conv], "conv-groups", units, tuple(members), per_out), parts))
    return found


def head_groups(model: nn.Module) -> list[ChannelGroup]:
    """One group per timm-style attention: a unit per head (q, k, v rows of qkv, columns of proj)."""
    groups = []
    for name, module in model.named_modules():
        if not is_attention(module):
            continue
        heads, dim = module.num_heads, module.head_dim
        attn_dim = heads * dim
        rows = tuple(tuple(s * attn_dim + h * dim + j for s in range(3) for j in range(dim)) for h in range(heads))
        cols = tuple(tuple(h * dim + j for j in range(dim)) for h in range(heads))
        prefix = f"{name}." if name else ""
        groups.append(ChannelGroup(name or "attn", "heads", heads,
                                   (Member(prefix + "qkv", 0, rows), Member(prefix + "proj", 1, cols)), dim))
    return groups


def example_inputs_for(model: nn.Module, image_size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """An input batch (2 examples, seeded) ``model`` accepts, for tracing; a function of the model alone
    (never of what was traced before in the process). Side: ``image_size``, else timm's
    ``patch_embed.img_size``, else timm's ``pretrained_cfg['input_size']``, else 64; channels: the first
    conv's. Channel groups do not depend on the spatial size for models with global pooling; a model
    that needs one exact size (conv -> flatten -> linear) must be given its input (``example_inputs=``)."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is None:
        raise UserError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
    if isinstance(first, nn.Linear):
        return torch.randn(2, first.in_features, generator=torch.Generator().manual_seed(0))
    side = image_size
    patch = getattr(model, "patch_embed", None)
    cfg = getattr(model, "pretrained_cfg", None)
    if side is None and patch is not None and getattr(patch, "img_size", None) is not None:
        side = patch.img_size
    if side is None and isinstance(cfg, dict) and len(cfg.get("input_size") or ()) == 3:
        side = tuple(cfg["input_size"][1:])
    side = tuple(side) if isinstance(side, (tuple, list)) else (side or 64, side or 64)
    return torch.randn(2, first.in_channels, *side, generator=torch.Generator().manual_seed(0))


def find_groups(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> list[ChannelGroup]:
    """Every prunable channel group and attention-head group of ``model`` (not modified: traced on a
    folded copy, so torch prune hooks do not show up as operations)."""
    from compress.pruning.apply import fold_masks

    plain = fold_masks(model).cpu()
    inputs = example_inputs.cpu() if torch.is_tensor(example_inputs) else [x.cpu() for x in example_inputs]
    graph = build_graph(plain, inputs)
    order = {name: i for i, (name, _) in enumerate(plain.named_modules())}
    groups = [group for group, _ in graph_groups(graph, plain)] + head_groups(plain)
    del graph, plain
    release_cycles()  # Torch-Pruning's graph holds the traced copy in reference cycles
    return sorted(groups, key=lambda g: order.get(g.members[0].module, 0))
