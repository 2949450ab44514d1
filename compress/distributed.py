"""torchrun / DistributedDataParallel support: who writes, how masks are shared and checked.

Under ``torchrun`` every rank builds the same model from the same seed and installs the prune
reparametrisation *before* wrapping it in DDP: DDP records the module's parameters when it is
built, and pruning afterwards would replace ``weight`` by ``weight_orig`` behind its back (DDP
would then all-reduce a tensor no longer in the graph). Masks are buffers, computed on rank 0 and
broadcast, then verified identical on every rank with a checksum all-reduce. Only rank 0 writes.

N processes take the steps one process would, up to floating-point reduction order: every rank draws
the same global batch and keeps an equal slice (``check_batch_size`` refuses an uneven split), DDP
averages the gradients of the slices' mean losses (= the global batch's mean loss), and
``sync_batchnorm`` normalises by the statistics of the global batch instead of each slice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from compress.errors import UserError


def init_from_env() -> bool:
    """Join the process group torchrun describes (NCCL on GPU, gloo on CPU); False when not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def check_batch_size(batch_size: int) -> None:
    """Refuse a global batch that does not split evenly over the processes (checked before any step):
    DDP averages the slices' mean losses with equal weights, which is the global batch's mean only
    when the slices are equal."""
    size = world_size()
    if batch_size % size:
        raise UserError(f"train.batch_size={batch_size} does not split evenly over {size} processes "
                        f"(torchrun --nproc_per_node={size}): use a multiple of {size}, "
                        f"e.g. {batch_size + size - batch_size % size}")


def shard(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of a global batch: every rank draws the same batch and keeps every n-th example,
    so N processes together take the steps one process would (see the module docstring)."""
    if not active():
        return x, y
    check_batch_size(x.shape[0])
    return x[rank()::world_size()], y[rank()::world_size()]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over the ranks (a new tensor; ``tensor`` itself is unchanged)."""
    if not active():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total / world_size()


class _GlobalBatchNorm(torch.autograd.Function):
    """Batch normalisation by the statistics of all ranks' slices together, with BatchNorm's closed-form
    backward: 2 all-reduces forward (sum, then centred sum of squares), 1 backward. The weight and bias
    gradients stay local (DDP averages them); the input gradient is that of the whole batch's loss."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dims, shape = [0, *range(2, input.dim())], [1, -1] + [1] * (input.dim() - 2)
        mean = input.sum(dims)
        dist.all_reduce(mean)
        mean /= count
        centered = input - mean.view(shape)
        var = centered.square().sum(dims)
        dist.all_reduce(var)
        var /= count  # biased, as BatchNorm normalises
        invstd = torch.rsqrt(var + eps)
        normalized = centered.mul_(invstd.view(shape))
        ctx.save_for_backward(normalized, weight, invstd)
        ctx.count = count
        out = normalized if weight is None else normalized * weight.view(shape) + bias.view(shape)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, _mean: torch.Tensor, _var: torch.Tensor):
        normalized, weight, invstd = ctx.saved_tensors
        dims, shape = [0, *range(2, grad_out.dim())], [1, -1] + [1] * (grad_out.dim() - 2)
        grad_bias = grad_out.sum(dims)
        grad_weight = (grad_out * normalized).sum(dims)
        sums = torch.cat([grad_bias, grad_weight])
        dist.all_reduce(sums)
        mean_dy, mean_dy_normalized = (sums / ctx.count).chunk(2)
        scale = invstd if weight is None else invstd * weight
        grad_input = (grad_out - mean_dy.view(shape) - normalized * mean_dy_normalized.view(shape)) * scale.view(shape)
        if weight is None:
            return grad_input, None, None, None, None
        return grad_input, grad_weight, grad_bias, None, None


class AllReduceBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, on any device and backend
    (``nn.SyncBatchNorm`` runs only on GPUs). Eval mode uses the running statistics, like BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    @classmethod
    def replacing(cls, bn: _BatchNorm) -> AllReduceBatchNorm:
        """A module sharing ``bn``'s parameters and buffers (the same tensor objects)."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        new.train(bn.training)
        return new

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(input)
        self._check_input_dim(input)
        count = input.numel() // input.shape[1] * world_size()
        if count < 2:
            raise ValueError(f"expected more than 1 value per channel when training, got {count}")
        out, mean, var = _GlobalBatchNorm.apply(input, self.weight, self.bias, self.eps, count)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
                self.running_var.mul_(1 - factor).add_(var * (count / (count - 1)), alpha=factor)
        return out


def _synced(bn: _BatchNorm, name: str) -> nn.Module:
    plain = type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if plain and bn.running_mean is not None and bn.running_mean.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(bn)  # shares bn's tensors
    if plain:
        return AllReduceBatchNorm.replacing(bn)
    if bn.running_mean is not None and bn.running_mean.device.type == "cuda" and \
            type(bn).__module__.startswith("timm.") and type(bn).__name__ == "BatchNormAct2d":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(bn)  # keeps its act/drop, shares bn's tensors
    raise UserError(f"train.sync_batchnorm: cannot synchronise {name!r} ({type(bn).__name__}) across processes "
                    "here; set train.sync_batchnorm: false (each process then normalises by its own slice)")


@contextmanager
def sync_batchnorm(model: nn.Module) -> Iterator[list[str]]:
    """Under torchrun, swap every BatchNorm inside ``model`` for one that normalises by the statistics of
    the global batch (``nn.SyncBatchNorm`` on CUDA, ``AllReduceBatchNorm`` elsewhere), then put the
    original modules back; yields the names swapped. Call it before wrapping in DDP.

    The replacements share the originals' parameter and buffer objects, so an optimizer built before
    stays valid, state dicts keep their keys, and the trained values are in the originals afterwards.
    Only Conv2d/Linear weights are pruned (``weight_orig`` and masks stay on those modules, untouched).
    """
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    done: dict[int, nn.Module] = {}
    names: list[str] = []
    try:
        for parent_name, parent in list(model.named_modules()) if active() else []:
            for child_name, child in list(parent.named_children()):
                if not isinstance(child, _BatchNorm) or isinstance(child, (nn.SyncBatchNorm, AllReduceBatchNorm)):
                    continue
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                if id(child) not in done:
                    if hasattr(child, "weight_orig"):
                        raise UserError(f"train.sync_batchnorm: BatchNorm {name!r} is pruned, which compress "
                                        "never does; set train.sync_batchnorm: false to train it as it is")
                    done[id(child)] = _synced(child, name)
                    names.append(name)
                swaps.append((parent, child_name, child))
                setattr(parent, child_name, done[id(child)])
        yield names
    finally:
        for parent, child_name, original in reversed(swaps):
            original.train(getattr(parent, child_name).training)
            setattr(parent, child_name, original)


def broadcast_masks(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's masks on every rank (``masks`` must hold tensors of the right shapes everywhere)."""
    if not active():
        return masks
    for name in sorted(masks):
        dist.broadcast(masks[name], src=0)
    verify_identical(masks)
    return masks


def mask_checksum(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """A position-weighted sum: equal on two ranks only if (almost surely) the masks are equal."""
    total = torch.zeros((), dtype=torch.float64)
    for index, name in enumerate(sorted(masks)):
        flat = masks[name].detach().flatten().to("cpu", torch.float64)
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder_(9973).add_(index + 1)
        total += (flat * weights).sum()
    return total


def verify_identical(masks: dict[str, torch.Tensor]) -> None:
    """All-reduce the checksum with MIN and MAX: if they differ, some rank holds other masks."""
    if not active():
        return
    device = next(iter(masks.values())).device if masks else torch.device("cpu")
    device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    checksum = mask_checksum(masks).to(device)
    low, high = checksum.clone(), checksum.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise RuntimeError(f"ranks hold different masks (checksums {low.item()} .. {high.item()})")
