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


def test_the_long_suite_is_the_early_stopping_table():
    assert "long" in SUITES
    (experiment,) = suite("long")
    assert experiment.name == "fashion_mnist_lenet300_long"
    assert experiment.seeds == (0, 1, 2)
    assert experiment.iterations() >= 10_000  # past the dense validation-loss minimum (~8,500)
    assert "lottery.controls=[reinit]" in experiment.overrides
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
