"""MNIST-family datasets: IDX files read in place, search order, offline errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from compress.data import find_data, load_dataset, locate
from compress.data.idx import read_idx
from compress.data.load import split_indices
from compress.recipe.schema import DataConfig

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path: Path, tensor: torch.Tensor, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, tensor.dim()]) + b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    data = header + tensor.to(torch.uint8).numpy().tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)


def write_idx_set(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = False) -> None:
    generator = torch.Generator().manual_seed(0)
    for stem, n in zip(STEMS, (n_train, n_train, n_test, n_test), strict=True):
        shape = (n, 28, 28) if "images" in stem else (n,)
        high = 256 if "images" in stem else 10
        tensor = torch.randint(0, high, shape, generator=generator)
        write_idx(folder / (stem + (".gz" if gz else "")), tensor, gz)


@pytest.fixture
def no_system_copies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(locate.SYSTEM_DIRS, "mnist", [tmp_path / "no-system-mnist"])
    monkeypatch.setitem(locate.SYSTEM_DIRS, "fashion_mnist", [tmp_path / "no-system-fashion-mnist"])


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    tensor = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    write_idx(tmp_path / "x", tensor, gz)
    assert torch.equal(read_idx(tmp_path / "x"), tensor)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    write_idx(tmp_path / "x", torch.zeros(3, 4, 5, dtype=torch.uint8))
    (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-7])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "x")
    (tmp_path / "y").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "y")


def test_fashion_mnist_from_the_debian_files(fashion_mnist_root, data_env):
    config = DataConfig(name="fashion_mnist", root=str(fashion_mnist_root), validation_size=5000)
    splits = load_dataset(config, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, 28)
    assert splits.train.images.shape[1:] == (1, 28, 28) and splits.train.images.dtype == torch.float32
    assert splits.classes[0] == "T-shirt/top" and splits.source == str(fashion_mnist_root)
    for split in (splits.train, splits.val, splits.test):
        assert int(split.labels.min()) == 0 and int(split.labels.max()) == 9
    # the split is a pure function of the seed: the same rows come back, another seed gives others
    train_rows, val_rows = split_indices(60000, 5000, None, seed=0)
    assert torch.equal(splits.val.indices, val_rows) and torch.equal(splits.train.indices, train_rows)
    assert not torch.equal(split_indices(60000, 5000, None, seed=1)[1], val_rows)
    raw = read_idx(fashion_mnist_root / "train-images-idx3-ubyte.gz")[val_rows[:5]].float() / 255
    torch.testing.assert_close(splits.val.images[:5, 0], (raw - 0.2860) / 0.3530)
    assert find_data(config) == (True, str(fashion_mnist_root))


def test_fashion_mnist_is_found_without_root(fashion_mnist_root, data_env, monkeypatch):
    monkeypatch.setitem(locate.SYSTEM_DIRS, "fashion_mnist", [fashion_mnist_root])
    assert find_data(DataConfig(name="fashion_mnist")) == (True, str(fashion_mnist_root))


def test_search_order_prefers_compress_data_in_torchvision_layout(tmp_path, data_env, monkeypatch, no_system_copies):
    write_idx_set(tmp_path / "store" / "MNIST" / "raw", gz=False)
    write_idx_set(data_env / "compress" / "data" / "mnist", n_train=40, gz=True)  # the user cache: later in order
    monkeypatch.setenv("COMPRESS_DATA", str(tmp_path / "store"))
    splits = load_dataset(DataConfig(name="mnist", validation_size=5, train_subset=20), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 5, 10)
    assert splits.source == str(tmp_path / "store" / "MNIST" / "raw") and splits.classes == list("0123456789")
    monkeypatch.delenv("COMPRESS_DATA")
    splits = load_dataset(DataConfig(name="mnist", validation_size=5), seed=0)
    assert len(splits.train) == 35 and splits.source == str(data_env / "compress" / "data" / "mnist")


def test_missing_mnist_without_download_is_one_line_naming_the_folders(tmp_path, data_env, no_system_copies):
    root = tmp_path / "empty"
    config = DataConfig(name="mnist", root=str(root), download=False)
    with pytest.raises(ValueError) as error:
        load_dataset(config, seed=0)
    message = str(error.value)
    assert "\n" not in message and str(root) in message and "COMPRESS_DATA" in message
    available, where = find_data(config)
    assert not available and str(root) in where


def test_failed_download_is_one_line_and_leaves_no_empty_folders(tmp_path, data_env, no_system_copies, monkeypatch):
    import torchvision.datasets

    class OfflineMNIST:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)  # what torchvision does first
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://x/, got:\n"
                               "<urlopen error [Errno -2] Name or service not known>\n")

    monkeypatch.setattr(torchvision.datasets, "MNIST", OfflineMNIST)
    root = tmp_path / "data"
    with pytest.raises(ValueError) as error:
        load_dataset(DataConfig(name="mnist", root=str(root)), seed=0)
    message = str(error.value)
    assert "\n" not in message and str(root) in message and "Name or service not known" in message
    assert not (root / "MNIST").exists()
    assert "would download" in find_data(DataConfig(name="mnist", root=str(root)))[1]


def test_fashion_mnist_error_suggests_the_debian_package(tmp_path, data_env, no_system_copies):
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False), seed=0)
