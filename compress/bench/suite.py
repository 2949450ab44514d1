"""``benchmark``: time every backend of one ticket at each batch size, dense ORT in the same run."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from compress.bench.auto import AutoBackend
from compress.bench.backends import BACKENDS, make_backends
from compress.bench.report import add_speedups, machine_info
from compress.bench.source import (
    SourceLike,
    batch_of,
    macs_remaining,
    onnx_weights_remaining,
    resolve_source,
    weights_remaining,
)
from compress.bench.timing import load_average, measure_interleaved, pinned_threads
from compress.errors import UserError


@dataclass
class BenchResult:
    records: list[dict]
    machine: dict
    unavailable: dict[str, str] = field(default_factory=dict)
    auto_choices: dict[int, dict] = field(default_factory=dict)


def describe(source: SourceLike, example_input: torch.Tensor | None = None,
             label: str | None = None) -> dict:
    """model label, weights_remaining and macs_remaining (None for an ONNX file) of a source."""
    resolved = resolve_source(source, example_input, label)
    if resolved.onnx_path is not None:
        return {"model": resolved.label, "weights_remaining": onnx_weights_remaining(resolved.onnx_path),
                "macs_remaining": None}
    example = resolved.require_example("macs_remaining")
    return {"model": resolved.label, "weights_remaining": weights_remaining(resolved.model),
            "macs_remaining": macs_remaining(resolved.model, example)}


def record(facts: dict, backend: str, batch_size: int, timing, threads: int) -> dict:
    """One result row; ``speedup_vs_dense_ort`` is filled by ``add_speedups`` once the baseline is known."""
    return {"model": facts["model"], "weights_remaining": round(facts["weights_remaining"], 5),
            "backend": backend, "batch_size": batch_size, "median_ms": round(timing.median_ms, 5),
            "iqr_ms": round(timing.iqr_ms, 5), "repeats": timing.repeats, "speedup_vs_dense_ort": None,
            "granularity": "weight",
            "macs_remaining": None if facts["macs_remaining"] is None else round(facts["macs_remaining"], 5),
            "threads": threads}


def benchmark(source: SourceLike, example_input: torch.Tensor | None = None, *,
              backends: list[str] | tuple[str, ...] | None = None,
              batch_sizes: list[int] | tuple[int, ...] = (1, 64),
              threads: int | None = None, budget_s: float = 0.5, rounds: int = 5, label: str | None = None,
              workdir: str | Path | None = None, accuracy_data: tuple[torch.Tensor, torch.Tensor] | None = None,
              accuracy_tolerance: float | None = None) -> BenchResult:
    """Median latency of each backend at each batch size, candidates interleaved, threads pinned.

    ``budget_s``: seconds of timed calls per backend and batch size (at least 10 calls each).
    ``accuracy_data`` / ``accuracy_tolerance``: labelled inputs on which ``auto`` checks a reduced precision
    (bf16, int8) against fp32 (``labelled_test_examples`` gives a run's); see ``make_backends``.
    """
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise UserError(f"batch sizes must be integers >= 1, got {list(batch_sizes)}")
    load_before = load_average()
    with pinned_threads(threads) as pinned:
        resolved = resolve_source(source, example_input, label)
        facts = describe(resolved)
        built, unavailable = make_backends(list(BACKENDS) if backends is None else list(backends), resolved,
                                           threads=pinned, batch_sizes=sizes, workdir=workdir,
                                           budget_s=min(budget_s, 0.3), accuracy_data=accuracy_data,
                                           accuracy_tolerance=accuracy_tolerance)
        if not built:
            raise UserError("no backend can run this model: "
                             + "; ".join(f"{name}: {why}" for name, why in unavailable.items()))
        example = resolved.require_example("benchmark")
        records = []
        for batch in sizes:
            x = batch_of(example, batch)
            fns = {name: partial(backend, x) for name, backend in built.items()}
            timings = measure_interleaved(fns, rounds=rounds, budget_s=budget_s)
            for name, timing in timings.items():
                row = record(facts, name, batch, timing, pinned)
                if isinstance(built[name], AutoBackend):
                    row["auto_ran"] = built[name].backend_for(batch).name
                records.append(row)
    machine = {**machine_info(pinned), "load_before": load_before, "load_after": load_average()}
    auto = next((b for b in built.values() if isinstance(b, AutoBackend)), None)
    if auto is not None and auto.accuracy:
        machine["auto_accuracy"] = dict(auto.accuracy)
    return BenchResult(add_speedups(records), machine, unavailable, auto.choices if auto else {})


def labelled_test_examples(run_dir: str | Path, limit: int = 1000) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first ``limit`` test examples of a run's dataset (normalised, as the model takes them) with their
    labels, for ``auto``'s accuracy rule; None when the run dir has no recipe or its data is not on disk."""
    import dataclasses

    from compress import paths
    from compress.data import load_dataset
    from compress.recipe import load_recipe

    recipe_path = Path(run_dir) / paths.RECIPE
    if not recipe_path.is_file():
        return None
    recipe = load_recipe(recipe_path)
    try:
        data = load_dataset(dataclasses.replace(recipe.data, download=False), recipe.seed, torch.device("cpu"))
    except (OSError, UserError):
        return None
    x, y = next(iter(data.test.eval_batches(limit)))
    return x.float(), y

