"""A DataLoader-backed split for image folders too large to decode into memory.

Same interface and the same determinism as ``TensorSplit``: the epoch permutation and augmentation
draws come from ``(seed, epoch)``; workers only decode files, normalising and augmenting happen on
the device, on the whole batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from compress.data.folder import ImageDecodeError, decode_file
from compress.data.tensors import augment_params, check_batch_size, crop_flip, epoch_permutation
from compress.errors import UserError


def default_workers() -> int:
    value = os.environ.get("COMPRESS_WORKERS")
    if not value:
        return min(8, os.cpu_count() or 1)
    try:
        workers = int(value)
    except ValueError:
        workers = -1
    if workers < 0:
        raise UserError(f"COMPRESS_WORKERS must be a number of worker processes >= 0, got {value!r}")
    return workers


class _Files(Dataset):
    def __init__(self, samples: list[tuple[str, int]], channels: int, size: int,
                 where: tuple[Path | None, str] | None = None) -> None:
        self.samples, self.channels, self.size, self.where = samples, channels, size, where

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        try:
            return decode_file(path, self.channels, self.size), label
        except ImageDecodeError as exc:
            if self.where is None:
                raise
            raise exc.inside(*self.where) from exc


def _one_line_from_workers(batches: Iterator[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    """A UserError raised in a DataLoader worker comes back with the worker's traceback in its message:
    keep the original one-line message (the traceback's last line)."""
    try:
        yield from batches
    except UserError as exc:
        lines = str(exc).strip().splitlines()
        if len(lines) < 2 or not lines[0].startswith("Caught "):
            raise
        message = lines[-1].split(": ", 1)[-1]
        try:
            error = type(exc)(message)
        except TypeError:
            error = UserError(message)
        raise error from None
    finally:
        # stop the workers now, not whenever the garbage collector finalizes the iterator: a late
        # finalizer joined dead workers' sentinels from inside unrelated code (seen as a crash in poll())
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class _TrainOrder:
    """Batch index lists from batch ``start`` on, forever (a DataLoader ``batch_sampler``)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int) -> None:
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start

    def __iter__(self) -> Iterator[list[int]]:
        per_epoch = self.n // self.batch_size
        epoch, position = divmod(self.start, per_epoch)
        while True:
            order = epoch_permutation(self.n, self.seed, epoch).tolist()
            for j in range(position, per_epoch):
                yield order[j * self.batch_size:(j + 1) * self.batch_size]
            epoch, position = epoch + 1, 0


class FolderSplit:
    """Images decoded from files by DataLoader workers; ``len``, ``batches`` and ``eval_batches``."""

    def __init__(self, samples: list[tuple[str, int]], channels: int, size: int, mean: Tensor, std: Tensor,
                 device: torch.device, num_workers: int | None = None,
                 where: tuple[Path | None, str] | None = None) -> None:
        self.samples = samples
        self.where = where  # (tree, source): names a bad image as a member of the tarball it came from
        self.channels, self.size = channels, size
        self.device = torch.device(device)
        self.mean = mean.to(self.device).view(1, channels, 1, 1)
        self.std = std.to(self.device).view(1, channels, 1, 1)
        self.fill = (-self.mean / self.std).view(channels)
        self.num_workers = default_workers() if num_workers is None else num_workers

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"FolderSplit({len(self)} files, {self.channels}x{self.size}x{self.size}, device={self.device})"

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.channels, self.size, self.size

    def _loader(self, batch_sampler) -> DataLoader:
        return DataLoader(_Files(self.samples, self.channels, self.size, self.where), batch_sampler=batch_sampler,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, prefetch_factor=4 if self.num_workers else None,
                          # not fork: the training process has threads (OpenVINO's, TensorBoard's writer,
                          # torch's pools), and a forked copy of a threaded process may crash or hang
                          multiprocessing_context="spawn" if self.num_workers else None)

    def _normalise(self, images: Tensor) -> Tensor:
        images = images.to(self.device, non_blocking=True).float().div_(255.0)
        return images.sub_(self.mean).div_(self.std)

    def batches(self, batch_size: int, seed: int, start: int = 0,
                augment: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        per_epoch = check_batch_size(batch_size, len(self), start)
        return self._stream(batch_size, seed, start, augment, per_epoch)

    def _stream(self, batch_size: int, seed: int, start: int, augment: bool,
                per_epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        loader = self._loader(_TrainOrder(len(self), batch_size, seed, start))
        params_epoch, shifts, flips = -1, None, None
        for k, (images, labels) in enumerate(_one_line_from_workers(iter(loader)), start=start):
            x = self._normalise(images)
            if augment:
                epoch, j = divmod(k, per_epoch)
                if epoch != params_epoch:
                    shifts, flips = (t.to(self.device) for t in augment_params(per_epoch * batch_size, seed, epoch))
                    params_epoch = epoch
                rows = slice(j * batch_size, (j + 1) * batch_size)
                x = crop_flip(x, shifts[rows], flips[rows], self.fill)
            yield x, labels.to(self.device, non_blocking=True)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        order = [list(range(i, min(i + batch_size, len(self)))) for i in range(0, len(self), batch_size)]
        for images, labels in _one_line_from_workers(iter(self._loader(order))):
            yield self._normalise(images), labels.to(self.device, non_blocking=True)
