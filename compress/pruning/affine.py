"""Whether pruning a module's weight removes exactly what it zeroes.

Masking a weight entry is pruning only when the forward is affine in the weight: ``f(w1 + w2) =
f(w1) + f(w2) - f(0)``. A module that transforms its weight first does not qualify: timm's
``StdConv2d`` / ``ScaledStdConv2d`` (NFNet, BiT, the ViT hybrids) standardise each filter, so a
masked zero becomes ``-mean / std`` and a pruned filter still computes. Dynamic padding
(``Conv2dSame``) keeps the forward affine and passes. The check is numerical, on a tiny input, so it
covers any subclass or parametrization without a list of names.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call


def _probe_shape(module: nn.Module) -> tuple[int, ...] | None:
    if isinstance(module, nn.Conv2d):
        side = max(3, max((k - 1) * d + 1 for k, d in zip(module.kernel_size, module.dilation, strict=True)))
        return (1, module.in_channels, side, side)
    if isinstance(module, nn.Linear):
        return (2, module.in_features)
    return None


@torch.no_grad()
def is_affine_in_weight(module: nn.Module) -> bool:
    """True for plain ``nn.Conv2d`` / ``nn.Linear`` and any subclass whose forward is affine in ``weight``
    (module docstring); False when it transforms the weight. A module the probe cannot run is given the
    benefit of the doubt (True): the export's zero-count check still catches it."""
    if type(module) in (nn.Conv2d, nn.Linear):
        return True
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or isinstance(weight, nn.parameter.UninitializedParameter) \
            or weight.is_meta:
        return True
    shape = _probe_shape(module)
    if shape is None:
        return True
    # its own generator: a plan must not move the global RNG the user's seed set
    generator = torch.Generator(device="cpu").manual_seed(0)

    def draw(like: torch.Tensor, size: tuple[int, ...] | None = None) -> torch.Tensor:
        return torch.randn(size or like.shape, generator=generator).to(like)

    x = draw(weight, shape)
    w1, w2 = draw(weight), draw(weight)
    # the other parameters random too: a gain initialised to zero (NFNet's last conv of a block) would
    # make any forward look affine
    others = {name: draw(param) for name, param in module.named_parameters() if name != "weight"}
    try:
        def run(w: torch.Tensor) -> torch.Tensor:
            return functional_call(module, {**others, "weight": w}, (x,))

        combined, apart = run(w1 + w2), run(w1) + run(w2) - run(torch.zeros_like(weight))
    except Exception:  # noqa: BLE001  (a pruned module's weight is not a parameter, a forward that needs more)
        return True
    scale = float(combined.abs().max()) + 1.0
    return bool((combined - apart).abs().max() <= 1e-4 * scale)
