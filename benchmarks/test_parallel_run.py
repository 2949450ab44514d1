"""Time to ticket: the default recipe with its controls on 2 local workers vs everything inline.

The run is recipes/lth_lenet300_fashion.yaml (LeNet-300-100, Fashion-MNIST, both controls) at a reduced
budget (``BENCH_ITERATIONS`` per training, default 300; ``BENCH_ROUNDS`` rounds, default 4): 1 + rounds
ticket trainings in a chain and 2 x rounds controls. Each executor runs the whole search into a fresh run
dir, in this process (``find_ticket``), so data loading, worker start-up (spawn, import torch, load the
data) and the ticket export to a file all count. ``inline`` keeps torch's own thread count (the cores);
``local:2`` gives each worker and the ticket chain ``cores // 2`` threads.

Results: benchmarks/results/parallel_run.md (and .json). Run with
``pytest benchmarks/test_parallel_run.py --benchmark-only``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from compress.bench.report import cpu_model
from compress.bench.timing import load_average
from compress.io import save_text
from compress.lottery import find_ticket
from compress.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "parallel_run.md"
RESULTS_JSON = RESULTS.with_suffix(".json")
DATA = "/usr/share/datasets/fashion-mnist"
ITERATIONS = int(os.environ.get("BENCH_ITERATIONS", "300"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
EXECUTORS = ("inline", "local:2")
_MEASURED: dict[str, dict] = {}


def _recipe():
    overrides = [f"train.iterations={ITERATIONS}", f"lottery.rounds={ROUNDS}",
                 "lottery.controls=[reinit, random_prune]", "export.onnx=false"]
    if os.path.isdir(DATA) and not os.environ.get("COMPRESS_DATA"):
        overrides.append(f"data.root={DATA}")
    return load_recipe(REPO / "recipes" / "lth_lenet300_fashion.yaml", overrides=overrides)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_time_to_ticket(benchmark, executor, tmp_path):
    recipe = _recipe()
    threads = torch.get_num_threads()
    load_before = load_average()
    results: dict = {}

    def run() -> None:
        out = tmp_path / f"run-{len(results)}"
        results["summary"] = find_ticket(recipe, out, progress=False, executor=executor)

    started = time.perf_counter()
    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    wall = time.perf_counter() - started
    torch.set_num_threads(threads)
    summary = results["summary"]
    _MEASURED[executor] = {"wall_s": wall, "load_before": load_before, "load_after": load_average(),
                           "threads": threads, "trainings": 1 + ROUNDS * 3,
                           "training_wall_s": sum(r["wall_s"] + sum(c["wall_s"] for c in r.get("controls", {}).values())
                                                  for r in summary["rounds"]),
                           "accuracies": [(r["early_stop_test_accuracy"],
                                           {k: c["early_stop_test_accuracy"] for k, c in r.get("controls", {}).items()})
                                          for r in summary["rounds"]],
                           "ticket": summary["ticket"]}
    benchmark.extra_info.update(executor=executor, wall_s=wall)
    if all(name in _MEASURED for name in EXECUTORS):
        _write()


def _write() -> None:
    """Append this measurement to parallel_run.json (every measurement is kept) and render the markdown."""
    inline, local = _MEASURED["inline"], _MEASURED["local:2"]
    entry = {"iterations": ITERATIONS, "rounds": ROUNDS, "ratio": inline["wall_s"] / local["wall_s"],
             "accuracies_equal": inline["accuracies"] == local["accuracies"], "cpu": cpu_model(),
             "cores": os.cpu_count(), "torch": torch.__version__, "measured": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                            time.gmtime()),
             "note": os.environ.get("BENCH_NOTE", ""),
             **{name: {k: v for k, v in m.items() if k != "accuracies"} for name, m in _MEASURED.items()}}
    entries = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else []
    entries.append(entry)
    save_text(json.dumps(entries, indent=2, default=str) + "\n", RESULTS_JSON)
    save_text(render(entries), RESULTS)


def render(entries: list[dict]) -> str:
    last = entries[-1]
    lines = [
        "# Time to ticket: controls on 2 local workers vs inline",
        "",
        "Command: `pytest benchmarks/test_parallel_run.py --benchmark-only` (pytest-benchmark, one run per "
        "executor, inline first, both in the same process, back to back); `BENCH_ITERATIONS` / `BENCH_ROUNDS` "
        "set the budget. Raw numbers: parallel_run.json.",
        "",
        "## Machine",
        "",
        f"- CPU: {last['cpu']}, {last['cores']} logical cores (model from /proc/cpuinfo, cores from os.cpu_count())",
        f"- torch {last['torch']}",
        "- **shared machine**: the 2 cores were shared with other work (another engineer's CI run of the test "
        "suite and benchmarks) while this was measured; the load averages below say how busy it was. Absolute "
        "times are noisy; each pair of runs ran back to back.",
        "",
        "## What was measured",
        "",
        f"`find_ticket` of recipes/lth_lenet300_fashion.yaml (LeNet-300-100, Fashion-MNIST from {DATA}) with "
        "`train.iterations=<I> lottery.rounds=<R> lottery.controls=[reinit, random_prune] export.onnx=false`: "
        "1 + R ticket trainings (a chain) and 2R controls, into a fresh run dir each time. Wall time of the whole "
        "call: data loading, worker start-up (spawn, import torch, each worker loads the data once), summary, "
        "report and ticket file included.",
        "",
        "- `inline`: everything in one process, in order, with torch's default thread count (the cores).",
        "- `local:2`: the ticket chain in the main process; each round's controls go to a spawn pool of 2 worker "
        "processes as soon as the round's mask exists; every process (main and workers) takes cores // 2 torch "
        "threads.",
        "",
        "## Results",
        "",
        "| measured | budget (iterations x rounds) | trainings | inline wall s | local:2 wall s | speed-up (inline / local:2) "
        "| sum of per-training wall_s, inline / local:2 | load avg (1/5/15 min) before inline; after local:2 |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for entry in sorted(entries, key=lambda e: (e["iterations"], e["rounds"])):
        inline, local = entry["inline"], entry["local:2"]
        lines.append(f"| {entry['measured']} | {entry['iterations']} x {entry['rounds']} | {inline['trainings']} | {inline['wall_s']:.1f} "
                     f"| {local['wall_s']:.1f} | **{entry['ratio']:.2f}x** | {inline['training_wall_s']:.1f} / "
                     f"{local['training_wall_s']:.1f} | {_load(inline['load_before'])}; {_load(local['load_after'])} |")
    notes = [f"- {e['measured']} ({e['iterations']} x {e['rounds']}): {e['note']}" for e in entries if e.get("note")]
    lines += ["", "Notes on the conditions of each measurement:", "", *notes] if notes else []
    lines += [
        "",
        "Reading: on 2 cores the parallel run trains 3 models at once (the ticket chain and 2 controls) with 1 "
        "thread each, so each training takes longer than inline's 2-thread training (the per-training sum "
        "grows), but the run finishes sooner once trainings are long enough to pay for the worker start-up "
        "(a few seconds per worker). At 300 iterations per training (well under a second each) the start-up "
        "dominates and `local:2` is slower; at the default recipe's 2,000 iterations it was faster in both "
        "measurements, by little on a quiet machine (three 1-thread trainings on 2 cores contend for the cores and "
        "caches) and by more when other work shares the cores (inline's 2-thread trainings wait for a preempted "
        "thread at every op; 1-thread processes do not). Hence "
        "`lottery.executor: auto` picks `local:2` only for CPU runs with controls, at least 2 cores and "
        "`train.iterations` >= 1000 (compress.lottery.executors.AUTO_MIN_ITERATIONS), and `inline` otherwise.",
        "",
        "Accuracies: inline trains with 2 torch threads, local:2 with 1, and on a CPU torch's reductions round "
        "differently with another thread count, so the two runs' numbers differ slightly (equal here: "
        + ", ".join(f"{e['iterations']}x{e['rounds']}: {e['accuracies_equal']}" for e in entries) + "). With the same thread "
        "count per training (e.g. `COMPRESS_THREADS=1`) masks, final weights and every result number but "
        "wall_s are identical bit for bit: tests/lottery/test_executors.py checks it for inline, local:2 and Ray.",
        "",
    ]
    return "\n".join(lines)


def _load(values) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "n/a"
