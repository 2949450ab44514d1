"""The long-budget suite: its definition, and censored early stops flagged from the summaries."""

from __future__ import annotations

import pytest

from compress.errors import UserError
from compress.reproduce import suite
from compress.reproduce.aggregate import aggregate_rounds
from compress.reproduce.report import detail_table
from compress.reproduce.suite import SUITES


def _entry(round_index: int, stop: int, reinit_stop: int | None = None) -> dict:
    entry = {"round": round_index, "weights_remaining": 0.8 ** round_index, "early_stop_test_accuracy": 0.8,
             "early_stop_iteration": stop, "test_accuracy": 0.79}
    if reinit_stop is not None:
        entry["controls"] = {"reinit": {"weights_remaining": 0.8 ** round_index, "early_stop_test_accuracy": 0.7,
                                        "early_stop_iteration": reinit_stop, "test_accuracy": 0.69}}
    return entry


def test_the_long_suite_is_the_early_stopping_table(tmp_path):
    """What the early-stopping claim needs, checked on the recipes the suite resolves (not its constants)."""
    from compress.recipe import load_recipe
    from compress.reproduce.experiment import RECIPES, run_dir

    assert "long" in SUITES
    (experiment,) = suite("long")
    recipes = [load_recipe(RECIPES / experiment.recipe, overrides=experiment.overrides_for(seed))
               for seed in experiment.seeds]
    assert len({r.seed for r in recipes}) == len(experiment.seeds) >= 3  # distinct seeds: a mean and a spread
    assert len({run_dir(tmp_path, experiment.name, s) for s in experiment.seeds}) == len(experiment.seeds)
    for recipe in recipes:
        assert recipe.data.validation_size > 0, "the early stop is the validation-loss minimum: it needs a split"
        assert recipe.train.iterations % recipe.train.eval_every == 0, "the last iteration is evaluated"
        assert recipe.train.iterations // recipe.train.eval_every >= 20, "enough evaluations to place the minimum"
        assert "reinit" in recipe.lottery.controls and recipe.lottery.rounds >= 10
        assert not recipe.export.onnx  # the suite measures training, never exports
        assert experiment.iterations() == recipe.train.iterations
    with pytest.raises(UserError, match="long"):
        suite("longer")


def test_censored_early_stops_are_counted_per_kind_and_flagged():
    budget = 1000
    summaries = [{"rounds": [_entry(0, 750), _entry(1, 500, reinit_stop=1000)]},
                 {"rounds": [_entry(0, 1000), _entry(1, 250, reinit_stop=1000)]},
                 {"rounds": [_entry(0, 500), _entry(1, 1000, reinit_stop=750)]}]
    rounds = aggregate_rounds(summaries, [0, 1, 2], budget)
    assert rounds[0]["dense"]["censored"] == 1
    assert rounds[1]["ticket"]["censored"] == 1
    assert rounds[1]["reinit"]["censored"] == 2
    assert rounds[1]["reinit"]["early_stop_iteration"]["mean"] == pytest.approx(2750 / 3)
    table = detail_table({"rounds": rounds})
    assert "[c 2/3]" in table and "[c 1/3]" in table
    # without a budget nothing is claimed censored
    assert "censored" not in aggregate_rounds(summaries, [0, 1, 2])[1]["ticket"]
