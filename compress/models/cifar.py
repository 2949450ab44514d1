"""VGG-19 and ResNet-20 in their CIFAR forms (Simonyan & Zisserman 2014; He et al. 2016)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.errors import UserError
from compress.models.init import kaiming_normal_
from compress.models.registry import register_model

VGG19_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]


@register_model("vgg19")
def vgg19(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """CIFAR VGG-19 with BatchNorm: 16 convs, global average pool, one linear classifier."""
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG19_PLAN:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU()]
        channels = item
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return kaiming_normal_(nn.Sequential(*layers))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # 1x1 projection shortcut, as in open_lth's CIFAR ResNets.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise UserError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        stages: list[nn.Module] = []
        in_planes = width
        for stage, planes in enumerate([width, 2 * width, 4 * width]):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                stages.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.blocks = nn.Sequential(*stages)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@register_model("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return kaiming_normal_(CifarResNet(20, num_classes, in_channels))
