"""Compaction through a module that repeats one fixed filter per channel (timm's BlurPool2d in TResNet):
it follows the new width instead of breaking the surgery (the zoo sweep's TResNet refusal)."""

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from timm.layers import BlurPool2d

from compress.pruning.compact import compact_model


class Net(nn.Module):
    """A graph, not a Sequential (those go to the sequential compactor, which lists what it supports)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), BlurPool2d(16),
                                     nn.Conv2d(16, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(8, 4)])

    def __getitem__(self, index: int) -> nn.Module:
        return self.layers[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_blur_pool_follows_the_compacted_width_exactly():
    torch.manual_seed(0)
    model = Net()
    model(torch.randn(4, 3, 16, 16))  # BatchNorm statistics
    model.eval()
    dead = torch.arange(0, 16, 2)  # every other channel of the first conv
    rows = torch.ones(16, 3, 3, 3)
    rows[dead] = 0
    columns = torch.ones(8, 16, 3, 3)
    columns[:, dead] = 0
    prune.custom_from_mask(model[0], "weight", rows)
    prune.custom_from_mask(model[4], "weight", columns)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    small = compact_model(model, x)
    blur = small[3]
    assert small[0].out_channels == small[4].in_channels == blur.channels == 8
    assert tuple(blur.filt.shape) == (8, 1, 3, 3)
    with torch.no_grad():
        assert torch.allclose(small(x), expected, atol=1e-6)
    assert model[3].channels == 16 and tuple(model[3].filt.shape) == (16, 1, 3, 3)  # the user's model untouched
