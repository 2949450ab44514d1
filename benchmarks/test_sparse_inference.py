"""Latency (batch 1) and throughput (batch 64) of every backend on every benchmark ticket.

Grouped by (model, batch) so pytest-benchmark prints ratios to the fastest in each group; the conftest
writes benchmarks/results/ (JSON records, README.md with the table, PNG chart) when the session ends.
"""

from __future__ import annotations

import statistics
import time

import pytest
from bench_cases import BATCH_SIZES, BUDGET_S, CASES, MAX_ROUNDS, MIN_ROUNDS

from compress.bench import BASELINE
from compress.bench.suite import record
from compress.bench.timing import Timing

PARAMS = [pytest.param(case, batch, backend, id=f"{case.slug}-b{batch}-{backend}")
          for case in CASES for batch in BATCH_SIZES for backend in case.backends]


def _per_call(fn, x) -> float:
    start = time.perf_counter()
    for _ in range(3):
        fn(x)
    return (time.perf_counter() - start) / 3


def _plan(fn, baseline, x) -> tuple[int, int, int]:
    """(untimed calls before each timed one, warm-up rounds, timed rounds) for about BUDGET_S per benchmark.

    Untimed calls: a timed call right after the other backend ran is up to ~17 % slower (its weights
    out of cache; measured on LeNet at batch 64) and it takes ~3 calls to fade; for calls over 1 ms one
    is enough.
    """
    per_call = _per_call(fn, x)
    base_call = _per_call(baseline, x) if baseline is not None else 0.0
    untimed = 3 if max(per_call, base_call) < 1e-3 else 1
    per_round = (untimed + 1) * (per_call + base_call)
    return untimed, min(5, max(1, int(0.05 / per_round))), min(MAX_ROUNDS, max(MIN_ROUNDS, int(BUDGET_S / per_round)))


@pytest.mark.parametrize(("case", "batch", "backend"), PARAMS)
def test_sparse_inference(benchmark, bench_session, case, batch, backend):
    built = bench_session.case(case)
    if backend not in built.backends:
        pytest.skip(f"{backend} on {case.label}: {built.unavailable.get(backend, 'not built')}")
    fn = built.backends[backend]
    x = built.inputs[batch]
    benchmark.group = f"{case.label} batch={batch}"
    benchmark.extra_info.update({"model": case.label, "batch_size": batch, "backend": backend,
                                 "threads": bench_session.threads})
    baseline = built.backends.get(BASELINE)
    paired: list[float] = []

    untimed, warmup, rounds = _plan(fn, baseline, x)

    def setup() -> None:
        # Dense ORT before every timed round, timed here (outside pytest-benchmark's clock), so load
        # drift on a shared machine hits backend and baseline alike. Symmetric: each timed call (the
        # baseline's here, the backend's by pytest-benchmark) follows untimed calls of itself.
        if baseline is not None:
            for _ in range(untimed):
                baseline(x)
            start = time.perf_counter()
            baseline(x)
            paired.append(time.perf_counter() - start)
        for _ in range(untimed):
            fn(x)

    benchmark.pedantic(fn, args=(x,), setup=setup, rounds=rounds, iterations=1, warmup_rounds=warmup)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None:  # --benchmark-disable: the function ran once, nothing was timed
        return
    timing = Timing(median_ms=stats.median * 1e3, iqr_ms=stats.iqr * 1e3, min_ms=stats.min * 1e3,
                    repeats=stats.rounds)
    row = record(built.facts, backend, batch, timing, bench_session.threads)
    row["granularity"] = built.facts["granularity"]
    if "macs_remaining_nonzero" in built.facts:
        row["macs_remaining_nonzero"] = round(built.facts["macs_remaining_nonzero"], 5)
    if paired:
        row["dense_ort_paired_ms"] = round(statistics.median(paired[warmup:] or paired) * 1e3, 5)
        row["speedup_vs_dense_ort"] = 1.0 if backend == BASELINE else round(
            row["dense_ort_paired_ms"] / row["median_ms"], 3)
    if backend == "auto":
        row["auto_ran"] = fn.backend_for(batch).name
    bench_session.records.append(row)
