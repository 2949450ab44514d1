"""Parameter and multiply-accumulate counts of a model, for the before/after of compaction."""

from __future__ import annotations

import torch
import torch.nn as nn

from compress.errors import UserError


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Entries of all parameters (of ``weight_orig``, not the mask, on a pruned model); ``nonzero``: only those != 0.

    On a pruned model the nonzero count uses the effective ``weight`` (orig * mask), so it is what the
    forward pass actually multiplies by.
    """
    if not nonzero:
        return sum(p.numel() for p in model.parameters())
    total = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name.endswith("_orig") and hasattr(module, name[: -len("_orig")]):
                param = getattr(module, name[: -len("_orig")])
            total += int(torch.count_nonzero(param.detach()))
    return total


def count_macs(model: nn.Module, example_input: torch.Tensor, nonzero: bool = False) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for ONE example (batch size divided out).

    Dense MACs count every weight at every output position (what a dense kernel does); ``nonzero``
    counts only weights != 0 (an ideal sparse kernel; borders of padded convs are not discounted).
    Other layers (BatchNorm, pooling, activations) are ignored: they are a rounding error next to these.
    The model runs once in eval mode, so BatchNorm statistics are untouched; modes are restored afterwards.
    """
    dense, sparse = mac_counts(model, example_input)
    return sparse if nonzero else dense


def mac_counts(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """(dense, nonzero) MACs per example from one forward pass; see ``count_macs``."""
    per_layer = layer_macs(model, example_input).values()
    return sum(dense for dense, _ in per_layer), sum(nonzero for _, nonzero in per_layer)


@torch.no_grad()
def layer_macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Per Conv2d / Linear module name, (dense, nonzero) MACs per example from one forward pass in eval
    mode (modes restored); a module called twice counts twice."""
    if example_input.dim() < 2:
        raise UserError(f"count_macs needs a batched input (N x ...), got shape {tuple(example_input.shape)}")
    x = example_input[:1]
    totals: dict[str, tuple[int, int]] = {}

    def hook(name: str, module: nn.Module, output: torch.Tensor) -> None:
        weight = module.weight
        if isinstance(module, nn.Conv2d):
            positions = output[0, 0].numel()
        else:
            positions = output[0].numel() // module.out_features  # leading dims beyond the batch (e.g. tokens)
        dense, nonzero = totals.get(name, (0, 0))
        totals[name] = (dense + positions * weight.numel(), nonzero + positions * int(torch.count_nonzero(weight)))

    modes = {module: module.training for module in model.modules()}
    handles = [module.register_forward_hook(lambda m, _inputs, output, name=name: hook(name, m, output))
               for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    try:
        model.eval()
        device = next((p.device for p in model.parameters()), x.device)
        model(x.to(device))
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return totals
