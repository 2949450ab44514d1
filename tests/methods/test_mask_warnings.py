"""A mask computed another way than its method's own says so in summary.json, not only on stderr."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import compress
from compress import paths
from compress.io import load_json
from compress.recipe import recipe_from_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lottery"))
from tiny import tiny_recipe  # noqa: E402


def test_grasps_finite_difference_fallback_is_recorded_and_survives_a_rerun(tmp_path):
    # MobileNetV3's hardsigmoid has no second derivative in torch: GraSP's Hessian-gradient product falls
    # back to a central difference of two gradients
    recipe = recipe_from_dict(tiny_recipe(
        model={"name": "timm/mobilenetv3_small_050"}, data={"name": "synthetic", "validation_size": 100},
        train={"iterations": 2, "eval_every": 2, "checkpoint_every": 2, "batch_size": 8},
        prune={"method": "grasp", "rates": {"conv": 0.5, "linear": 0.5, "output": 0.0}, "score_batches": 1},
        lottery={"rounds": 1, "strategy": "at_init", "controls": []}))
    with pytest.warns(UserWarning, match="hardsigmoid"):
        compress.find_ticket(recipe, tmp_path, progress=False)
    rounds = load_json(tmp_path / paths.SUMMARY)["rounds"]
    assert "mask_warnings" not in rounds[0]  # dense: no scorer ran
    [message] = rounds[1]["mask_warnings"]
    assert "grasp" in message and "hardsigmoid" in message
    compress.find_ticket(recipe, tmp_path, progress=False)  # finished: read back, nothing recomputed
    assert load_json(tmp_path / paths.SUMMARY)["rounds"][1]["mask_warnings"] == [message]


def test_a_method_without_warnings_records_none(tmp_path):
    recipe = recipe_from_dict(tiny_recipe(train={"iterations": 4, "eval_every": 4, "checkpoint_every": 4},
                                          lottery={"rounds": 1, "controls": []}))
    compress.find_ticket(recipe, tmp_path, progress=False)
    assert all("mask_warnings" not in entry for entry in load_json(tmp_path / paths.SUMMARY)["rounds"])
    assert not (paths.round_dir(tmp_path, 1) / paths.MASK_WARNINGS).exists()
