"""torchrun / DistributedDataParallel support: who writes, how masks are shared and checked.

Under ``torchrun`` every rank builds the same model from the same seed and installs the prune
reparametrisation *before* wrapping it in DDP: DDP records the module's parameters when it is
built, and pruning afterwards would replace ``weight`` by ``weight_orig`` behind its back (DDP
would then all-reduce a tensor no longer in the graph). Masks are buffers, computed on rank 0 and
broadcast, then verified identical on every rank with a checksum all-reduce. Only rank 0 writes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


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


def shard(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of a global batch: every rank draws the same batch and keeps every n-th example,
    so N processes together take exactly the steps one process would."""
    if not active():
        return x, y
    return x[rank()::world_size()], y[rank()::world_size()]


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
