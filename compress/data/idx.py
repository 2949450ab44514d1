"""MNIST-family IDX files, read in place (gzipped or not), with torchvision as the download path."""

from __future__ import annotations

import gzip
import shutil
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from compress.data.locate import download_root, one_line, search_roots
from compress.errors import UserError
from compress.recipe.schema import DataConfig

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> Tensor:
    """One IDX file as a tensor (the format of LeCun's MNIST files)."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)  # one shot: several times faster than streaming gzip.open
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot read IDX file {path}: {one_line(exc)}") from exc
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset != expected:
        raise UserError(f"{path} is truncated or corrupt: {len(data) - offset} bytes of data, expected {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)
    # frombuffer is read-only; torch wants a writable array, and native byte order
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def idx_candidates(config: DataConfig, folder_names: tuple[str, ...], system_dirs: list[Path]) -> list[Path]:
    """Folders that may hold the four IDX files, most specific first."""
    folders: list[Path] = []
    for root in search_roots(config):
        folders.append(root)
        folders.extend(root / name for name in folder_names)
    folders.extend(system_dirs)
    return folders


def find_idx(folders: list[Path]) -> dict[str, Path] | None:
    """The first folder that holds all four files (each plain or .gz)."""
    for folder in folders:
        files = {key: _file_in(folder, stem) for key, stem in IDX_FILES.items()}
        if all(files.values()):
            return files  # type: ignore[return-value]
    return None


def read_idx_set(files: dict[str, Path]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train images N x 1 x 28 x 28 uint8, train labels, test images, test labels)."""
    tensors = {key: read_idx(path) for key, path in files.items()}
    for part in ("train", "test"):
        images, labels = tensors[f"{part}_images"], tensors[f"{part}_labels"]
        if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise UserError(f"IDX {part} files disagree: images {tuple(images.shape)}, labels {tuple(labels.shape)} "
                             f"({files[f'{part}_images'].parent})")
    return (tensors["train_images"].unsqueeze(1), tensors["train_labels"].long(),
            tensors["test_images"].unsqueeze(1), tensors["test_labels"].long())


def download_idx(config: DataConfig, dataset_class: str, searched: str,
                 apt_hint: str | None) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], str]:
    """torchvision's own download (users with internet); a one-line ValueError when that is impossible."""
    root = download_root(config)
    how = "put " + ", ".join(f"{stem}.gz" for stem in IDX_FILES.values()) + " in data.root or $COMPRESS_DATA"
    if apt_hint:
        how += f", or `{apt_hint}`"
    where = searched
    if not config.download:
        raise UserError(f"{config.name}: IDX files not found (searched {where}) and data.download is false; {how}")
    import torchvision.datasets as tvd

    created = not (root / dataset_class).exists()
    try:
        train = getattr(tvd, dataset_class)(str(root), train=True, download=True)
        test = getattr(tvd, dataset_class)(str(root), train=False, download=True)
    except Exception as exc:  # torchvision raises RuntimeError / URLError / OSError depending on the failure
        if created:
            _remove_if_no_files(root / dataset_class)
        raise UserError(f"{config.name}: IDX files not found (searched {where}) and the download to {root} failed "
                         f"({one_line(exc)}); {how}") from exc
    tensors = (train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), test.targets.long())
    return tensors, f"{root / dataset_class} (torchvision)"


def _remove_if_no_files(folder: Path) -> None:
    """A failed download leaves empty raw/ folders behind; they would only confuse the next search."""
    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
        shutil.rmtree(folder, ignore_errors=True)
