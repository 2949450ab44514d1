"""The one place that decides device, seeding and thread count; everything else asks it."""

from __future__ import annotations

import gc
import os
import random

import numpy as np
import torch

from compress.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        # under torchrun each process takes its own GPU
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a dedicated CPU generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def set_threads(threads: int | None = None) -> int:
    """Pin torch's intra-op threads to ``threads``, else to env ``COMPRESS_THREADS``; neither: leave torch's
    own choice (a caller that already pinned them, e.g. one of several parallel jobs, keeps its setting)."""
    threads = threads or int(os.environ.get("COMPRESS_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (``avx512f``, ``avx2``, ``avx512_vnni``, ...); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def vector_block() -> int:
    """Channels per block of onnxruntime's NCHWc convolution kernels on this CPU: 16 with AVX-512,
    8 with AVX2, else 1 (widths that are not multiples of it fall off the fast kernels)."""
    flags = cpu_flags()
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 1


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters live (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def release_cycles() -> None:
    """Free what only reference cycles still hold, now. Torch-Pruning's dependency graph (nodes pointing at
    each other and at the traced copy's modules) and a failed export's traceback frames are such cycles:
    until the cyclic collector runs, the model copy they reference stays resident -- a model's worth of
    memory, through training or into the next export."""
    gc.collect()


SKIP_MEMORY_CHECK = "COMPRESS_SKIP_MEMORY_CHECK"
MEMORY_LIMIT = "COMPRESS_MEMORY_LIMIT_MB"  # a budget of resident memory for this process, as a shared machine sets


def _meminfo(field: str) -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


_CGROUP_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as the largest page-aligned int64


def _read(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read()


def _stat_field(text: str, field: str) -> int | None:
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith(f"{field} ")), None)


def _cgroup_room(cgroup_file: str = "/proc/self/cgroup", mount: str = "/sys/fs/cgroup") -> int | None:
    """This process's memory cgroup: its limit less its use; None without a limit. cgroup v2 (``memory.max``
    less ``memory.current``) or v1 (``hierarchical_memory_limit`` -- the least limit of the group and its
    parents -- less ``memory.usage_in_bytes`` without the inactive page cache the kernel drops first, as
    Docker counts it). Inside a container the group's own path may not be mounted: its mount root is tried."""
    try:
        entries = [line.strip().split(":", 2) for line in _read(cgroup_file).splitlines() if line.count(":") >= 2]
    except OSError:
        return None
    for _, controllers, relative in entries:
        v2 = controllers == ""
        if not v2 and "memory" not in controllers.split(","):
            continue
        base = mount if v2 else os.path.join(mount, "memory")
        for folder in (os.path.join(base, relative.lstrip("/")), base):
            try:
                if v2:
                    limit = _read(os.path.join(folder, "memory.max")).strip()
                    return None if limit == "max" else int(limit) - int(_read(os.path.join(folder, "memory.current")))
                stat = _read(os.path.join(folder, "memory.stat"))
                limit = _stat_field(stat, "hierarchical_memory_limit")
                if limit is None or limit >= _CGROUP_UNLIMITED:
                    return None
                usage = int(_read(os.path.join(folder, "memory.usage_in_bytes")))
                return limit - (usage - (_stat_field(stat, "total_inactive_file") or 0))
            except (OSError, ValueError):
                continue
    return None


def _own_status(field: str) -> int | None:
    """A size field of /proc/self/status (``VmSize``, ``VmRSS``) in bytes; None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(f"{field}:"))
    except (OSError, ValueError, StopIteration):
        return None


def _rlimit_room() -> int | None:
    """RLIMIT_AS less this process's address space (an allocation past it fails however much RAM is free)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    size = _own_status("VmSize")
    return None if size is None else soft - size


def memory_limit() -> int | None:
    """``COMPRESS_MEMORY_LIMIT_MB`` in bytes (None when unset): the resident memory this process may use."""
    value = os.environ.get(MEMORY_LIMIT, "").strip()
    if not value:
        return None
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1.0
    if not megabytes > 0:
        raise UserError(f"{MEMORY_LIMIT}={value!r}: expected a positive number of megabytes (MiB), e.g. 4096")
    return int(megabytes * 2**20)


def _limit_room() -> int | None:
    """``COMPRESS_MEMORY_LIMIT_MB`` less this process's resident memory."""
    limit = memory_limit()
    if limit is None:
        return None
    resident = _own_status("VmRSS")
    return None if resident is None else limit - resident


def available_memory(device: torch.device) -> int | None:
    """Bytes this process can still allocate on ``device``: CUDA's free memory; on the CPU the least of
    MemAvailable + SwapFree, the cgroup's limit less its use, RLIMIT_AS less the address space in use and
    ``COMPRESS_MEMORY_LIMIT_MB`` less the resident memory. None where nothing is known (another OS)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    system = _meminfo("MemAvailable")
    if system is not None:
        system += _meminfo("SwapFree") or 0
    known = [room for room in (system, _cgroup_room(), _rlimit_room(), _limit_room()) if room is not None]
    return min(known) if known else None


def _checked_room(device: torch.device) -> int | None:
    """``available_memory``, or None (nothing to check against) under ``COMPRESS_SKIP_MEMORY_CHECK``."""
    if os.environ.get(SKIP_MEMORY_CHECK, "") not in ("", "0"):
        return None
    return available_memory(device)


def short_of_memory(need: int, device: torch.device) -> bool:
    """Whether ``need`` bytes exceed what ``available_memory`` says is left (False when unknown or when
    ``COMPRESS_SKIP_MEMORY_CHECK`` is set): for choosing a leaner path before ``ensure_memory`` refuses."""
    free = _checked_room(device)
    return free is not None and need > free


def ensure_memory(need: int, device: torch.device, what: str) -> None:
    """Refuse up front (``UserError``) when ``need`` bytes -- a lower bound of what ``what`` will allocate --
    exceed what ``available_memory`` says is left: one line now instead of the kernel's OOM killer later.
    ``COMPRESS_SKIP_MEMORY_CHECK=1`` skips it (an estimate of free memory can be wrong, e.g. under zram)."""
    free = _checked_room(device)
    if free is not None and need > free:
        limit = os.environ.get(MEMORY_LIMIT, "").strip()
        under = f" under {MEMORY_LIMIT}={limit}" if limit and device.type == "cpu" else ""
        raise UserError(f"{what} needs at least {need / 2**30:.2f} GiB more memory on {device}, "
                        f"{max(free, 0) / 2**30:.2f} GiB is available{under}: free memory, use a larger machine or "
                        f"prune fewer layers (prune.exclude), or set {SKIP_MEMORY_CHECK}=1 to try anyway")
