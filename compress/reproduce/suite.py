"""The reproduction suites of ``tools/reproduce.py``: which experiments, which seeds, how they run.

Each (experiment, seed) pair is an ordinary lottery run dir under ``runs_root/<experiment>/seed<k>``,
so a killed suite resumes for free: rerunning the command skips finished rounds and trainings.
The pairs run on the lottery runner's executors (``compress.lottery.executors``): ``inline`` one after
the other, ``local`` in ``jobs`` worker processes, or ``ray``. With ``jobs`` > 1 each run trains its own
controls inline (the cores are taken by the parallel runs); with one job at a time each run's controls
follow ``run_executor`` (default ``auto``: on 2+ cores, ``local:2`` beside the ticket chain, see
``compress.lottery.schedule``), so the last seed does not train alone on one core.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import as_completed
from pathlib import Path

from compress.errors import UserError
from compress.io import load_json, save_text
from compress.reproduce.aggregate import is_complete, kept_summary
from compress.reproduce.experiment import RECIPES, Experiment, run_dir
from compress.reproduce.interleave import run_interleaved
from compress.reproduce.trunks import adopt_and_report

CIFAR10_TARBALL = "/work/shared/data/cifar10-jpg.tar.gz"
INVOCATIONS = "invocations.jsonl"


def _full_suite(cifar_root: str) -> list[Experiment]:
    lenet = ("lottery.rounds=15", "lottery.controls=[reinit, random_prune]", "train.iterations=1000",
             "train.eval_every=100", "train.checkpoint_every=1000")
    return [
        Experiment(
            name="fashion_mnist_lenet300", title="LeNet-300-100 on Fashion-MNIST (weight-level IMP)",
            recipe="lth_lenet300_fashion.yaml", overrides=lenet, seeds=(0, 1, 2),
            budget="1,000 iterations per round (paper: 50,000 on MNIST), 15 rounds to 3.6% remaining",
            paper="MNIST, 50,000 iterations: tickets learn faster down to 21% and match or beat dense down "
                  "to 3.6%; reinit falls from 21%; random pruning below reinit"),
        Experiment(
            name="fashion_mnist_lenet300_channel",
            title="LeNet-300-100 on Fashion-MNIST, channel level (whole neurons)",
            recipe="lth_lenet300_fashion.yaml",
            overrides=("prune.granularity=channel", "lottery.rounds=5", "lottery.controls=[reinit]",
                       "train.iterations=1000", "train.eval_every=100", "train.checkpoint_every=1000"),
            seeds=(0, 1, 2),
            budget="1,000 iterations per round, 20% of the hidden neurons per round, 5 rounds "
                   "(output layer never pruned)",
            paper="not in the paper (it prunes individual weights)"),
        Experiment(
            name="cifar10_conv2", title="Conv-2 on CIFAR-10 (JPEG copy)",
            recipe="lth_conv2.yaml",
            overrides=(f"data.root={cifar_root}", "lottery.rounds=2", "lottery.controls=[reinit]",
                       "train.iterations=500", "train.eval_every=250", "train.checkpoint_every=250"),
            seeds=(0, 1, 2),
            budget="500 iterations per round (paper: 20,000; ~0.5 epoch), evaluated every 250, 2 rounds "
                   "(to ~64% remaining), reinit control only: ~0.5 s per step on a shared core",
            paper="CIFAR-10, 20,000 iterations: up to +3.4 points over dense at 4.6% remaining, early "
                  "stopping up to 3.5x sooner"),
        Experiment(
            name="cifar10_resnet20_channel",
            title="ResNet-20 on CIFAR-10, channel level (structured tickets, rewinding)",
            recipe="lth_resnet20_rewind.yaml",
            # layer-wise: a global ranking of whole channels emptied the 64-wide stage first (25% of the
            # weights left after one 30% round); 30% of each group's channels per round ~ halves the MACs
            overrides=(f"data.root={cifar_root}", "prune.granularity=channel", "prune.scope=layerwise",
                       "prune.rates.conv=0.3", "lottery.rounds=2", "lottery.rewind_to=20",
                       "lottery.controls=[reinit, random_prune]", "train.iterations=280", "train.batch_size=32",
                       "train.optimizer.lr=0.05", "train.schedule.name=cosine", "train.eval_every=280",
                       "train.checkpoint_every=140", "data.validation_size=1000", "data.test_subset=1000"),
            seeds=(0, 1, 2),
            budget="280 iterations of batch 32 per training (~0.2 epoch; recipe: 30,000 of 128), cosine lr from "
                   "0.05, rewound to iteration 20, evaluated once at the end (validation 1,000, test 1,000 "
                   "images), 30% of each group's channels per round, 2 rounds (~49% and ~24% of the MACs), reinit "
                   "and structured random_prune controls: sized for ~70 min from ~1.4 s per batch-128 step measured "
                   "on a loaded core (load average 7-9 on 2 cores); it took 41 min",
            paper="not in the paper (it prunes individual weights); Liu et al. 2019 (arXiv:1810.05270) find "
                  "structured pruning's inherited weights no better than a random init"),
    ]


def _smoke_suite() -> list[Experiment]:
    # A low learning rate and a few steps keep the accuracies below 100% and different per seed,
    # so the test can tell an aggregate computed from the run dirs from a constant.
    tiny = ("lottery.rounds=2", "lottery.controls=[reinit, random_prune]", "train.iterations=12",
            "train.eval_every=4", "train.checkpoint_every=4", "train.batch_size=16", "train.optimizer.lr=1e-4",
            "data.name=synthetic", "data.validation_size=100")
    return [Experiment(name="smoke_lenet300", title="LeNet-300-100 on the synthetic set (CI smoke)",
                       recipe="lth_lenet300_fashion.yaml", overrides=tiny, seeds=(0, 1),
                       budget="12 iterations per round, 2 rounds", paper="none: a plumbing check")]


def _long_suite() -> list[Experiment]:
    # The paper's early-stopping claim needs a budget past the dense network's best validation loss: on
    # Fashion-MNIST (Adam 1.2e-3, batch 60) the dense validation loss bottoms out near 8,500 iterations
    # and rises after ~10,000 (seed 0, evaluated every 250). 12 rounds (to 6.9% remaining) and the reinit
    # control only: 3 seeds x 25 trainings x 10,000 iterations fit about an hour on one shared core.
    long = ("lottery.rounds=12", "lottery.controls=[reinit]", "train.iterations=10000",
            "train.eval_every=250", "train.checkpoint_every=2500")
    return [Experiment(
        name="fashion_mnist_lenet300_long",
        title="LeNet-300-100 on Fashion-MNIST, long budget (early-stopping iteration)",
        recipe="lth_lenet300_fashion.yaml", overrides=long, seeds=(0, 1, 2),
        budget="10,000 iterations per round (~11 epochs; dense validation loss turns up after ~8,500), "
               "evaluated every 250, 12 rounds to 6.9% remaining, reinit control only (random_prune dropped "
               "to fit the time)",
        paper="MNIST, 50,000 iterations (Figure 4): the ticket's early-stop iteration falls as it is pruned "
              "down to ~21% remaining (up to ~3.5x sooner), then rises again; reinit stops later than the "
              "ticket from ~21% on",
        extra={"iterations": 10000})]


SUITES = ("full", "long", "methods", "smoke")


def suite(name: str, cifar_root: str = CIFAR10_TARBALL) -> list[Experiment]:
    """The experiments of suite ``name`` (``full``, ``long`` or ``smoke``)."""
    if name == "full":
        return _full_suite(cifar_root)
    if name == "long":
        return _long_suite()
    if name == "smoke":
        return _smoke_suite()
    if name == "methods":
        from compress.reproduce.methods import methods_suite

        return methods_suite(cifar_root)
    raise UserError(f"unknown suite {name!r}: choose one of {', '.join(SUITES)}")


def select(experiments: list[Experiment], only: list[str] | None) -> list[Experiment]:
    if not only:
        return experiments
    known = {e.name for e in experiments}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise UserError(f"unknown experiment {unknown[0]!r}: choose from {', '.join(sorted(known))}")
    return [e for e in experiments if e.name in only]


def _run_one(experiment: Experiment, seed: int, runs_root: str, threads: int, run_executor: str = "inline") -> dict:
    """One (experiment, seed) run, in a worker process when jobs > 1; its controls on ``run_executor``."""
    from compress.lottery import find_ticket
    from compress.recipe import load_recipe
    from compress.runtime import set_threads

    # find_ticket itself leaves torch's thread count alone (it does not read COMPRESS_THREADS).
    set_threads(threads)
    recipe = load_recipe(RECIPES / experiment.recipe,
                         overrides=[*experiment.overrides_for(seed), f"lottery.executor={run_executor}"])
    start = time.perf_counter()
    out = run_dir(Path(runs_root), experiment.name, seed)
    adopt_and_report(recipe, out, Path(runs_root), f"{experiment.name} seed {seed}")
    find_ticket(recipe, out, progress=False)
    return {"experiment": experiment.name, "seed": seed, "wall_s": time.perf_counter() - start}


def threads_per_job(jobs: int) -> int:
    """COMPRESS_THREADS wins; otherwise the cores are split between the parallel jobs."""
    from_env = int(os.environ.get("COMPRESS_THREADS", "0") or 0)
    return from_env or max(1, (os.cpu_count() or 1) // jobs)


def finished_elsewhere(experiment: Experiment, seed: int, runs_root: Path, kept: Path | None) -> bool:
    """No run dir here, but a kept copy of a summary with every round of this very recipe: nothing to train.

    A suite longer than one machine's lease commits each finished run's summary beside its results
    (``compress.reproduce.aggregate.kept_summary``); the run dirs stay behind, so the next machine skips
    what is done. A changed recipe (another hash) or an unfinished run trains again."""
    if kept is None or run_dir(runs_root, experiment.name, seed).exists():
        return False
    path = kept_summary(kept, experiment.name, seed)
    return path.exists() and is_complete(experiment, seed, load_json(path))


def run_suite(experiments: list[Experiment], runs_root: Path, jobs: int = 1, argv: list[str] | None = None,
              seeds: list[int] | None = None, executor: str | None = None, run_executor: str | None = None,
              interleave: bool = False, kept: Path | None = None) -> dict:
    """Run (or resume) every (experiment, seed) pair, ``jobs`` at a time; returns this invocation's record.

    ``seeds`` restricts the run to those seeds (e.g. to add seeds while another process owns seed 0:
    two processes must never share a run dir). ``executor``: ``inline``, ``local`` or ``ray`` (default:
    ``inline`` for one job, ``local`` for more). ``run_executor``: each run's ``lottery.executor`` (default
    ``auto`` for one job, ``inline`` for more: parallel runs already fill the cores). ``interleave``: one
    job, and each experiment's seeds round by round in this process (``compress.reproduce.interleave``).
    ``kept``: the results folder's copies of finished runs' summaries; those runs are skipped
    (``finished_elsewhere``).
    """
    from compress.lottery.executors import open_executor

    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    executor = executor or ("inline" if jobs == 1 else "local")
    run_executor = run_executor or ("auto" if jobs == 1 else "inline")
    runs_root = Path(runs_root)
    runs_root.mkdir(parents=True, exist_ok=True)
    threads = threads_per_job(jobs)
    pairs = [(e, seed) for e in experiments for seed in e.seeds if seeds is None or seed in seeds]
    if not pairs:
        raise UserError(f"no (experiment, seed) pair matches --seed {seeds}: the suite's seeds are "
                         f"{sorted({s for e in experiments for s in e.seeds})}")
    done = [(e, seed) for e, seed in pairs if finished_elsewhere(e, seed, runs_root, kept)]
    if done:
        print(f"{len(done)} of {len(pairs)} runs finished on another machine (summaries kept in {kept}): skipped",
              file=sys.stderr, flush=True)
        pairs = [pair for pair in pairs if pair not in done]
    # Longest first (the most trainings x iterations) so the slow Conv-2 run does not start last.
    pairs.sort(key=lambda pair: -_cost(pair[0]))
    start, load_start = time.time(), _load()
    finished: list[dict] = []
    if interleave:
        if jobs != 1:
            raise UserError(f"--interleave runs the seeds in one process: --jobs must be 1, got {jobs}")
        for e in experiments:
            chosen = [seed for seed in e.seeds if seeds is None or seed in seeds]
            if chosen:
                finished += run_interleaved(e, chosen, runs_root, threads)
        return _record(runs_root, argv, jobs, threads, start, finished, "inline (seeds interleaved by round)",
                       load_start)

    def report(result: dict) -> None:
        finished.append(result)
        print(f"done {result['experiment']} seed {result['seed']} in {result['wall_s']:.0f} s",
              file=sys.stderr, flush=True)

    # inline: in this process, no interpreter start-ups (what keeps the CI smoke fast); local: spawned
    # workers (not forked: a forked child inherits torch's thread pools in an undefined state)
    with open_executor(executor, jobs, threads=threads) as pool:
        futures = []
        for e, seed in pairs:
            # absolute: a worker (a Ray one, say) may start in another folder
            futures.append(pool.submit(_run_one, e, seed, str(runs_root.resolve()), threads, run_executor))
            if pool.inline:
                report(futures.pop().result())
        for future in as_completed(futures):
            report(future.result())
    return _record(runs_root, argv, jobs, threads, start, finished, run_executor, load_start)


def _record(runs_root: Path, argv: list[str] | None, jobs: int, threads: int, start: float,
            finished: list[dict], run_executor: str = "inline", load_start: list[float] | None = None) -> dict:
    """Append this invocation (command, wall time, per-run wall times) to the runs root's log."""
    record = {"argv": argv or sys.argv, "jobs": jobs, "threads_per_job": threads, "run_executor": run_executor,
              "load_average_start": load_start, "load_average_end": _load(), "started": start,
              "wall_s": time.time() - start, "runs": sorted(finished, key=lambda r: (r["experiment"], r["seed"]))}
    log = runs_root / INVOCATIONS
    previous = log.read_text() if log.exists() else ""
    save_text(previous + json.dumps(record) + "\n", log)
    return record


def _load() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _cost(experiment: Experiment) -> float:
    values = dict(item.split("=", 1) for item in experiment.overrides if "=" in item)
    rounds = int(values.get("lottery.rounds", 1))
    controls = values.get("lottery.controls", "[]").count(",") + 1
    weight = 20.0 if "conv" in experiment.recipe else 1.0  # Conv-2 steps are far slower than LeNet's
    return weight * int(values.get("train.iterations", 1)) * (1 + rounds * (1 + controls))


def invocations(runs_root: Path) -> list[dict]:
    log = Path(runs_root) / INVOCATIONS
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
