"""Linear layers as CSR (``torch.sparse_csr``) run in one fused chain per run of Linear/activation layers.

Formulation, measured on a 2-core Xeon (torch 2.14, MKL) for LeNet-300-100 layers:

* ``torch.addmm(bias_col, W_csr, h)`` with ``h`` feature-major (features x batch, contiguous) is the
  fast one: sparse x row-major dense, one SpMM with the bias fused. Dense x sparse (``x @ W_csr.T``,
  ``x @ W_csc``) is 5-100x slower; a column-major ``h`` (``W_csr @ x.t()`` without a copy) is 3-5x slower.
* So a chain keeps activations feature-major from its first Linear to its last one, and transposes
  only at its two ends. numpy's transpose copy is ~2x faster than torch's for a (64, 784) input.
* int32 CSR indices: int64 ones are converted on every call (~1.5-2 us per layer).
* Batch 1 uses ``torch.addmv`` (CSR or dense): ~1.5x faster than addmm on a single column.

Each Linear of a chain runs either from its CSR or its dense weight; ``plans`` says which, per batch
size (``auto`` fills it by timing both), and ``default_plan`` covers batch sizes never timed.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn

from compress.errors import UserError

# Layers that act elementwise, so they run unchanged on feature-major activations; Dropout and
# Identity are no-ops in eval mode (backends only run in eval mode).
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardswish,
                nn.Hardsigmoid, nn.ELU, nn.Mish)
_NO_OPS = (nn.Identity, nn.Dropout)
_LINEAR, _RELU, _ACT = 0, 1, 2


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    """A 2-D dense weight as CSR with int32 indices, holding exactly its nonzero entries."""
    if weight.dim() != 2:
        raise UserError(f"to_csr needs a 2-D weight, got shape {tuple(weight.shape)}")
    dense = weight.detach().contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        csr = dense.to_sparse_csr()
        return torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
                                       csr.values(), size=dense.shape)


def _feature_major(x2: torch.Tensor) -> torch.Tensor:
    """(batch, features) -> contiguous (features, batch)."""
    if x2.device.type == "cpu" and x2.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.ascontiguousarray(x2.detach().numpy().T))
    return x2.t().contiguous()


class LinearChain(nn.Module):
    """Consecutive Linear layers (and elementwise activations between them) in feature-major layout.

    Holds both the dense and the CSR weight of every Linear; ``plans[batch]`` is a tuple of bools
    (True = CSR) per Linear. Inference only: the weights are plain tensors, not parameters.
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], flatten: bool = False) -> None:
        super().__init__()
        if not layers or not isinstance(layers[0][1], nn.Linear):
            raise UserError("a LinearChain starts with an nn.Linear")
        self.flatten = flatten
        self.names: list[str] = []
        self.dense: list[torch.Tensor] = []
        self.csr: list[torch.Tensor] = []
        self.bias: list[torch.Tensor] = []
        self.bias_col: list[torch.Tensor] = []
        self.acts = nn.ModuleList()
        self.steps: list[tuple[int, int]] = []  # (_LINEAR, i) | (_RELU, -1) | (_ACT, index into acts)
        for name, module in layers:
            if isinstance(module, nn.Linear):
                weight = module.weight.detach().float().contiguous()
                bias = (module.bias.detach().float() if module.bias is not None
                        else torch.zeros(weight.shape[0]))
                self.steps.append((_LINEAR, len(self.names)))
                self.names.append(name)
                self.dense.append(weight)
                self.csr.append(to_csr(weight))
                self.bias.append(bias.contiguous())
                self.bias_col.append(bias[:, None].contiguous())
            elif isinstance(module, nn.ReLU):
                self.steps.append((_RELU, -1))
            elif isinstance(module, _ELEMENTWISE):
                self.steps.append((_ACT, len(self.acts)))
                self.acts.append(module)
            elif not isinstance(module, _NO_OPS):
                raise UserError(f"{name} ({type(module).__name__}) cannot run inside a LinearChain")
        self.default_plan: tuple[bool, ...] = (True,) * len(self.names)
        self.plans: dict[int, tuple[bool, ...]] = {}
        self._cache: dict[int, list[torch.Tensor]] = {}  # rows -> weight per Linear, from the plan

    @property
    def in_features(self) -> int:
        return int(self.dense[0].shape[1])

    def set_plan(self, use_csr: bool | tuple[bool, ...], batch_size: int | None = None) -> None:
        """``use_csr`` for every Linear (a bool) or per Linear; for one batch size or as the default."""
        plan = (use_csr,) * len(self.names) if isinstance(use_csr, bool) else tuple(use_csr)
        if len(plan) != len(self.names):
            raise UserError(f"plan has {len(plan)} entries for {len(self.names)} Linear layers")
        if batch_size is None:
            self.default_plan = plan
        else:
            self.plans[int(batch_size)] = plan
        self._cache.clear()

    def plan_for(self, batch_size: int) -> tuple[bool, ...]:
        """The plan timed at this batch size, else at the nearest one (log scale), else the default."""
        plan = self.plans.get(batch_size)
        if plan is not None:
            return plan
        if not self.plans:
            return self.default_plan
        nearest = min(self.plans, key=lambda b: abs(math.log(b) - math.log(max(batch_size, 1))))
        return self.plans[nearest]

    def weight(self, index: int, csr: bool) -> torch.Tensor:
        return self.csr[index] if csr else self.dense[index]

    def _weights(self, rows: int) -> list[torch.Tensor]:
        weights = self._cache.get(rows)
        if weights is None:
            plan = self.plan_for(rows)
            weights = self._cache[rows] = [self.weight(i, csr) for i, csr in enumerate(plan)]
        return weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # kept lean: at batch 1 the whole chain is ~10 us, so Python per step shows
        if self.flatten:
            x = x.flatten(1)
        lead = None
        if x.dim() != 2:
            lead = x.shape[:-1]
            x = x.reshape(-1, x.shape[-1])
        rows = x.shape[0]
        weights = self._weights(rows)
        acts = self.acts
        if rows == 1:
            h = x[0]
            biases = self.bias
            for kind, index in self.steps:
                if kind == _LINEAR:
                    h = torch.addmv(biases[index], weights[index], h)
                elif kind == _RELU:
                    h = h.relu_()
                else:
                    h = acts[index](h)
            out = h.unsqueeze(0)
        else:
            h = _feature_major(x)
            biases = self.bias_col
            for kind, index in self.steps:
                if kind == _LINEAR:
                    h = torch.addmm(biases[index], weights[index], h)
                elif kind == _RELU:
                    h = h.relu_()
                else:
                    h = acts[index](h)
            out = h.t().contiguous()
        return out if lead is None else out.reshape(*lead, out.shape[-1])

    def extra_repr(self) -> str:
        nnz = [int(c.values().numel()) for c in self.csr]
        total = [int(d.numel()) for d in self.dense]
        layers = ", ".join(f"{n}: {z}/{t}" for n, z, t in zip(self.names, nnz, total, strict=True))
        return f"flatten={self.flatten}, nonzeros {layers}"


def _is_flatten_all(module: nn.Module) -> bool:
    return isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1


def _chain_sequential(seq: nn.Sequential, prefix: str) -> list[LinearChain]:
    """Replace each run [Flatten] Linear (act | Linear)* of ``seq`` by one LinearChain, in place."""
    items = list(seq._modules.items())
    new_items: list[tuple[str, nn.Module]] = []
    chains = []
    i = 0
    while i < len(items):
        key, module = items[i]
        flatten = _is_flatten_all(module) and i + 1 < len(items) and isinstance(items[i + 1][1], nn.Linear)
        start = i + 1 if flatten else i
        if not isinstance(items[start][1], nn.Linear):
            new_items.append((key, module))
            i += 1
            continue
        end = start
        while end < len(items) and isinstance(items[end][1], (nn.Linear, *_ELEMENTWISE, *_NO_OPS)):
            end += 1
        chain = LinearChain([(f"{prefix}{k}", m) for k, m in items[start:end]], flatten=flatten)
        new_items.append((key, chain))
        chains.append(chain)
        i = end
    seq._modules = OrderedDict(new_items)
    return chains


def linear_chains(model: nn.Module) -> tuple[nn.Module, list[LinearChain]]:
    """A copy of ``model`` (masks folded, eval) with every nn.Linear inside a LinearChain.

    Runs inside nn.Sequential become one chain each; any other Linear (e.g. timm's ``fc``) a chain of one.
    """
    from compress.pruning import fold_masks

    converted = fold_masks(model).cpu().float().eval()
    chains: list[LinearChain] = []
    for name, module in list(converted.named_modules()):
        if isinstance(module, nn.Sequential):
            chains += _chain_sequential(module, f"{name}." if name else "")
    for name, module in list(converted.named_modules()):
        if isinstance(module, nn.Linear):  # chains hold tensors, not Linear modules: these are the rest
            parent_name, _, attr = name.rpartition(".")
            chain = LinearChain([(name, module)])
            setattr(converted.get_submodule(parent_name) if parent_name else converted, attr, chain)
            chains.append(chain)
    if not chains:
        raise UserError("the model has no nn.Linear layer to run as CSR")
    return converted.eval(), chains
