"""A suite's run dirs share one dense round 0; a run built on an adopted one equals one that trained it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from run_compare import without_wall

from compress import paths
from compress.recipe import load_recipe
from compress.reproduce import run_suite
from compress.reproduce.methods import Model, method_experiments
from compress.reproduce.suite import RECIPES, run_dir
from compress.reproduce.trunks import TRUNK, trunk_key

pytestmark = pytest.mark.usefixtures("one_thread_per_training")  # bit-for-bit needs equal threads

TINY = ("train.iterations=12", "train.eval_every=4", "train.checkpoint_every=4", "train.batch_size=16",
        "train.optimizer.lr=1e-3", "data.name=synthetic", "data.validation_size=100", "train.schedule.name=step",
        "train.schedule.milestones=[8]", "train.schedule.gamma=0.1")
MODEL = Model("lenet300", "tiny", "lth_lenet300_fashion.yaml", TINY, {1: "80%", 2: "64%"}, 4, "tiny")
# reset (k = 0) and rewind (k = 4) groups; a scorer that reads data, one that does not, a chain and a one-step run
CHOSEN = ("imp_reset", "imp_rewind", "lr_rewind", "oneshot_magnitude_r2", "init_snip_r1", "init_synflow_r2")


def _experiments():
    found = {e.name.removeprefix("methods_lenet300_"): e for e in method_experiments(MODEL, seeds=(0,))}
    return [found[name] for name in CHOSEN]


def _recipe(experiment, **sets):
    extra = [f"{key}={value}" for key, value in sets.items()]
    return load_recipe(RECIPES / experiment.recipe, overrides=[*experiment.overrides_for(0), *extra])


def test_the_trunk_key_ignores_only_what_acts_after_round_0():
    imp, _, lr_rewind, oneshot, snip, synflow = _experiments()
    reset = trunk_key(_recipe(imp))
    assert trunk_key(_recipe(oneshot)) == trunk_key(_recipe(snip)) == trunk_key(_recipe(synflow)) == reset
    assert trunk_key(_recipe(lr_rewind)) != reset  # rewinds to 4: round 0 saves another rewind point
    for key, value in (("seed", 1), ("train.iterations", 13), ("train.optimizer.lr", 2e-3),
                       ("lottery.early_bird.every", 4), ("data.validation_size", 90)):
        assert trunk_key(_recipe(imp, **{key: value})) != reset, key


def test_runs_on_an_adopted_round_0_equal_runs_that_trained_it(tmp_path):
    experiments = _experiments()
    run_suite(experiments, tmp_path / "shared", jobs=1)
    adopted = [e for e in experiments if (run_dir(tmp_path / "shared", e.name, 0) / "round_00" / TRUNK).exists()]
    # one dense training per group (k = 0 and k = 4), whichever experiment of the group ran first
    trained = [e for e in experiments if e not in adopted]
    assert len(trained) == 2 and len({trunk_key(_recipe(e)) for e in trained}) == 2
    for experiment in adopted:
        run_suite([experiment], tmp_path / experiment.name, jobs=1)  # alone: nothing to adopt from
        ours, theirs = run_dir(tmp_path / "shared", experiment.name, 0), run_dir(tmp_path / experiment.name, experiment.name, 0)
        assert not (theirs / "round_00" / TRUNK).exists()
        assert without_wall(json.loads((ours / paths.SUMMARY).read_text())) == \
            without_wall(json.loads((theirs / paths.SUMMARY).read_text())), experiment.name
        for folder in sorted(p.relative_to(theirs) for p in theirs.rglob(paths.FINAL)):
            left = torch.load(ours / folder, weights_only=True)
            right = torch.load(theirs / folder, weights_only=True)
            assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left), \
                f"{experiment.name}: {folder} differs"
    # a rerun adopts nothing more and retrains nothing
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "shared").rglob(paths.RESULT)}
    run_suite(experiments, tmp_path / "shared", jobs=1)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "shared").rglob(paths.RESULT)} == before


def test_an_unfinished_round_0_is_replaced_and_another_seed_is_never_a_donor(tmp_path):
    imp, *_, snip, _ = _experiments()
    run_suite([imp], tmp_path, jobs=1)
    partial = run_dir(tmp_path, snip.name, 0) / "round_00"
    partial.mkdir(parents=True)
    (partial / paths.METRICS).write_text("")  # a kill during its own dense training
    run_suite([snip], tmp_path, jobs=1)
    assert (partial / TRUNK).exists() and (partial / paths.RESULT).exists()
    run_suite([dataclasses.replace(snip, seeds=(1,))], tmp_path, jobs=1)
    assert (run_dir(tmp_path, snip.name, 1) / paths.SUMMARY).exists()
    assert not (run_dir(tmp_path, snip.name, 1) / "round_00" / TRUNK).exists()


def test_interleaved_seeds_adopt_a_trunk_too(tmp_path):
    imp, *_, snip, _ = _experiments()
    run_suite([imp], tmp_path, jobs=1)
    run_suite([snip], tmp_path, jobs=1, interleave=True)
    snip_dir = run_dir(tmp_path, snip.name, 0)
    assert (snip_dir / "round_00" / TRUNK).exists() and (snip_dir / paths.SUMMARY).exists()
    assert without_wall(json.loads((snip_dir / "round_00" / paths.RESULT).read_text())) == \
        without_wall(json.loads((run_dir(tmp_path, imp.name, 0) / "round_00" / paths.RESULT).read_text()))
