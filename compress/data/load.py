"""``load_dataset``: raw data -> seeded train / val split -> normalised splits on the device."""

from __future__ import annotations

import logging
import time

import torch

from compress.data.identity import data_identity
from compress.data.registry import DATASETS, RawData, StreamData, memory_limit
from compress.data.stream import FolderSplit
from compress.data.tensors import DataSplits, TensorSplit, channel_stats, normalise, seeded_generator
from compress.errors import UserError
from compress.recipe.schema import DataConfig
from compress.runtime import resolve_device

log = logging.getLogger(__name__)

_STATS_SAMPLE = 1000  # streamed folders: images decoded to estimate mean / std
# Largest data.image_size: one 3-channel float32 image is then 192 MiB, a batch of 32 6 GiB.
MAX_IMAGE_SIZE = 4096


def _check_config(config: DataConfig) -> None:
    if config.validation_size < 0:
        raise UserError(f"data.validation_size must be >= 0, got {config.validation_size}")
    if config.train_subset is not None and config.train_subset < 1:
        raise UserError(f"data.train_subset must be >= 1 or null, got {config.train_subset}")
    if config.test_subset is not None and config.test_subset < 1:
        raise UserError(f"data.test_subset must be >= 1 or null, got {config.test_subset}")
    if config.image_size is not None and config.image_size < 1:
        raise UserError(f"data.image_size must be >= 1 or null, got {config.image_size}")
    if config.image_size is not None and config.image_size > MAX_IMAGE_SIZE:
        gib = 3 * config.image_size ** 2 * 4 / 2**30
        raise UserError(f"data.image_size {config.image_size} is too large: at most {MAX_IMAGE_SIZE} pixels a side "
                         f"(one 3-channel image would take {gib:,.1f} GiB as float32)")


def split_indices(n: int, validation_size: int, train_subset: int | None, seed: int,
                  name: str = "dataset") -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, val rows) of the original training set; a pure function of the arguments.

    Rows stay in the shuffled order, so ``train_subset`` takes a random (seeded) subset rather than
    the first classes of a class-sorted folder.
    """
    if n == 0:
        raise UserError(f"{name} has no training examples")
    if validation_size >= n:
        raise UserError(f"data.validation_size {validation_size} leaves no training examples: {name} has {n}")
    order = torch.randperm(n, generator=seeded_generator("validation split", seed))
    val, train = order[:validation_size], order[validation_size:]
    if train_subset is not None:
        if train_subset > len(train):
            raise UserError(f"data.train_subset {train_subset} exceeds the {len(train)} training examples of {name} "
                             f"left after holding out validation_size {validation_size}")
        train = train[:train_subset]
    return train, val


def test_indices(n: int, test_subset: int | None, seed: int) -> torch.Tensor | None:
    """None = the whole test set; else a seeded random subset (sorted, so evaluation order is stable)."""
    if test_subset is None or test_subset >= n:
        return None
    return torch.randperm(n, generator=seeded_generator("test subset", seed))[:test_subset].sort().values


def load_dataset(config: DataConfig, seed: int, device: torch.device | str = "cpu") -> DataSplits:
    """Load ``config.name`` and hold ``config.validation_size`` training examples out as ``val``.

    ``device`` may be ``"auto"`` (CUDA when present); in-memory splits live there.
    """
    spec = DATASETS.get(config.name)
    _check_config(config)
    device = resolve_device(device) if isinstance(device, str) else device
    started = time.perf_counter()
    raw = spec.load(config)
    _check_labels(raw, config.name)
    train_rows, val_rows = split_indices(raw.num_train, config.validation_size, config.train_subset, seed, config.name)
    num_test = len(raw.test) if isinstance(raw, StreamData) else raw.test_images.shape[0]
    test_rows = test_indices(num_test, config.test_subset, seed)
    if (num_test if test_rows is None else len(test_rows)) == 0:
        raise UserError(f"{config.name}: the test split of {raw.source} has no examples; "
                         "give it a test set (for a folder: images in test/<class>/ or val/<class>/)")
    if isinstance(raw, StreamData):
        splits = _stream_splits(raw, train_rows, val_rows, test_rows, device)
    else:
        splits = _tensor_splits(raw, train_rows, val_rows, test_rows, config.image_size, device)
    splits.identity = data_identity(config, seed, raw, num_test)
    log.info("loaded %r in %.1fs", splits, time.perf_counter() - started)
    return splits


def _check_labels(raw: RawData | StreamData, name: str) -> None:
    """Every label must index ``classes``: a model sized by ``num_classes`` would fail mid-training."""
    if not raw.classes:
        raise UserError(f"{name}: {raw.source} has no classes")
    if isinstance(raw, StreamData):
        labels = [label for _, label in raw.train] + [label for _, label in raw.test]
        low, high = (min(labels), max(labels)) if labels else (0, 0)
    else:
        parts = [t for t in (raw.train_labels, raw.test_labels) if t.numel()]
        low = min((int(t.min()) for t in parts), default=0)
        high = max((int(t.max()) for t in parts), default=0)
    if low < 0 or high >= len(raw.classes):
        raise UserError(f"{name}: labels in {raw.source} span {low}..{high}, outside 0..{len(raw.classes) - 1} "
                         f"for its {len(raw.classes)} classes")


def _tensor_splits(raw: RawData, train_rows: torch.Tensor, val_rows: torch.Tensor, test_rows: torch.Tensor | None,
                   image_size: int | None, device: torch.device) -> DataSplits:
    channels, height, width = raw.train_images.shape[1:]
    if raw.mean is None or raw.std is None:
        mean, std = channel_stats(raw.train_images[train_rows])
    else:
        mean, std = torch.tensor(raw.mean), torch.tensor(raw.std)
    if len(mean) != channels:
        raise UserError(f"{raw.source}: {len(mean)} normalisation means for {channels} channels")
    side = image_size or height
    fill = -mean / std  # a black pixel after normalisation: what padding shows

    def build(images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None) -> TensorSplit:
        # Store resized when it fits; otherwise keep native pixels and resize each batch.
        resized_bytes = images.shape[0] * channels * side * side * 4
        eager = image_size is None or resized_bytes <= memory_limit()
        stored = normalise(images, mean, std, device, image_size if eager else None)
        return TensorSplit(stored, labels.to(device), fill=fill, size=None if eager else image_size, indices=rows)

    train = build(raw.train_images[train_rows], raw.train_labels[train_rows], train_rows)
    val = build(raw.train_images[val_rows], raw.train_labels[val_rows], val_rows)
    if test_rows is None:
        test = build(raw.test_images, raw.test_labels, None)
    else:
        test = build(raw.test_images[test_rows], raw.test_labels[test_rows], None)
    return DataSplits(train, val, test, num_classes=len(raw.classes), in_channels=channels, image_size=side,
                      classes=list(raw.classes), source=raw.source, mean=tuple(mean.tolist()),
                      std=tuple(std.tolist()))


def _stream_splits(raw: StreamData, train_rows: torch.Tensor, val_rows: torch.Tensor,
                   test_rows: torch.Tensor | None, device: torch.device) -> DataSplits:
    from compress.data.folder import ImageDecodeError, decode_samples

    train_samples = [raw.train[i] for i in train_rows.tolist()]
    val_samples = [raw.train[i] for i in val_rows.tolist()]
    if raw.mean is None or raw.std is None:
        try:
            sample, _ = decode_samples(train_samples[:_STATS_SAMPLE], raw.in_channels, raw.image_size,
                                       (raw.image_size, raw.image_size))
        except ImageDecodeError as exc:
            raise exc.inside(raw.tree, raw.source) from exc
        mean, std = channel_stats(sample)
    else:
        mean, std = torch.tensor(raw.mean), torch.tensor(raw.std)

    def build(samples: list[tuple[str, int]]) -> FolderSplit:
        return FolderSplit(samples, raw.in_channels, raw.image_size, mean, std, device, where=(raw.tree, raw.source))

    test_samples = raw.test if test_rows is None else [raw.test[i] for i in test_rows.tolist()]
    return DataSplits(build(train_samples), build(val_samples), build(test_samples), num_classes=len(raw.classes),
                      in_channels=raw.in_channels, image_size=raw.image_size, classes=list(raw.classes),
                      source=raw.source, mean=tuple(mean.tolist()), std=tuple(std.tolist()))
