"""Dataset registry: each name maps to a loader of raw data, its static metadata and a file finder."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from compress.errors import UserError
from compress.recipe.schema import DataConfig
from compress.registry import DATASETS

# Above this many bytes of float32 per split, images are resized per batch instead of stored resized,
# and an image folder is streamed from disk instead of decoded into memory.
DEFAULT_MEMORY_LIMIT = 4 * 2**30


def memory_limit() -> int:
    """Bytes one split may take in memory as float32 (env ``COMPRESS_DATA_MEMORY_LIMIT`` overrides)."""
    value = os.environ.get("COMPRESS_DATA_MEMORY_LIMIT")
    if not value:
        return DEFAULT_MEMORY_LIMIT
    try:
        return int(value)
    except ValueError:
        raise UserError(f"COMPRESS_DATA_MEMORY_LIMIT must be a number of bytes, got {value!r}") from None


@dataclass(frozen=True)
class DatasetInfo:
    """Static metadata, known without loading (None where it depends on the files)."""

    num_classes: int | None
    in_channels: int | None
    image_size: int | None


@dataclass
class RawData:
    """A dataset decoded into memory: uint8 N x C x H x W images (CPU) and int64 labels."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: list[str]
    source: str
    # per-channel mean / std in [0, 1] units; None = computed from the training split
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # what was read, for ``DataSplits.identity``: records from ``compress.data.locate.file_record`` and friends;
    # empty = unknown (a registered loader that does not say), then the tensors are sampled instead
    files: list[dict] = field(default_factory=list)

    @property
    def num_train(self) -> int:
        return self.train_images.shape[0]


@dataclass
class StreamData:
    """An image folder too large for memory: file lists, decoded batch by batch."""

    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    classes: list[str]
    source: str
    in_channels: int
    image_size: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    files: list[dict] = field(default_factory=list)
    tree: Path | None = None  # the folder the sample paths are in (names a bad image inside a tarball)

    @property
    def num_train(self) -> int:
        return len(self.train)


Loader = Callable[[DataConfig], "RawData | StreamData"]
Finder = Callable[[DataConfig], "tuple[bool, str]"]


def _always_available(config: DataConfig) -> tuple[bool, str]:
    return True, f"{config.name}: generated in memory"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Loader
    info: DatasetInfo
    find: Finder = field(default=_always_available)




def register_dataset(name: str, *, info: DatasetInfo,
                     find: Finder | None = None) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(config) -> RawData | StreamData`` under ``name``.

    ``find(config) -> (available, where)`` must not download or extract (it serves ``--dry-run``);
    without one the dataset counts as always available (generated data).
    """

    def decorator(loader: Loader) -> Loader:
        spec = DatasetSpec(name=name, load=loader, info=info, find=find or _always_available)
        DATASETS.register(name)(spec)
        return loader

    return decorator


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)


def dataset_info(name: str) -> DatasetInfo:
    return DATASETS.get(name).info


def find_data(config: DataConfig) -> tuple[bool, str]:
    """Whether the files for ``config`` are available and where (or where they would be fetched to).

    Never downloads or extracts anything.
    """
    return DATASETS.get(config.name).find(config)
