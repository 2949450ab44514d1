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

from compress.errors import UserError
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
        raise UserError(f"timing needs warmup >= 0, 1 <= min_repeats <= max_repeats and budget_s > 0, got "
                         f"warmup={warmup}, min_repeats={min_repeats}, max_repeats={max_repeats}, budget_s={budget_s}")


def _warm(fn: Callable[[], object], warmup: int, budget_s: float) -> None:
    """``warmup`` calls, cut short after ``budget_s`` (at least one call)."""
    deadline = time.perf_counter() + budget_s
    for _ in range(max(warmup, 1)):
        fn()
        if time.perf_counter() > deadline:
            break


def _burst(fn: Callable[[], object], min_calls: int, max_calls: int, budget_s: float, into: list[float]) -> None:
    """Timed calls until ``budget_s`` is spent (but at least ``min_calls``, at most ``max_calls``).

    The budget is checked as we go, not estimated up front: under load a call can get 100x slower
    between warm-up and measurement.
    """
    clock = time.perf_counter
    first = clock()
    count = 0
    while count < max_calls and (count < min_calls or clock() - first < budget_s):
        start = clock()
        fn()
        into.append(clock() - start)
        count += 1


def measure(fn: Callable[[], object], *, warmup: int = 10, min_repeats: int = 10, max_repeats: int = 2000,
            budget_s: float = 0.5) -> Timing:
    """Median per-call time of ``fn()`` after ``warmup`` calls; timed calls until ``budget_s`` is spent."""
    _check(warmup, min_repeats, max_repeats, budget_s)
    samples: list[float] = []
    with _no_gc():
        _warm(fn, warmup, budget_s / 2)
        _burst(fn, min_repeats, max_repeats, budget_s, samples)
    return _summary(samples)


def measure_interleaved(fns: dict[str, Callable[[], object]], *, rounds: int = 5, warmup: int = 10,
                        min_repeats: int = 10, max_repeats: int = 2000, budget_s: float = 0.5) -> dict[str, Timing]:
    """``measure`` for several candidates at once: ``rounds`` bursts each, in turn; medians over all calls.

    ``budget_s`` is per candidate (split over the rounds).
    """
    _check(warmup, min_repeats, max_repeats, budget_s)
    if rounds < 1:
        raise UserError(f"rounds must be >= 1, got {rounds}")
    samples: dict[str, list[float]] = {name: [] for name in fns}
    per_round = (-(-min_repeats // rounds), max(1, max_repeats // rounds), budget_s / rounds)
    with _no_gc():
        for fn in fns.values():
            _warm(fn, warmup, budget_s / 2)
        for _ in range(rounds):
            for name, fn in fns.items():
                fn()  # untimed: the previous candidate may have left caches and threads cold
                _burst(fn, *per_round, into=samples[name])
    return {name: _summary(values) for name, values in samples.items()}


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load averages (None where the OS does not tell)."""
    try:
        return os.getloadavg()
    except OSError:
        return None
