"""Timing: median of individually timed calls after warm-up, with torch threads pinned.

Candidates compared against each other are measured interleaved (round-robin bursts), so a change in
machine load during the measurement hits all of them alike instead of whichever ran last.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from compress.runtime import set_threads


@dataclass(frozen=True)
class Timing:
    """Per-call wall time in milliseconds over ``repeats`` calls."""

    median_ms: float
    iqr_ms: float
    min_ms: float
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def pinned_threads(threads: int | None = None) -> Iterator[int]:
    """torch intra-op threads set by ``compress.runtime.set_threads`` (default: all cores), restored after."""
    before = torch.get_num_threads()
    try:
        yield set_threads(threads)
    finally:
        torch.set_num_threads(before)


@contextmanager
def _no_gc() -> Iterator[None]:
    # a collection in the middle of a timed call is noise of the harness, not of the backend
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _summary(samples: list[float]) -> Timing:
    ordered = sorted(samples)
    if len(ordered) >= 4:
        quartiles = statistics.quantiles(ordered, n=4)
        iqr = quartiles[2] - quartiles[0]
    else:
        iqr = ordered[-1] - ordered[0]
    return Timing(median_ms=statistics.median(ordered) * 1e3, iqr_ms=iqr * 1e3, min_ms=ordered[0] * 1e3,
                  repeats=len(ordered))


def _check(warmup: int, min_repeats: int, max_repeats: int, budget_s: float) -> None:
    if warmup < 0 or min_repeats < 1 or max_repeats < min_repeats or budget_s <= 0:
        raise ValueError(f"timing needs warmup >= 0, 1 <= min_repeats <= max_repeats and budget_s > 0, got "
                         f"warmup={warmup}, min_repeats={min_repeats}, max_repeats={max_repeats}, budget_s={budget_s}")


def _calls_for(fn: Callable[[], object], warmup: int, min_repeats: int, max_repeats: int, budget_s: float) -> int:
    """Warm ``fn`` up and return how many timed calls fit the budget."""
    start = time.perf_counter()
    for _ in range(max(warmup, 1)):
        fn()
    per_call = (time.perf_counter() - start) / max(warmup, 1)
    return int(min(max_repeats, max(min_repeats, budget_s / max(per_call, 1e-7))))


def measure(fn: Callable[[], object], *, warmup: int = 10, min_repeats: int = 10, max_repeats: int = 2000,
            budget_s: float = 0.5) -> Timing:
    """Median per-call time of ``fn()`` after ``warmup`` calls; as many calls as fit ``budget_s``."""
    _check(warmup, min_repeats, max_repeats, budget_s)
    calls = _calls_for(fn, warmup, min_repeats, max_repeats, budget_s)
    samples = []
    clock = time.perf_counter
    with _no_gc():
        for _ in range(calls):
            start = clock()
            fn()
            samples.append(clock() - start)
    return _summary(samples)


def measure_interleaved(fns: dict[str, Callable[[], object]], *, rounds: int = 5, warmup: int = 10,
                        min_repeats: int = 10, max_repeats: int = 2000, budget_s: float = 0.5) -> dict[str, Timing]:
    """``measure`` for several candidates at once: ``rounds`` bursts each, in turn; medians over all calls."""
    _check(warmup, min_repeats, max_repeats, budget_s)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    calls = {name: _calls_for(fn, warmup, min_repeats, max_repeats, budget_s) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    clock = time.perf_counter
    with _no_gc():
        for _ in range(rounds):
            for name, fn in fns.items():
                fn()  # one untimed call: the previous candidate may have left caches and threads cold
                for _ in range(max(1, calls[name] // rounds)):
                    start = clock()
                    fn()
                    samples[name].append(clock() - start)
    return {name: _summary(values) for name, values in samples.items()}


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load averages (None where the OS does not tell)."""
    try:
        return os.getloadavg()
    except OSError:
        return None
