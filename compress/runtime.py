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


def release_cycles() -> None:
    """Free what only reference cycles still hold, now. Torch-Pruning's dependency graph (nodes pointing at
    each other and at the traced copy's modules) and a failed export's traceback frames are such cycles:
    until the cyclic collector runs, the model copy they reference stays resident -- a model's worth of
    memory, through training or into the next export."""
    gc.collect()
