"""Registries decide what a recipe may name: a registered pruning method and control run from a recipe, and a
package adds them through the ``compress.plugins`` entry-point group."""

from __future__ import annotations

import sys

import pytest
import torch

import compress.registry as registry
from compress import paths
from compress.errors import UserError
from compress.lottery import find_ticket
from compress.lottery.controls import ControlInput
from compress.pruning import Masks, prune_lowest
from compress.recipe import recipe_from_dict
from compress.registry import CONTROLS, PRUNING_METHODS

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "lottery"))
from tiny import tiny_recipe  # noqa: E402

CALLS: list[str] = []


def lowest_index(weights: dict[str, torch.Tensor], masks: Masks, rates: dict[str, float], *, groups, granularity,
                 generator, channel_multiple: int = 1) -> Masks:
    """Prunes the survivors with the lowest flat index: a rule no built-in method follows."""
    CALLS.append("method")
    return {name: prune_lowest(-torch.arange(masks[name].numel(), dtype=torch.float32).view_as(masks[name]),
                               masks[name], rate) for name, rate in rates.items()}


def same_init(ticket: ControlInput) -> tuple[dict[str, torch.Tensor], Masks]:
    CALLS.append("control")
    return ticket.start_state, ticket.masks


@pytest.fixture
def registered():
    PRUNING_METHODS.register("lowest_index")(lowest_index)
    CONTROLS.register("same_init")(same_init)
    CALLS.clear()
    yield
    PRUNING_METHODS.unregister("lowest_index")
    CONTROLS.unregister("same_init")


def test_a_registered_method_and_control_run_from_a_recipe(registered, tmp_path):
    recipe = recipe_from_dict(tiny_recipe(prune={"method": "lowest_index"},
                                          lottery={"rounds": 1, "controls": ["same_init"], "executor": "inline"},
                                          train={"iterations": 20, "eval_every": 10, "checkpoint_every": 10}))
    summary = find_ticket(recipe, tmp_path / "run", progress=False)
    assert "method" in CALLS and "control" in CALLS
    assert "same_init" in summary["rounds"][1]["controls"]
    masks = torch.load(paths.round_dir(tmp_path / "run", 1) / paths.MASK, weights_only=True)
    for name, mask in masks.items():
        flat = mask.flatten()
        pruned = int((flat == 0).sum())
        assert pruned > 0 and bool((flat[:pruned] == 0).all()) and bool((flat[pruned:] == 1).all()), name


def test_an_unregistered_name_is_refused_with_the_registered_ones(registered):
    with pytest.raises(UserError, match="lowest_index"):
        recipe_from_dict(tiny_recipe(prune={"method": "lowest_indx"}))
    PRUNING_METHODS.unregister("lowest_index")
    with pytest.raises(UserError, match="prune.method"):
        recipe_from_dict(tiny_recipe(prune={"method": "lowest_index"}))
    PRUNING_METHODS.register("lowest_index")(lowest_index)


def test_entry_point_plugins_register(tmp_path, monkeypatch):
    info = tmp_path / "compress_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: compress-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[compress.plugins]\nmine = compress_test_plugin_mod:register\n")
    (tmp_path / "compress_test_plugin_mod.py").write_text(
        "from compress.registry import CONTROLS\n"
        "def register():\n"
        "    CONTROLS.register('plugin_control')(lambda ticket: (ticket.start_state, ticket.masks))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        assert "plugin_control" in CONTROLS
        assert recipe_from_dict(tiny_recipe(lottery={"controls": ["plugin_control"]})).lottery.controls == (
            "plugin_control",)
    finally:
        CONTROLS.unregister("plugin_control")
