"""Seeds round by round: every seed of an experiment reaches round r before any starts round r + 1.

A budgeted run (a long suite on a shared core, say) that is stopped at a deadline then leaves every seed
at the same depth, so each finished round has all its seeds, instead of seed 0 complete and the last
seed missing. Each seed is still an ordinary run dir, trained by ``LotteryRun.run_round`` exactly as
``find_ticket`` with the ``inline`` executor would (same files, bit for bit); rerunning resumes.
"""

from __future__ import annotations

import time
from pathlib import Path

from compress.reproduce.experiment import RECIPES, Experiment, run_dir
from compress.reproduce.trunks import adopt_and_report


def run_interleaved(experiment: Experiment, seeds: list[int], runs_root: Path, threads: int) -> list[dict]:
    """Train ``seeds`` of ``experiment`` in this process, round-major; returns per-seed wall times."""
    from compress import distributed
    from compress.lottery import LotteryRun
    from compress.recipe import load_recipe
    from compress.runtime import set_threads

    distributed.init_from_env()
    set_threads(threads)
    runs: dict[int, LotteryRun] = {}
    walls = dict.fromkeys(seeds, 0.0)
    try:
        for seed in seeds:
            recipe = load_recipe(RECIPES / experiment.recipe,
                                 overrides=[*experiment.overrides_for(seed), "lottery.executor=inline"])
            out = run_dir(Path(runs_root), experiment.name, seed)
            adopt_and_report(recipe, out, Path(runs_root), f"{experiment.name} seed {seed}")  # as the suite's runs do
            runs[seed] = LotteryRun(recipe, out, progress=False)
        entries: dict[int, list[dict]] = {seed: [] for seed in seeds}
        for round_index in range(max(run.search.rounds for run in runs.values()) + 1):
            for seed, run in runs.items():
                if round_index > run.search.rounds:
                    continue
                start = time.perf_counter()
                entries[seed].append(run.run_round(round_index))  # a finished round is read back, not retrained
                run.write_summary(entries[seed])  # rewritten only when it changed
                walls[seed] += time.perf_counter() - start
                print(f"{experiment.name} seed {seed} round {round_index} done", flush=True)
    finally:
        for run in runs.values():
            run.close()
    return [{"experiment": experiment.name, "seed": seed, "wall_s": walls[seed]} for seed in seeds]
