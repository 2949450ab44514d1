"""Exact compaction: physically remove hidden units (neurons, conv channels) that cannot change the output.

A hidden unit of a Linear/Conv2d layer ``A`` feeds only the next weighted layer ``B`` (nn.Sequential),
through per-unit modules (BatchNorm, ReLU, pooling, Flatten). It is removed when

* dead out -- all its outgoing weights in ``B`` are zero: it contributes exactly nothing; or
* dead in -- all its incoming weights in ``A`` are zero, so ``A`` outputs its bias (or 0) there,
  and that constant, carried through BatchNorm / ReLU / pooling, reaches ``B`` as a known value
  ``c``; its contribution ``c * sum(outgoing weights)`` is folded into ``B``'s bias. That is exact
  only when the contribution is the same at every output position: always for Linear (after
  Flatten each channel is a block of equal features), for Conv2d without zero padding, or when
  ``c == 0`` (e.g. ReLU of a negative bias).
* merged -- a constant channel into a zero-padded conv is NOT constant at the borders, so it cannot
  become a bias. But a convolution is linear in its kernel: channels ``j`` of constants ``c_j`` give
  ``conv(1, sum_j c_j W[:, j])`` with the same zero padding, so all of them are replaced by ONE
  carrier channel (the largest ``|c|``) whose outgoing kernel becomes ``sum_j c_j W[:, j] / c_carrier``.
  At most one constant unit per layer is kept (``Compaction.kept_constant`` counts them).

Removing units can make units of neighbouring layers dead, so passes repeat until nothing changes.
Input features of the first layer and output units of the last are never removed (they are the
interface). A layer always keeps at least one unit, so every tensor stays non-empty.

Exactness is in eval mode (BatchNorm with running statistics), which is what gets exported; the result
is a plain ``nn.Sequential`` (no prune reparametrisation) in eval mode, on the model's device.
Supported: nn.Sequential (nested ones are flattened) of Linear, Conv2d (groups=1), BatchNorm1d/2d,
ReLU, MaxPool2d, AvgPool2d, AdaptiveAvg/MaxPool2d, Flatten, Identity, Dropout -- LeNet-300-100,
LeNet-5, Conv-2/4/6 and VGG-19; anything before the first and after the last weighted layer is kept as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.models.unwrap import unwrap_model
from compress.pruning import fold_masks

_WEIGHTED = (nn.Linear, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_POINTWISE = (nn.ReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
SUPPORTED = "Linear, Conv2d, BatchNorm1d/2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvg/MaxPool2d, Flatten, Identity, Dropout"


def _units(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _flat_layers(model: nn.Module) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for module in model:
        layers += _flat_layers(module) if isinstance(module, nn.Sequential) else [module]
    return layers


def _pads_with_zeros(conv: nn.Conv2d) -> bool:
    if conv.padding_mode != "zeros":
        return False  # reflect / replicate / circular padding of a constant is that constant
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


@dataclass
class _Link:
    """Weighted layer ``a`` feeding weighted layer ``b`` through ``layers[a+1:b]``."""

    a: int
    b: int
    per_unit: int = 1  # input features of ``b`` per unit of ``a``: H*W for conv -> Flatten -> Linear


@dataclass
class Compaction:
    """Result of ``compact``: the model, units per weighted layer before/after, dead-in units kept."""

    module: nn.Module
    units: list[dict] = field(default_factory=list)
    kept_constant: int = 0


class _Compactor:
    def __init__(self, model: nn.Module) -> None:
        model = unwrap_model(model)  # torch.compile / DDP / DataParallel / EMA: the plain module inside
        if not isinstance(model, nn.Sequential):
            raise UserError(f"compact_model supports nn.Sequential models ({SUPPORTED}); "
                             f"{type(model).__name__} is not one -- export it without compaction")
        self.layers = [layer.eval() for layer in _flat_layers(fold_masks(model))]
        self.weighted = [i for i, layer in enumerate(self.layers) if isinstance(layer, _WEIGHTED)]
        if not self.weighted:
            raise UserError("compact_model: the model has no Linear or Conv2d layer")
        self.before = [_units(self.layers[i]) for i in self.weighted]
        self.links = [self._link(a, b) for a, b in zip(self.weighted, self.weighted[1:], strict=False)]

    def _where(self, index: int) -> str:
        return f"layer {index} ({type(self.layers[index]).__name__})"

    def _link(self, a: int, b: int) -> _Link:
        first, second = self.layers[a], self.layers[b]
        for layer, index in ((first, a), (second, b)):
            if isinstance(layer, nn.Conv2d) and layer.groups != 1:
                raise UserError(f"compact_model: {self._where(index)} has groups={layer.groups}; only groups=1")
        if isinstance(first, nn.Linear) and isinstance(second, nn.Conv2d):
            raise UserError(f"compact_model: {self._where(a)} feeds {self._where(b)}; Linear -> Conv2d is not supported")
        flattened = False
        for index in range(a + 1, b):
            module = self.layers[index]
            if isinstance(module, nn.Flatten):
                if module.start_dim != 1 or module.end_dim != -1 or flattened:
                    raise UserError(f"compact_model: {self._where(index)}: only one Flatten(1, -1) per link")
                flattened = True
                continue
            allowed = _POINTWISE if flattened else _POINTWISE + _NORMS + (_POOLS if isinstance(first, nn.Conv2d) else ())
            if not isinstance(module, allowed):
                raise UserError(f"compact_model: {self._where(index)} between {self._where(a)} and "
                                 f"{self._where(b)} is not supported (supported: {SUPPORTED})")
            if isinstance(module, _NORMS) and (module.running_mean is None or module.num_features != _units(first)):
                raise UserError(f"compact_model: {self._where(index)} needs running statistics and "
                                 f"{_units(first)} features")
        units = _units(first)
        if isinstance(second, nn.Conv2d):
            if flattened or second.in_channels != units:
                raise UserError(f"compact_model: {self._where(a)} -> {self._where(b)}: channels do not line up")
            return _Link(a, b)
        if isinstance(first, nn.Conv2d) and not flattened:
            raise UserError(f"compact_model: {self._where(a)} -> {self._where(b)} needs a Flatten in between")
        if second.in_features % units or (isinstance(first, nn.Linear) and second.in_features != units):
            raise UserError(f"compact_model: {self._where(b)} has {second.in_features} inputs, not a multiple "
                             f"of the {units} units of {self._where(a)}")
        return _Link(a, b, second.in_features // units)

    # -- what reaches ``b`` from a unit whose incoming weights are all zero ------------------------
    @torch.no_grad()
    def _constants(self, link: _Link) -> tuple[torch.Tensor, torch.Tensor]:
        """Per unit of ``a``: the value reaching ``b`` if its incoming weights were all zero, and
        whether that value is the same at every spatial position."""
        first = self.layers[link.a]
        n = _units(first)
        bias = first.bias if first.bias is not None else torch.zeros(n, device=first.weight.device,
                                                                      dtype=first.weight.dtype)
        chain = self.layers[link.a + 1:link.b]
        if isinstance(first, nn.Linear):
            x = bias.detach().view(1, n)
            for module in chain:
                x = module(x)
            return x.view(n), torch.ones(n, dtype=torch.bool, device=x.device)
        side = 8
        for module in chain:  # big enough that every pool leaves interior positions
            if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
                kernel = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,)
                side *= max(kernel)
        x = bias.detach().view(1, n, 1, 1).expand(1, n, side, side).contiguous()
        for module in chain:
            x = x.flatten(1).view(1, n, -1) if isinstance(module, nn.Flatten) else module(x)
        x = x.flatten(2)
        return x[0, :, 0], (x.amax(2) == x.amin(2))[0]

    # -- one pass over one link ---------------------------------------------------------------
    @torch.no_grad()
    def _shrink(self, link: _Link) -> tuple[int, int]:
        """Remove dead units of ``a``; returns (removed, dead-in units kept: carriers and unfoldable ones)."""
        first, second = self.layers[link.a], self.layers[link.b]
        n = _units(first)
        dead_in = first.weight.flatten(1).eq(0).all(1)
        outgoing = second.weight.view(second.out_features, n, link.per_unit) if isinstance(second, nn.Linear) \
            else second.weight.transpose(0, 1).flatten(1)
        if isinstance(second, nn.Linear):
            dead_out = outgoing.eq(0).all(2).all(0)
        else:
            dead_out = outgoing.eq(0).all(1)
        foldable, uniform = torch.zeros_like(dead_in), torch.zeros_like(dead_in)
        values = torch.zeros(n, dtype=torch.float64, device=dead_in.device)
        if bool(dead_in.any()):
            constant, uniform = self._constants(link)
            values = constant.double()
            foldable = dead_in & uniform
            if isinstance(second, nn.Conv2d) and _pads_with_zeros(second):
                foldable &= values == 0
        remove = dead_out | foldable
        merge = dead_in & uniform & ~remove  # constant channels into a zero-padded conv: one carrier
        if isinstance(second, nn.Conv2d) and int(merge.sum()) >= 2:
            index = merge.nonzero().flatten()
            carrier = index[values[index].abs().argmax()]
            kernel = (second.weight.double()[:, index] * values[index].view(1, -1, 1, 1)).sum(1)
            second.weight[:, carrier] = (kernel / values[carrier]).to(second.weight.dtype)
            remove |= merge
            remove[carrier] = False
        kept_constant = int((dead_in & ~remove).sum())
        if bool(remove.all()):
            remove[0] = False  # keep one unit so no tensor becomes empty; unchanged, so still exact
        if not bool(remove.any()):
            return 0, kept_constant
        fold = remove & foldable & ~dead_out & (values != 0)
        if bool(fold.any()):
            if isinstance(second, nn.Linear):
                delta = (outgoing.double().sum(2)[:, fold] * values[fold]).sum(1)
            else:
                delta = (second.weight.double().sum((2, 3))[:, fold] * values[fold]).sum(1)
            _add_bias(second, delta)
        keep = ~remove
        _keep_outputs(first, keep)
        for module in self.layers[link.a + 1:link.b]:
            if isinstance(module, _NORMS):
                _keep_norm(module, keep)
        _keep_inputs(second, keep, link.per_unit)
        return int(remove.sum()), kept_constant

    def run(self) -> Compaction:
        changed = True
        kept = 0
        while changed:
            changed, kept = False, 0
            for link in self.links:
                removed, kept_here = self._shrink(link)
                changed |= removed > 0
                kept += kept_here
        module = nn.Sequential(*self.layers).eval()
        units = [{"layer": str(i), "type": type(self.layers[i]).__name__, "before": before,
                  "after": _units(self.layers[i])} for i, before in zip(self.weighted, self.before, strict=True)]
        return Compaction(module, units, kept)


def _param(tensor: torch.Tensor, like: nn.Parameter | None) -> nn.Parameter:
    return nn.Parameter(tensor.clone(), requires_grad=True if like is None else like.requires_grad)


def _add_bias(layer: nn.Module, delta: torch.Tensor) -> None:
    weight = layer.weight
    base = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(delta)
    layer.bias = _param((base + delta).to(weight.dtype), layer.bias)


def _keep_outputs(layer: nn.Module, keep: torch.Tensor) -> None:
    layer.weight = _param(layer.weight.detach()[keep], layer.weight)
    if layer.bias is not None:
        layer.bias = _param(layer.bias.detach()[keep], layer.bias)
    if isinstance(layer, nn.Linear):
        layer.out_features = int(keep.sum())
    else:
        layer.out_channels = int(keep.sum())


def _keep_inputs(layer: nn.Module, keep: torch.Tensor, per_unit: int) -> None:
    weight = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        weight = weight.view(weight.shape[0], keep.numel(), per_unit)[:, keep].reshape(weight.shape[0], -1)
        layer.in_features = weight.shape[1]
    else:
        weight = weight[:, keep]
        layer.in_channels = weight.shape[1]
    layer.weight = _param(weight, layer.weight)


def _keep_norm(norm: nn.Module, keep: torch.Tensor) -> None:
    if norm.affine:
        norm.weight = _param(norm.weight.detach()[keep], norm.weight)
        norm.bias = _param(norm.bias.detach()[keep], norm.bias)
    norm.running_mean = norm.running_mean[keep].clone()
    norm.running_var = norm.running_var[keep].clone()
    norm.num_features = int(keep.sum())


def compact_sequential(model: nn.Module) -> Compaction:
    """Compaction of an ``nn.Sequential`` (or a wrapper of one): see the module docstring."""
    return _Compactor(model).run()
