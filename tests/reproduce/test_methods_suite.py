"""The methods suite: every experiment is a valid recipe, and its report reads run dirs' summaries right."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress import paths
from compress.io import save_json
from compress.recipe import load_recipe
from compress.reproduce import suite
from compress.reproduce.methods_report import cheapest_match, collect, write_methods_results
from compress.reproduce.suite import RECIPES, run_dir


def test_every_methods_experiment_is_a_valid_recipe_with_a_unique_name():
    experiments = suite("methods", "/nonexistent/cifar.tar.gz")
    assert len({e.name for e in experiments}) == len(experiments)
    methods = {e.extra["method"] for e in experiments}
    assert {"imp_reset", "imp_rewind", "imp_early_bird", "lr_rewind", "finetune", "oneshot_magnitude",
            "init_snip", "init_grasp", "init_synflow", "init_random_erk"} <= methods
    for experiment in experiments:
        recipe = load_recipe(RECIPES / experiment.recipe, overrides=experiment.overrides_for(0))
        assert recipe.train.schedule.name == "step"
        if experiment.extra["read"] == "one_step":
            assert recipe.lottery.one_shot and recipe.lottery.rounds in experiment.extra["targets"]


def _entry(round_index: int, weights: float, accuracy: float, flops: float, controls: dict | None = None) -> dict:
    entry = {"round": round_index, "weights_remaining": weights, "early_stop_test_accuracy": accuracy,
             "compute_to_ticket": {"iterations": 1000 * (round_index + 1), "flops": flops, "flops_sparse": flops}}
    if controls:
        entry["controls"] = {k: {"early_stop_test_accuracy": v} for k, v in controls.items()}
    return entry


def test_report_reads_chains_at_targets_and_one_step_runs_at_their_round(tmp_path: Path):
    experiments = [e for e in suite("methods") if e.extra["model"] == "lenet300"]
    by_name = {e.extra["method"] + ("" if e.extra["read"] == "chain" else f"_r{next(iter(e.extra['targets']))}"): e
               for e in experiments}
    chain = [_entry(r, 0.8 ** r, 0.88 - 0.001 * r, 10.0 * (r + 1)) for r in range(16)]
    for seed, shift in ((0, 0.0), (1, 0.002)):
        imp = [{**e, "early_stop_test_accuracy": e["early_stop_test_accuracy"] + shift} for e in chain]
        target = run_dir(tmp_path, by_name["imp_reset"].name, seed) / paths.SUMMARY
        target.parent.mkdir(parents=True)
        save_json({"rounds": imp}, target)
    snip = run_dir(tmp_path, by_name["init_snip_r12"].name, 0) / paths.SUMMARY
    snip.parent.mkdir(parents=True)
    save_json({"rounds": [_entry(0, 1.0, 0.88, 10.0),
                          {**_entry(1, 0.8 ** 12, 0.87, 10.0, {"shuffle": 0.86, "reinit": 0.865}), "round": 1}]}, snip)
    rows = collect(experiments, tmp_path)
    imp12 = next(r for r in rows if r["method"] == "imp_reset" and r["target_round"] == 12)
    assert imp12["seeds"] == [0, 1] and imp12["accuracy"]["mean"] == pytest.approx(0.88 - 0.012 + 0.001)
    assert imp12["compute_flops"]["mean"] == pytest.approx(130.0)
    snip12 = next(r for r in rows if r["method"] == "init_snip")
    assert snip12["compute_vs_imp"] == pytest.approx(10.0 / 130.0)
    assert snip12["shuffle"]["mean"] == pytest.approx(0.86)
    answer = cheapest_match(rows, "lenet300")
    assert answer["answer"] == "init_snip"  # 0.87 vs IMP 0.869: within 0.5 points at 1/13 of the compute
    out = write_methods_results(experiments, tmp_path, tmp_path / "out")
    assert (out / "methods_lenet300_accuracy_vs_weights.png").exists()
    assert (out / "methods_lenet300_accuracy_vs_compute.png").exists()
    assert "init_snip" in (out / "methods.md").read_text()
    # the results folder keeps every summary it read: without any run dir the same rows come back
    import shutil

    from compress.reproduce.report import SUMMARIES

    assert (out / SUMMARIES / f"{by_name['imp_reset'].name}-seed1.json").exists()
    for name in (by_name["imp_reset"].name, by_name["init_snip_r12"].name):
        shutil.rmtree(tmp_path / name)
    assert collect(experiments, tmp_path, out / SUMMARIES) == rows
    again = write_methods_results(experiments, tmp_path, out)
    assert "0 of the suite's" in (again / "methods.md").read_text()  # hand-made summaries: no recipe hash
