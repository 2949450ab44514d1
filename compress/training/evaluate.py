"""Loss and accuracy over a split, batched, without gradients."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.no_grad()
def evaluate(model: nn.Module, split, batch_size: int = 1000, autocast: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over ``split``; (nan, nan) for an empty split."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros(())
    correct = torch.zeros((), dtype=torch.long)
    count = 0
    for x, y in split.eval_batches(batch_size):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        loss_sum = loss_sum.to(x.device) + F.cross_entropy(logits.float(), y, reduction="sum")
        correct = correct.to(x.device) + (logits.argmax(1) == y).sum()
        count += len(y)
    model.train(was_training)
    if count == 0:
        return float("nan"), float("nan")
    return float(loss_sum) / count, float(correct) / count
