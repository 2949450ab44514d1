"""The toolkit's batch order for a whole lottery search, as a torch ``IterableDataset``.

``find_ticket.py`` trains level 0 on batches 0..iterations-1 of ``split.batches(batch_size, seed)`` and
every later level on batches rewind_to..iterations-1 again (the data order is rewound with the weights).
``TicketBatches`` yields exactly that sequence, from the global step its ``position()`` names when
iteration starts -- so a framework that resumes from a checkpoint picks up the right batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, Sampler

from compress.integrations._engine import level_spans, locate


class TicketBatches(IterableDataset):
    """Batches (or, with ``samples=True``, their rows one by one) in the order of the toolkit's loop.

    ``split``: a compress training split (``compress.load_dataset(...).train``). With ``samples=True``
    each row is yielded as ``{x_key: image, "labels": label}`` for a DataLoader that batches them again
    (``batch_size`` rows stacked are bitwise the toolkit's batch): the Hugging Face Trainer's way.
    Finite: it ends after the last level's last step.
    """

    def __init__(self, split: Any, batch_size: int, seed: int, *, iterations: int, rewind_to: int, rounds: int,
                 position: Callable[[], int] | None = None, samples: bool = False, x_key: str = "x") -> None:
        super().__init__()
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.iterations, self.rewind_to, self.rounds = iterations, rewind_to, rounds
        self.spans = level_spans(iterations, rewind_to, rounds)
        self.position = position or (lambda: 0)
        self.samples, self.x_key = samples, x_key

    def batches(self, start: int = 0) -> Iterator[tuple[Any, Any]]:
        """The batches from global step ``start`` (0-based) to the end of the search."""
        level, step = locate(start, self.iterations, self.rewind_to, self.rounds)
        for index in range(level, len(self.spans)):
            first, last = self.spans[index]
            begin = step if index == level else first
            if begin > last:
                continue
            stream = self.split.batches(self.batch_size, self.seed, start=begin)
            for _ in range(begin, last + 1):
                yield next(stream)

    def __iter__(self) -> Iterator[Any]:
        for x, y in self.batches(self.position()):
            if not self.samples:
                yield x, y
                continue
            for row in range(x.shape[0]):
                yield {self.x_key: x[row], "labels": y[row]}


class ResumableSampler(Sampler[int]):
    """Indices of a dataset of one's own for a whole search, resumable at any optimizer step.

    ``DataLoader(dataset, batch_size=batch_size, sampler=ticket.sampler(len(dataset), batch_size))``:
    global batch b holds positions ``b * batch_size ...`` of a stream made of one seeded permutation of
    the dataset per pass. Each iteration starts at the batch of the step the search stands at
    (``position()``), so a fit resumed from a mid-epoch checkpoint sees exactly the batches an
    uninterrupted fit would have seen. Batches are not rewound with the weights at a level's end (the
    stream goes on), unlike ``TicketBatches``, which replays the toolkit's own order.
    """

    def __init__(self, size: int, batch_size: int, seed: int, total_steps: int,
                 position: Callable[[], int] | None = None) -> None:
        if size < 1 or batch_size < 1:
            raise ValueError(f"ResumableSampler: size {size} and batch_size {batch_size} must be >= 1")
        self.size, self.batch_size, self.seed, self.total_steps = size, batch_size, seed, total_steps
        self.position = position or (lambda: 0)

    def __len__(self) -> int:
        return self.total_steps * self.batch_size

    def _pass(self, index: int) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + index))

    def __iter__(self) -> Iterator[int]:
        start = self.position() * self.batch_size
        end = self.total_steps * self.batch_size
        index, offset = divmod(start, self.size)
        while start < end:
            order = self._pass(index)
            for i in order[offset:].tolist():
                if start >= end:
                    return
                yield i
                start += 1
            index, offset = index + 1, 0
