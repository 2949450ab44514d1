"""Initialisers shared by the paper models."""

from __future__ import annotations

import torch.nn as nn


def glorot_gaussian_(model: nn.Module) -> nn.Module:
    """Gaussian Glorot (Xavier normal) weights and zero biases, as in Frankle & Carbin (2019)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def kaiming_normal_(model: nn.Module) -> nn.Module:
    """He init for conv/linear, BatchNorm at weight 1 / bias 0 (the CIFAR VGG/ResNet convention)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
