"""Quantization-aware fine-tuning of a ticket: per-channel symmetric int8 fake-quant of the masked weights.

A forward pre-hook registered after torch prune's own hook replaces ``module.weight`` (already
``weight_orig * weight_mask``) with ``torch.fake_quantize_per_channel_affine`` of it: scale
``max|w| / 127`` per output channel, zero point 0, range [-127, 127] -- the weights int8 export writes.
A pruned weight is 0 before fake-quant and 0 after it, and the gradient reaches ``weight_orig`` only
through the mask, so masks and pruned zeros are kept (``check_masks_kept``). Activations are not
fake-quantized: dynamic quantization measures them per batch, and static ranges come from calibration.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.errors import UserError
from compress.pruning import get_masks

QMAX = 127


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 fake quantization (straight-through gradient)."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / QMAX).clamp_min(1e-12).float()
    zero_point = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -QMAX, QMAX)


def _hook(module: nn.Module, _args) -> None:
    module.weight = fake_quant_weight(module.weight)


def attach_fake_quant(model: nn.Module) -> list:
    """Fake-quant the weight of every pruned module; returns the hook handles (``.remove()`` each)."""
    masks = get_masks(model)
    if not masks:
        raise UserError("QAT fine-tuning needs a pruned model (torch prune masks installed)")
    modules = dict(model.named_modules())
    return [modules[name].register_forward_pre_hook(_hook) for name in masks]


def qat_finetune(model: nn.Module, data, *, iterations: int, lr: float, batch_size: int, seed: int = 0,
                 augment: bool = False) -> dict:
    """Fine-tune ``model`` (pruned, masks installed) in place with fake-quantized weights.

    Adam at ``lr`` on ``data.train`` (batch ``k`` a function of ``(seed, k)``: deterministic). Returns
    the loss of the first and last 10% of steps. The model keeps its masks; hooks are removed at the end.
    """
    if iterations < 1:
        raise UserError(f"export.qat_iterations must be >= 1, got {iterations}")
    masks_before = {name: mask.clone() for name, mask in get_masks(model).items()}
    handles = attach_fake_quant(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    model.train()
    try:
        stream = data.train.batches(batch_size, seed + 7919, augment=augment)  # not the training order again
        for _, (x, y) in zip(range(iterations), stream, strict=False):
            loss = F.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                raise UserError(f"QAT fine-tuning diverged (loss {float(loss)}); lower its learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        for handle in handles:
            handle.remove()
        model.eval()
    check_masks_kept(model, masks_before)
    tenth = max(1, len(losses) // 10)
    return {"iterations": len(losses), "lr": lr, "batch_size": batch_size,
            "loss_first": sum(losses[:tenth]) / tenth, "loss_last": sum(losses[-tenth:]) / tenth}


@torch.no_grad()
def check_masks_kept(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Same masks as before and every pruned weight exactly zero in what the forward uses."""
    modules = dict(model.named_modules())
    now = get_masks(model)
    for name, mask in masks.items():
        if name not in now or not torch.equal(now[name], mask):
            raise RuntimeError(f"QAT changed the mask of {name!r}")
        weight = modules[name].weight_orig * now[name]
        if torch.count_nonzero(weight[mask == 0]):
            raise RuntimeError(f"QAT left pruned weights of {name!r} non-zero")
