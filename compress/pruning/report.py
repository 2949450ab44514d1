"""Sparsity reports: per layer and in total, over the pruning targets."""

from __future__ import annotations

import torch.nn as nn

from compress.pruning.apply import is_pruned


def sparsity_report(model: nn.Module, names: list[str]) -> dict:
    """``layers``: name, shape, total, remaining, fraction remaining; plus totals over ``names``."""
    modules = dict(model.named_modules())
    layers = []
    for name in names:
        module = modules[name]
        weight = module.weight_orig if is_pruned(module) else module.weight
        total = weight.numel()
        remaining = int(module.weight_mask.sum()) if is_pruned(module) else total
        layers.append({"name": name, "shape": list(weight.shape), "total": total, "remaining": remaining,
                       "fraction_remaining": remaining / total})
    total = sum(layer["total"] for layer in layers)
    remaining = sum(layer["remaining"] for layer in layers)
    return {"layers": layers, "total": total, "remaining": remaining,
            "weights_remaining": remaining / total if total else 1.0}
