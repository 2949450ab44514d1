"""The key x entry-point table (compress/recipe/support.py): complete, enforced, and the docs table is it."""

from __future__ import annotations

import warnings

import pytest
import torch.nn as nn

from compress import LotterySearch
from compress.errors import UserError
from compress.recipe import PARTIAL_SECTIONS, recipe_from_dict
from compress.recipe.support import DOC, ENTRY_POINTS, STATUSES, SUPPORT, render, schema_keys, status


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_every_schema_key_has_a_status_at_every_entry_point(entry_point):
    for key in schema_keys():
        assert status(key, entry_point) in STATUSES, key
    assert set(SUPPORT) == set(schema_keys()), "rows for keys the schema no longer has"


def test_find_ticket_honours_every_key():
    assert all(status(key, "find_ticket") == "honoured" for key in schema_keys())


def test_the_docs_table_is_generated_from_the_table():
    text = DOC.read_text()
    assert render(text) == text, "run: python -m compress.recipe.support --write"


def _net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def test_a_refused_key_is_one_line_and_a_warned_key_is_named():
    recipe = recipe_from_dict({"lottery": {"controls": ["reinit"], "rounds": 1},
                               "train": {"iterations": 4, "optimizer": {"lr": 0.5}}})
    from compress.recipe.support import enforce

    with pytest.raises(UserError, match=r"^lottery.controls = \('reinit',\) is not supported by the Lightning"):
        enforce(recipe, "lightning")
    with pytest.warns(UserWarning, match=r"does not apply these recipe keys; your code must: train.optimizer.lr"):
        LotterySearch(_net(), recipe)


def test_a_partial_recipe_never_invents_a_budget():
    partial = recipe_from_dict({"prune": {"rates": {"linear": 0.5}}, "lottery": {"rounds": 1}},
                               sections=PARTIAL_SECTIONS)
    with pytest.raises(UserError, match=r"sets no steps per level: pass iterations=N .* or set train.iterations"):
        LotterySearch(_net(), partial)
    assert LotterySearch(_net(), partial, iterations=7).iterations == 7
    with_budget = recipe_from_dict({"train": {"iterations": 40, "batch_size": 3}, "lottery": {"rounds": 1}},
                                   sections=PARTIAL_SECTIONS)
    assert with_budget.train.batch_size == recipe_from_dict({}).train.batch_size  # the rest of train: unread
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a partial recipe's budget is honoured, not warned about
        assert LotterySearch(_net(), with_budget).iterations == 40
    with pytest.raises(UserError, match=r"iterations=30 and the recipe's train.iterations = 40 disagree"):
        LotterySearch(_net(), with_budget, iterations=30)


def test_compress_recipe_is_reachable_right_after_import_compress():
    import subprocess
    import sys
    from pathlib import Path

    code = "import compress; print(compress.recipe.PARTIAL_SECTIONS)"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "prune" in result.stdout
