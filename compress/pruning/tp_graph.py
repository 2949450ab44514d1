"""Torch-Pruning's pruning groups, bounded in time and memory.

``DependencyGraph.get_all_groups`` calls ``get_pruning_group`` once per Conv/Linear, and each call
(1) re-derives the index mappings of every reshape / concat / split / slice node of the whole graph
(``update_index_mapping``): groups x nodes, quadratic in the model's size; and (2) follows the
dependencies with index lists that a flatten mapping multiplies by ``H * W``; where a reshape's mapping
does not invert exactly (EfficientFormerV2's attention at 64 px), a cycle through it reaches the same
layer again and again with new indices, and the lists grow until the process is killed (24 GB).

Here the mappings are derived once per graph, and a group is abandoned (``TooWide``) as soon as it
holds more index entries than ``MAX_ENTRIES`` or revisits one (layer, handler) more than
``MAX_VISITS`` times: such a group crosses a reshape whose channel mapping Torch-Pruning cannot state,
so it is not one we could prune exactly anyway. Everything else is Torch-Pruning's own algorithm
(``torch_pruning/dependency/graph.py``, ``get_pruning_group`` / ``get_all_groups``, v1.6).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch.nn as nn

MAX_ENTRIES = 50_000  # index entries in one group (~3 MB of Torch-Pruning's objects); a VGG
# classifier's conv -> flatten -> linear at 7 x 7 needs 512 x 49 = 25k
MAX_VISITS = 64  # times one (layer, handler) may be reached with new indices


class TooWide(Exception):
    """A pruning group that grows without bound (module docstring)."""


class Unmappable(Exception):
    """A pruning group through a node whose index mapping Torch-Pruning could not derive (a split's offsets
    left short where the widths were not inferred): which channels it maps to is unknown, so the group is
    not one we could prune exactly."""


@contextlib.contextmanager
def tolerant_mappings() -> Iterator[None]:
    """Torch-Pruning 1.6 aborts the whole graph on two index mappings it cannot compute: a concat whose
    input widths it sums before checking them for None (a width it cannot infer: CSPDarkNet, CoaT; a
    TypeError) or reads from a split's sizes past their end (a concat of slices of a split's part, as in
    rotary embeddings: Gemma 4's ViT; an IndexError), and a reshape whose inferred channel count is 0
    (SHViT's partial-channel attention; a ZeroDivisionError). Such a node keeps Torch-Pruning's default (identity) mapping instead; the groups
    through it are then checked like every other (``compress.pruning.groups._consistent``, the plan-time
    probe ``compress.pruning.probe``), so a wrong mapping is refused, never used."""
    from torch_pruning.dependency import index_mapping

    originals = {"update_concat_index_mapping": (index_mapping.update_concat_index_mapping, (TypeError, IndexError)),
                 "update_reshape_index_mapping": (index_mapping.update_reshape_index_mapping, ArithmeticError)}

    def tolerant(original, errors):
        def update(graph, node) -> None:
            try:
                original(graph, node)
            except errors:  # this node's mapping stays as it is
                pass
        return update

    for name, (original, errors) in originals.items():
        setattr(index_mapping, name, tolerant(original, errors))
    try:
        yield
    finally:
        for name, (original, _) in originals.items():
            setattr(index_mapping, name, original)


def _prepared(graph) -> None:
    from torch_pruning.dependency import index_mapping

    if not getattr(graph, "_compress_mapped", False):
        with tolerant_mappings():
            index_mapping.update_index_mapping(graph)
        graph._compress_mapped = True


def pruning_group(graph, module: nn.Module, pruning_fn, idxs: Sequence[int], *, fresh: bool = True):
    """``graph.get_pruning_group(module, pruning_fn, idxs)``, bounded (module docstring). ``fresh``:
    re-derive the index mappings first, as Torch-Pruning does -- needed after any surgery (a concat's
    offsets change); ``all_groups`` derives them once for the whole unchanged graph."""
    from torch_pruning import _helpers, function
    from torch_pruning import ops as tp_ops
    from torch_pruning.dependency.dependency import Dependency
    from torch_pruning.dependency.group import Group
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

    if module not in graph.module2node:
        raise ValueError(f"Module {module} is not in the dependency graph.")
    if isinstance(module, tp_ops.TORCH_CONV) and module.groups == module.out_channels and module.out_channels > 1:
        pruning_fn = function.prune_depthwise_conv_out_channels
    hybrid = [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
    if fresh:
        graph._compress_mapped = False
    _prepared(graph)
    group = Group()
    root = graph.module2node[module]
    group.add_dep(dep=Dependency(pruning_fn, pruning_fn, source=root, target=root), idxs=hybrid)
    visited, visits, entries = set(), {}, len(hybrid)
    stack = [(group[0].dep, hybrid)]
    while stack:
        dep, current = stack.pop()
        node, fn = dep.target, dep.handler
        visited.add(node)
        for new_dep in node.dependencies:
            if not new_dep.is_triggered_by(fn):
                continue
            new = current
            for mapping in new_dep.index_mapping:
                if mapping is None:
                    continue
                if isinstance(mapping, _FlattenIndexMapping) and not mapping.reverse \
                        and entries + len(new) * mapping._stride > MAX_ENTRIES:
                    raise TooWide(f"{type(module).__name__} group: a flatten of {len(new)} x {mapping._stride}")
                try:
                    new = mapping(new)
                except IndexError as error:  # Torch-Pruning's split mapping indexes offsets it never set
                    raise Unmappable(f"{type(module).__name__} group: {type(mapping).__name__}") from error
            if not new:
                continue
            if new_dep.target in visited and group.has_pruning_op(new_dep, new):
                continue
            key = (new_dep.target, new_dep.handler)
            visits[key] = visits.get(key, 0) + 1
            entries += len(new)
            if visits[key] > MAX_VISITS or entries > MAX_ENTRIES:
                raise TooWide(f"{type(module).__name__} group grows without bound")
            group.add_dep(new_dep, new)
            stack.append((new_dep, new))
    merged = Group()
    for dep, hybrid_idxs in group.items:
        if isinstance(dep.target.module, nn.Parameter) and any(dep.target.module is p for p in graph.ignored_params):
            continue
        merged.add_and_merge(dep, hybrid_idxs)
    merged._DG = graph
    for i in range(len(merged)):
        hybrid_idxs = merged[i].idxs
        merged[i] = _helpers.GroupItem(merged[i].dep, _helpers.to_plain_idxs(hybrid_idxs))
        merged[i].root_idxs = _helpers.to_root_idxs(hybrid_idxs)
    return merged


def all_groups(graph, root_module_types: tuple = (nn.Conv2d, nn.Linear)) -> Iterator:
    """``graph.get_all_groups(root_module_types=...)``, bounded: a group that grows without bound is
    skipped (its layers stay whole)."""
    visited: set[int] = set()
    ignored = list(graph.IGNORED_LAYERS_IN_TRACING)
    for module in list(graph.module2node.keys()):
        if not isinstance(module, root_module_types) or id(module) in visited or any(module is m for m in ignored):
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        try:
            group = pruning_group(graph, module, pruner.prune_out_channels,
                                  list(range(pruner.get_out_channels(module))), fresh=False)
        except (TooWide, Unmappable, ArithmeticError):  # unbounded, or a mapping Torch-Pruning cannot compute (GCViT)
            visited.add(id(module))
            continue
        prunable = True
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(id(dep.target.module))
                prunable &= not any(dep.target.module is m for m in ignored)
        if prunable:
            yield group
