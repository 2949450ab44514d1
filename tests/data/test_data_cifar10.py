"""CIFAR-10 from the shared JPEG ImageFolder tarball, extracted and decoded once into a temp cache."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import torch

from compress.data import DataSplits, find_data, load_dataset
from compress.recipe.schema import DataConfig

pytestmark = [pytest.mark.needs_cifar, pytest.mark.slow]


@pytest.fixture(scope="module")
def cifar_env(cifar10_tar: Path, tmp_path_factory: pytest.TempPathFactory):
    """A private cache and $COMPRESS_CIFAR10 pointing at the tarball, for this module only."""
    cache = tmp_path_factory.mktemp("cifar-cache")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("COMPRESS_DATA", "COMPRESS_DATA_MEMORY_LIMIT"):
            patch.delenv(name, raising=False)
        patch.setenv("XDG_CACHE_HOME", str(cache))
        patch.setenv("COMPRESS_CIFAR10", str(cifar10_tar))
        yield cache


@pytest.fixture(scope="module")
def first_load(cifar_env: Path) -> tuple[DataSplits, float]:
    started = time.perf_counter()
    splits = load_dataset(DataConfig(name="cifar10", validation_size=5000), seed=0)
    return splits, time.perf_counter() - started


def test_find_data_does_not_extract(cifar10_tar, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("COMPRESS_CIFAR10", raising=False)
    monkeypatch.delenv("COMPRESS_DATA", raising=False)
    assert find_data(DataConfig(name="cifar10", root=str(cifar10_tar))) == (True, f"{cifar10_tar} (tarball)")
    assert not (tmp_path / "compress").exists()


def test_cifar10_counts_shapes_and_classes(first_load, cifar10_tar):
    splits, seconds = first_load
    print(f"CIFAR-10 first load (extract + decode + cache): {seconds:.1f}s")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45000, 5000, 10000)
    assert len(splits.train) + len(splits.val) == 50000
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 3, 32)
    assert splits.classes[:3] == ["airplane", "automobile", "bird"] and splits.source == str(cifar10_tar)
    assert splits.train.images.shape[1:] == (3, 32, 32) and splits.train.images.dtype == torch.float32
    assert torch.bincount(splits.test.labels).tolist() == [1000] * 10
    # CIFAR-10's published statistics normalise the JPEG copy to roughly zero mean, unit std
    assert splits.train.images.mean((0, 2, 3)).abs().max() < 0.05
    assert (splits.train.images.std((0, 2, 3)) - 1).abs().max() < 0.05


def test_cached_load_neither_extracts_nor_decodes_and_is_identical(first_load, cifar_env, monkeypatch):
    # how much faster the cached load is: benchmarks/test_data_speed.py
    splits, _ = first_load

    def again_(*args, **kwargs):
        raise AssertionError("extracted or decoded again")

    monkeypatch.setattr("compress.data.folder.tarfile.open", again_)
    monkeypatch.setattr("compress.data.folder.decode_samples", again_)
    again = load_dataset(DataConfig(name="cifar10", validation_size=5000), seed=0)
    assert torch.equal(again.val.images, splits.val.images) and torch.equal(again.test.labels, splits.test.labels)
    assert again.identity == splits.identity
    cache_files = list((cifar_env / "compress" / "extracted").glob("cifar10-jpg-*.u8-native.pt"))
    assert len(cache_files) == 1 and not [p for p in cache_files[0].parent.iterdir() if p.name.startswith(".")]


def test_cifar10_augmented_batches(first_load):
    splits, _ = first_load
    plain = list(itertools.islice(splits.train.batches(128, seed=0), 2))
    augmented = list(itertools.islice(splits.train.batches(128, seed=0, augment=True), 2))
    for (x, y), (xa, ya) in zip(plain, augmented, strict=True):
        assert xa.shape == (128, 3, 32, 32) and torch.equal(y, ya) and not torch.equal(x, xa)


def test_cifar10_train_subset_and_resize(cifar_env):
    config = DataConfig(name="cifar10", validation_size=1000, train_subset=2000, image_size=16)
    splits = load_dataset(config, seed=1)
    assert (len(splits.train), len(splits.val)) == (2000, 1000) and splits.image_size == 16
    assert splits.train.images.shape[1:] == (3, 16, 16) and splits.test.images.shape[1:] == (3, 16, 16)
    # a seeded random subset, not the first classes of the class-sorted folder
    assert len(torch.unique(splits.train.labels)) == 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cifar10_on_cuda(cifar_env):
    splits = load_dataset(DataConfig(name="cifar10", validation_size=5000), seed=0, device="cuda")
    x, y = next(splits.train.batches(256, seed=0, augment=True))
    assert x.is_cuda and y.is_cuda and x.shape == (256, 3, 32, 32)
