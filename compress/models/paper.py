"""The networks of Frankle & Carbin (2019): LeNet-300-100, LeNet-5 and Conv-2/4/6."""

from __future__ import annotations

import torch.nn as nn

from compress.models.init import glorot_gaussian_
from compress.models.registry import register_model


@register_model("lenet300_100")
def lenet300_100(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Fully connected 784-300-100-10 (266,610 parameters on MNIST)."""
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )
    return glorot_gaussian_(model)


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Conv 6@5x5 (padded) - pool - conv 16@5x5 - pool - FC 120-84-10."""
    side = ((image_size // 2) - 4) // 2
    model = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
    return glorot_gaussian_(model)


def _conv_net(widths: list[int], num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Pairs of 3x3 same-padded convs, each pair followed by 2x2 max-pool, then FC 256-256-classes."""
    layers: list[nn.Module] = []
    channels = in_channels
    for pair_start in range(0, len(widths), 2):
        for width in widths[pair_start : pair_start + 2]:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2))
    side = image_size // 2 ** (len(widths) // 2)
    layers += [
        nn.Flatten(),
        nn.Linear(channels * side * side, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    ]
    return glorot_gaussian_(nn.Sequential(*layers))


@register_model("conv2")
def conv2(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return _conv_net([64, 64], num_classes, in_channels, image_size)


@register_model("conv4")
def conv4(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return _conv_net([64, 64, 128, 128], num_classes, in_channels, image_size)


@register_model("conv6")
def conv6(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return _conv_net([64, 64, 128, 128, 256, 256], num_classes, in_channels, image_size)
