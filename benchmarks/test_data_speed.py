"""Data-layer speed against a baseline measured in the same process (moved out of the unit suite).

1. Batch stream: ``TensorSplit.batches`` vs the bare ``index_select`` gathers it must be close to
   (LeNet-300-100 trains at > 1000 it/s on CPU, so a batch must cost little more than its gather).
2. CIFAR-10 cached load vs the first load (extract + decode + cache) of the shared JPEG tarball;
   skipped without the tarball ($COMPRESS_CIFAR10_TAR or ../shared/data/cifar10-jpg.tar.gz).

Run: ``OMP_NUM_THREADS=1 pytest benchmarks/test_data_speed.py --benchmark-only -s``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from bench_cases import wall_times

from compress.data import TensorSplit, load_dataset
from compress.recipe.schema import DataConfig

REPO = Path(__file__).resolve().parents[1]


def _best_of(function, repeats: int = 5) -> float:
    """Fastest of several timings: robust to other processes competing for the cores."""
    return min(wall_times(function, repeats))


def test_batch_stream_costs_about_one_gather(benchmark):
    split = TensorSplit(torch.randn(55_000, 1, 28, 28), torch.randint(0, 10, (55_000,)))
    stream = split.batches(60, seed=0)
    order = torch.randperm(55_000)

    def gathers() -> None:
        for j in range(200):
            index = order[j * 60:(j + 1) * 60]
            split.images.index_select(0, index), split.labels.index_select(0, index)

    def batches() -> None:
        for _ in range(200):
            next(stream)

    gathers()  # warm-up
    baseline = _best_of(gathers)
    benchmark.pedantic(batches, rounds=5, iterations=1, warmup_rounds=1)
    ours = benchmark.stats.stats.min
    benchmark.extra_info.update(batches_s=ours, gathers_s=baseline, ratio=ours / baseline)
    print(f"\n200 batches of 60: stream {ours * 1e3:.1f} ms, bare gathers {baseline * 1e3:.1f} ms, "
          f"ratio {ours / baseline:.2f}")
    assert ours < 3 * baseline + 0.01


@pytest.fixture
def cifar_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tarball = Path(os.environ.get("COMPRESS_CIFAR10_TAR") or REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz")
    if not tarball.is_file():
        pytest.skip(f"CIFAR-10 JPEG tarball {tarball} not found; set COMPRESS_CIFAR10_TAR")
    for name in ("COMPRESS_DATA", "COMPRESS_DATA_MEMORY_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("COMPRESS_CIFAR10", str(tarball))
    return tmp_path / "cache"


def test_cifar10_cached_load_against_first_load(benchmark, cifar_cache):
    config = DataConfig(name="cifar10", validation_size=5000)
    began = time.perf_counter()
    load_dataset(config, seed=0)
    first = time.perf_counter() - began
    benchmark.pedantic(lambda: load_dataset(config, seed=0), rounds=3, iterations=1)
    cached = benchmark.stats.stats.min
    benchmark.extra_info.update(first_load_s=first, cached_load_s=cached, ratio=cached / first)
    print(f"\nCIFAR-10 first load (extract + decode + cache) {first:.1f}s, cached {cached:.2f}s, "
          f"ratio {cached / first:.3f}")
    assert cached < first
