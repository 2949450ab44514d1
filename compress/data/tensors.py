"""In-memory splits: normalised float32 tensors on the device, batched by index without per-sample Python.

Batch ``k`` of a training stream is a pure function of ``(seed, k)``: the epoch permutation and the
augmentation draws are seeded from ``(seed, epoch)`` only, so a run restarted at ``start=k`` sees
exactly the batches it would have seen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from compress.data.identity import identity_hash
from compress.errors import UserError

PAD = 4  # CIFAR-style random crop: pad 4, crop back to the original side
_CHUNK = 4096  # examples per chunk when normalising / resizing a whole split


def mix_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (Python's ``hash`` is salted per process for strings)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seeded_generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(*parts))


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=seeded_generator("order", seed, epoch))


def augment_params(count: int, seed: int, epoch: int) -> tuple[Tensor, Tensor]:
    """Crop offsets (count x 2, in 0..2*PAD) and flip flags (count,) for every position of one epoch."""
    generator = seeded_generator("augment", seed, epoch)
    shifts = torch.randint(0, 2 * PAD + 1, (count, 2), generator=generator)
    flips = torch.randint(0, 2, (count,), generator=generator, dtype=torch.bool)
    return shifts, flips


def crop_flip(x: Tensor, shifts: Tensor, flips: Tensor, fill: Tensor | None = None) -> Tensor:
    """Random crop (pad ``PAD``) and horizontal flip of a whole batch with one gather.

    ``fill`` is what a black pixel becomes after normalisation, so padding matches torchvision's
    ``RandomCrop(32, padding=4)`` applied to the raw image before ``Normalize``.
    """
    b, c, h, w = x.shape
    hp, wp = h + 2 * PAD, w + 2 * PAD
    canvas = x.new_zeros((b, c, hp, wp)) if fill is None else fill.view(1, c, 1, 1).to(x).expand(b, c, hp, wp).clone()
    canvas[:, :, PAD:PAD + h, PAD:PAD + w] = x
    rows = shifts[:, :1] + torch.arange(h, device=x.device)  # b x h
    base = torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], (w - 1) - base, base) + shifts[:, 1:]  # b x w
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return canvas.view(b, c, hp * wp).gather(2, index).view(b, c, h, w)


def resize(x: Tensor, size: int | None) -> Tensor:
    if size is None or x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def normalise(images: Tensor, mean: Tensor, std: Tensor, device: torch.device, size: int | None = None) -> Tensor:
    """uint8 N x C x H x W (any device) -> float32 on ``device``, normalised and optionally resized.

    Works in chunks so that neither the float copy of the whole set nor a large resize sits on the
    device twice.
    """
    n, c, h, w = images.shape
    side = (h, w) if size is None else (size, size)
    out = torch.empty((n, c, *side), dtype=torch.float32, device=device)
    # (x / 255 - mean) / std as one multiply-add on the float copy
    scale = (1.0 / (255.0 * std)).to(device).view(1, c, 1, 1)
    bias = (-mean / std).to(device).view(1, c, 1, 1)
    for i in range(0, n, _CHUNK):
        chunk = images[i:i + _CHUNK].to(device)
        if size is None or (h, w) == (size, size):
            torch.addcmul(bias, chunk.float(), scale, out=out[i:i + _CHUNK])
        else:
            out[i:i + _CHUNK] = resize(chunk.float(), size).mul_(scale).add_(bias)
    return out


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean / std in [0, 1] units of a uint8 N x C x H x W tensor, in chunks."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    square = torch.zeros(c, dtype=torch.float64)
    count = 0
    for i in range(0, images.shape[0], _CHUNK):
        chunk = images[i:i + _CHUNK].to(torch.float64).div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        square += chunk.square().sum(dim=(0, 2, 3))
        count += chunk.numel() // c
    if count == 0:
        return torch.full((c,), 0.5), torch.full((c,), 0.5)
    mean = total / count
    std = (square / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.float(), std.float().clamp_min(1e-3)


def check_batch_size(batch_size: int, n: int, start: int) -> int:
    """Batches per epoch; the last partial batch of each epoch is dropped."""
    if n == 0:
        raise UserError("cannot draw training batches from an empty split (validation_size 0 gives an empty val split)")
    if not 1 <= batch_size <= n:
        raise UserError(f"batch_size must be between 1 and the split size {n}, got {batch_size}")
    if start < 0:
        raise UserError(f"start must be >= 0, got {start}")
    return n // batch_size


class Split(Protocol):
    """What the training loop uses on every split."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, seed: int, start: int = 0,
                augment: bool = False) -> Iterator[tuple[Tensor, Tensor]]: ...

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]: ...


class TensorSplit:
    """A split held as one normalised float32 tensor N x C x H x W and int64 labels on one device.

    ``size`` resizes each batch on the fly: used when the resized set would not fit in memory
    (e.g. CIFAR-10 at 224 pixels for a timm model); otherwise images are stored already resized.
    ``indices`` are the rows of the original training set this split came from (None for test).
    """

    def __init__(self, images: Tensor, labels: Tensor, *, fill: Tensor | None = None, size: int | None = None,
                 indices: Tensor | None = None) -> None:
        if images.dim() != 4 or images.shape[0] != labels.shape[0]:
            raise UserError(f"images must be N x C x H x W with one label each, got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(device=images.device, dtype=torch.int64)
        self.fill = None if fill is None else fill.to(images.device)
        self.size = size
        self.indices = indices

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        c, h, w = self.sample_shape
        return f"TensorSplit({len(self)} x {c}x{h}x{w}, device={self.device})"

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (c, h, w) if self.size is None else (c, self.size, self.size)

    def batches(self, batch_size: int, seed: int, start: int = 0,
                augment: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """Infinite training stream; batch ``k`` (from ``start``) depends only on ``(seed, k)``."""
        per_epoch = check_batch_size(batch_size, len(self), start)
        return self._stream(batch_size, seed, start, augment, per_epoch)

    def _stream(self, batch_size: int, seed: int, start: int, augment: bool,
                per_epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, position = divmod(start, per_epoch)
        n = len(self)
        while True:
            order = epoch_permutation(n, seed, epoch).to(self.device)
            if augment:
                shifts, flips = (t.to(self.device) for t in augment_params(per_epoch * batch_size, seed, epoch))
            for j in range(position, per_epoch):
                rows = slice(j * batch_size, (j + 1) * batch_size)
                index = order[rows]
                x = resize(self.images.index_select(0, index), self.size)
                if augment:
                    x = crop_flip(x, shifts[rows], flips[rows], self.fill)
                yield x, self.labels.index_select(0, index)
            epoch, position = epoch + 1, 0

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The split in order, in batches of ``batch_size`` (the last one may be smaller)."""
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        for i in range(0, len(self), batch_size):
            yield resize(self.images[i:i + batch_size], self.size), self.labels[i:i + batch_size]


@dataclass
class DataSplits:
    """What ``load_dataset`` returns; ``val`` is empty when ``validation_size`` is 0."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    classes: list[str]
    source: str
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    # what the splits were made from (dataset, files read with fingerprints, split parameters; JSON-ready):
    # compress.data.identity; compare ``identity_hash`` before resuming a run
    identity: dict = field(default_factory=dict)

    @property
    def identity_hash(self) -> str:
        """16 hex digits derived from ``identity``."""
        return identity_hash(self.identity)

    def __repr__(self) -> str:
        return (f"DataSplits(train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
                f"{self.in_channels}x{self.image_size}x{self.image_size}, {self.num_classes} classes, "
                f"source={self.source!r})")
