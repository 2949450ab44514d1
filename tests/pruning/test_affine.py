"""A module pruned by masking must be affine in its weight; ones that transform it are kept whole."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm

from compress.pruning import build_plan
from compress.pruning.affine import is_affine_in_weight
from compress.recipe.schema import PruneConfig


class StandardizedConv(nn.Conv2d):
    """A filter standardised in forward, as timm's StdConv2d does: a masked zero becomes -mean/std."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


class SamePadConv(nn.Conv2d):
    """Padding computed from the input: still affine in the weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x, (1, 2, 1, 2)))


@pytest.mark.parametrize(("module", "affine"), [
    (nn.Conv2d(3, 4, 3), True), (nn.Linear(3, 4), True), (SamePadConv(3, 4, 3), True),
    (StandardizedConv(3, 4, 3), False), (weight_norm(nn.Linear(3, 4)), False), (nn.LazyLinear(4), True),
])
def test_affine_probe(module, affine):
    assert is_affine_in_weight(module) is affine


def test_a_standardized_conv_is_kept_whole_with_a_warning_and_a_reason():
    model = nn.Sequential(StandardizedConv(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.LazyLinear(10))
    model(torch.randn(1, 3, 8, 8))
    with pytest.warns(UserWarning, match="StandardizedConv transform their weight"):
        targets = build_plan(model, PruneConfig(rates={"conv": 0.5, "linear": 0.5}))
    assert [t.name for t in targets] == ["2"]  # "0" kept, "4" is the output (no output rate)


def test_timm_weight_standardized_convs_are_refused_by_the_probe():
    timm = pytest.importorskip("timm")
    from timm.layers import ScaledStdConv2d, StdConv2d

    assert not is_affine_in_weight(StdConv2d(3, 4, 3)) and not is_affine_in_weight(ScaledStdConv2d(3, 4, 3))
    zero_gain = ScaledStdConv2d(8, 32, 1)  # NFNet zero-initialises the last gain of a block: f(w) = bias
    nn.init.zeros_(zero_gain.gain)
    assert not is_affine_in_weight(zero_gain)
    assert is_affine_in_weight(timm.layers.create_conv2d(3, 4, 3, stride=2, padding="same"))


def test_the_probe_leaves_the_global_rng_alone():
    conv = StandardizedConv(3, 4, 3)  # (its init draws from the global RNG; the probe must not)
    before = torch.get_rng_state()
    assert not is_affine_in_weight(conv)
    assert torch.equal(torch.get_rng_state(), before)
