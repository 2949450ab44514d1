"""The toolkit's batch order for a whole lottery search, as a torch ``IterableDataset``.

``find_ticket.py`` trains level 0 on batches 0..iterations-1 of ``split.batches(batch_size, seed)`` and
every later level on batches rewind_to..iterations-1 again (the data order is rewound with the weights).
``TicketBatches`` yields exactly that sequence, from the global step its ``position()`` names when
iteration starts -- so a framework that resumes from a checkpoint picks up the right batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import IterableDataset

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
