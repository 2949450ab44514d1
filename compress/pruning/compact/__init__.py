"""Compaction: torch-to-torch surgery that removes dead units (a plain smaller model computing the same thing).

An ``nn.Sequential`` is compacted by ``sequential`` (dead-in units folded into biases too); any other graph by
``graph`` (dead channels and heads removed with Torch-Pruning). Export and bench both use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from compress.models.unwrap import unwrap_model
from compress.pruning.compact.graph import compact_graph
from compress.pruning.compact.sequential import SUPPORTED, Compaction, compact_sequential

__all__ = ["SUPPORTED", "Compaction", "compact", "compact_graph", "compact_model", "compact_sequential"]


def compact(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None) -> Compaction:
    """``compact_model`` plus what it did: units per weighted layer before/after, dead-in units kept."""
    if not isinstance(unwrap_model(model), nn.Sequential):
        return compact_graph(model, example_inputs)  # any graph, through Torch-Pruning
    return compact_sequential(model)


def compact_model(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None) -> nn.Module:
    """A smaller plain model computing exactly what ``model`` computes in eval mode.

    ``model`` may be pruned (torch prune masks) or plain; it is not modified. An ``nn.Sequential`` is
    compacted by ``compress.pruning.compact.sequential`` (dead-in units are folded into biases too); any other
    graph by ``compress.pruning.compact.graph`` (dead channels and heads removed with Torch-Pruning; its
    ``example_inputs`` default to a guess from the model). Unsupported models raise ValueError.
    """
    return compact(model, example_inputs).module
