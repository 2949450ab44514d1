"""The timing harness (compress.bench.timing) against direct timings measured in the same process.

Wall-time assertions moved here from tests/bench/test_bench_report.py: on a loaded machine they say
more about the load than about the code. Each compares with a baseline timed right before it, as a
ratio, never with an absolute time. Run: ``pytest benchmarks/test_timing_harness.py --benchmark-only``.
"""

from __future__ import annotations

import statistics
import time
from functools import partial

from bench_cases import wall_times

from compress.bench import measure, measure_interleaved

SLEEP_S = 0.002  # a call whose true duration is known (sleep's granularity is well below it)
BUDGET_S = 0.05


def _direct_ms(fn, calls: int = 30) -> float:
    """Median wall time of ``fn()`` in ms, each call timed on its own: the baseline."""
    return statistics.median(wall_times(fn, calls)) * 1e3


def test_measure_median_matches_a_direct_timing(benchmark):
    sleep = partial(time.sleep, SLEEP_S)
    baseline_ms = _direct_ms(sleep)
    timing = benchmark.pedantic(measure, args=(sleep,), kwargs={"warmup": 1, "min_repeats": 5, "budget_s": BUDGET_S},
                                rounds=3, iterations=1)
    ratio = timing.median_ms / baseline_ms
    # wall time of one measure() call against its budget: warm-up takes at most half of it, the
    # timed burst stops once it is spent (plus the call that was running)
    budget_ratio = benchmark.stats.stats.median / (1.5 * BUDGET_S + 2 * baseline_ms / 1e3)
    benchmark.extra_info.update({"direct_ms": baseline_ms, "measure_ms": timing.median_ms, "ratio": ratio,
                                 "wall_over_budget": budget_ratio})
    assert timing.repeats >= 5
    assert 0.8 <= ratio <= 1.5, f"measure's median {timing.median_ms:.3f} ms vs direct {baseline_ms:.3f} ms"
    assert budget_ratio <= 1.5, f"measure took {benchmark.stats.stats.median:.3f} s for a {BUDGET_S} s budget"


def test_measure_interleaved_orders_fast_and_slow(benchmark):
    slow = partial(time.sleep, SLEEP_S / 2)
    baseline_ms = _direct_ms(slow)
    timings = benchmark.pedantic(measure_interleaved, args=({"fast": lambda: None, "slow": slow},),
                                 kwargs={"rounds": 3, "warmup": 1, "min_repeats": 3, "budget_s": 0.02},
                                 rounds=3, iterations=1)
    ratio = timings["slow"].median_ms / baseline_ms
    benchmark.extra_info.update({"direct_slow_ms": baseline_ms, "slow_ms": timings["slow"].median_ms,
                                 "fast_ms": timings["fast"].median_ms, "slow_ratio": ratio})
    assert timings["fast"].median_ms < timings["slow"].median_ms
    assert 0.8 <= ratio <= 1.5, f"slow's median {timings['slow'].median_ms:.3f} ms vs direct {baseline_ms:.3f} ms"
